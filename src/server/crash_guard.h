// fluxpipe server: poison jobs — a job that crashed the process is not queued again blindly.
//
// While a job runs, <data>/running_job names it (id, claim token, and the OOM-kill count of the
// process's cgroup then). A fatal signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT — an uncaught
// exception aborts) writes <data>/crashed_job naming the job and the signal before the process
// dies, with async-signal-safe calls only, then lets the signal take its course (a core dump if
// the system keeps them). At the next start take_crashed() reports a job the process crashed on,
// or was killed for memory while running (the cgroup's `oom_kill` count grew), so that the server
// fails it with that reason instead of queueing it again. A job running when the process died any
// other way (SIGKILL by an operator, power loss) is an ordinary interruption: queued again, up to
// --max-attempts starts.
// Thread-safety: job_started()/job_ended() from the one runner thread; the handler is
// process-wide, so one guard per process (the last one constructed owns the handlers).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace fluxpipe::server {

class CrashGuard {
 public:
  // Installs the fatal-signal handlers. `data_dir` exists (the server created and locked it).
  // `memory_events`: the cgroup file with the `oom_kill` count; empty: this process's cgroup's.
  explicit CrashGuard(std::string data_dir, std::string memory_events = "");
  ~CrashGuard();
  CrashGuard(const CrashGuard&) = delete;
  CrashGuard& operator=(const CrashGuard&) = delete;

  // Written before the engine starts and removed when the job's end is recorded (or it went
  // back to the queue at a clean stop).
  void job_started(const std::string& id, const std::string& claim);
  void job_ended();

  struct Crash {
    std::string id, claim;
    std::string reason;   // client-facing: what happened, and that it is not retried
  };
  // At start, before interrupted jobs are recovered: the job the last run of this data folder
  // crashed on, if any. Removes the marker files either way.
  std::optional<Crash> take_crashed();

  // The cgroup's count of OOM kills (memory.events), or -1 when it cannot be read.
  int64_t oom_kill_count() const;

 private:
  std::string running_path_, crashed_path_, memory_events_;
};

}  // namespace fluxpipe::server
