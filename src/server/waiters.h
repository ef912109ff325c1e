// fluxpipe server: answers that wait for a request to end (the submit sync wait, the OpenAI
// route, a cancel waiting for the running job to stop) without holding a thread each.
//
// A waiter is a callback; one thread owns the deadlines and runs every callback, so a
// thousand waiting clients cost a thousand small closures, not a thousand threads.
// Every waiter is called exactly once: done(true) after notify(id), done(false) when its
// timeout passes or at shutdown() (then the caller answers with what is known now).
// Thread-safety: every method may be called from any thread; callbacks run on the
// registry's own thread and must not block for long.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace fluxpipe::server {

class Waiters {
 public:
  Waiters();
  ~Waiters();
  Waiters(const Waiters&) = delete;
  Waiters& operator=(const Waiters&) = delete;

  void add(const std::string& id, int64_t timeout_ms, std::function<void(bool finished)> done);
  // `id` ended: its waiters are answered with true.
  void notify(const std::string& id);
  // Asks `finished(id)` for each id waited on, and notifies those it says ended: the fallback
  // when the news of an end can be lost (another node's event). Called off the registry thread.
  void poll_finished(const std::function<bool(const std::string&)>& finished);
  // Answers every waiter with false now, and every later add() at once. Idempotent.
  void shutdown();
  size_t waiting() const;

 private:
  struct Waiter {
    uint64_t serial;
    std::string id;
    std::function<void(bool)> done;
  };
  void loop();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<std::chrono::steady_clock::time_point, uint64_t> deadlines_;
  std::map<uint64_t, Waiter> by_serial_;
  std::multimap<std::string, uint64_t> by_id_;
  std::vector<std::pair<std::function<void(bool)>, bool>> ready_;
  uint64_t next_serial_ = 1;
  bool stopping_ = false;
  bool closed_ = false;
  std::thread thread_;
};

}  // namespace fluxpipe::server
