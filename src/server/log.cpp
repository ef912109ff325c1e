#include "server/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <cstring>

namespace fluxpipe::server {
namespace {
std::atomic<bool> g_quiet{false};
}

void set_log_quiet(bool quiet) { g_quiet = quiet; }

void log(const char* level, const std::string& message) {
  if (g_quiet && std::strcmp(level, "info") == 0) return;
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  int ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  std::string line = std::string(stamp) + "." + std::to_string(1000 + ms).substr(1) + "Z " + level + " " + message + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace fluxpipe::server
