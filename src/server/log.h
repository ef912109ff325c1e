// fluxpipe server: one-line structured log records on stderr.
// Thread-safety: log() is thread-safe (one write per line).
#pragma once

#include <string>
#include <utility>

namespace fluxpipe::server {

// Prints "<UTC time> <level> <message>" on stderr; `quiet` silences info lines.
void log(const char* level, const std::string& message);
void set_log_quiet(bool quiet);

// For a loop that retries while something outside is down (the database): logs the first
// failure and the recovery, not every retry in between. Not thread-safe: one per loop.
class OutageLog {
 public:
  explicit OutageLog(std::string what) : what_(std::move(what)) {}
  void failed(const std::string& error) {
    if (!down_) log("error", what_ + ": " + error + " (retrying; logged again when it recovers)");
    down_ = true;
  }
  void ok() {
    if (down_) log("info", what_ + ": working again");
    down_ = false;
  }

 private:
  std::string what_;
  bool down_ = false;
};

}  // namespace fluxpipe::server
