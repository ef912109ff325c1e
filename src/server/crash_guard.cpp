#include "server/crash_guard.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "server/log.h"

namespace fluxpipe::server {
namespace {

// What the handler writes, prepared by the runner thread before the job starts: the handler
// may not allocate, so everything lives in fixed buffers.
char g_crashed_path[4096];
char g_line[512];               // "ID CLAIM"
std::atomic<int> g_line_len{0};  // 0: no job is running

constexpr int kFatal[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};

void write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) return;
    p += w;
    n -= static_cast<size_t>(w);
  }
}

extern "C" void on_fatal_signal(int sig) {
  int n = g_line_len.load();
  if (n > 0) {
    int fd = open(g_crashed_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
      write_all(fd, g_line, static_cast<size_t>(n));
      char num[16];
      int len = 0;
      char rev[16];
      for (int s = sig; s > 0 && len < 15; s /= 10) rev[len++] = static_cast<char>('0' + s % 10);
      for (int i = 0; i < len; ++i) num[i] = rev[len - 1 - i];
      write_all(fd, " ", 1);
      write_all(fd, num, static_cast<size_t>(len));
      write_all(fd, "\n", 1);
      fsync(fd);
      close(fd);
    }
  }
  // SA_RESETHAND restored the default action: raising again ends the process as the signal would.
  raise(sig);
}

std::string signal_name(int sig) {
  switch (sig) {
    case SIGSEGV: return "SIGSEGV, an invalid memory access";
    case SIGBUS: return "SIGBUS, a bus error";
    case SIGILL: return "SIGILL, an illegal instruction";
    case SIGFPE: return "SIGFPE, an arithmetic fault";
    case SIGABRT: return "SIGABRT, an abort";
    default: return "signal " + std::to_string(sig);
  }
}

// The file with this process's cgroup's `oom_kill` count: cgroup v2's memory.events, else the
// v1 memory controller's memory.oom_control (which has the same line since Linux 4.13).
std::string cgroup_events_path() {
  std::ifstream in("/proc/self/cgroup");
  std::string line, v1;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) == 0) {
      std::string path = "/sys/fs/cgroup" + line.substr(3) + "/memory.events";
      if (access(path.c_str(), R_OK) == 0) return path;
    }
    size_t at = line.find(":memory:");
    if (at != std::string::npos) v1 = "/sys/fs/cgroup/memory" + line.substr(at + 8) + "/memory.oom_control";
  }
  return v1.empty() ? "/sys/fs/cgroup/memory.events" : v1;
}

}  // namespace

int64_t CrashGuard::oom_kill_count() const {
  std::ifstream in(memory_events_);
  std::string key;
  int64_t value = 0;
  while (in >> key >> value) {
    if (key == "oom_kill") return value;
  }
  return -1;
}

CrashGuard::CrashGuard(std::string data_dir, std::string memory_events)
    : running_path_(data_dir + "/running_job"),
      crashed_path_(data_dir + "/crashed_job"),
      memory_events_(memory_events.empty() ? cgroup_events_path() : std::move(memory_events)) {
  std::snprintf(g_crashed_path, sizeof g_crashed_path, "%s", crashed_path_.c_str());
  struct sigaction sa {};
  sa.sa_handler = on_fatal_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND | SA_NODEFER;
  for (int sig : kFatal) sigaction(sig, &sa, nullptr);
}

CrashGuard::~CrashGuard() {
  g_line_len.store(0);
  struct sigaction sa {};
  sa.sa_handler = SIG_DFL;
  for (int sig : kFatal) sigaction(sig, &sa, nullptr);
}

void CrashGuard::job_started(const std::string& id, const std::string& claim) {
  std::string line = id + " " + claim;
  if (line.size() >= sizeof g_line) line.resize(sizeof g_line - 1);
  g_line_len.store(0);
  std::memcpy(g_line, line.data(), line.size());
  g_line_len.store(static_cast<int>(line.size()));
  // Written whole or not at all (temp + rename); no fsync: a power loss is an ordinary
  // interruption, and the marker only decides between failing and retrying.
  std::string tmp = running_path_ + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << id << ' ' << claim << ' ' << oom_kill_count() << '\n';
  }
  if (std::rename(tmp.c_str(), running_path_.c_str()) != 0) {
    log("warn", "cannot write '" + running_path_ + "' (a crash during this job would not be recognised): " + std::strerror(errno));
  }
}

void CrashGuard::job_ended() {
  g_line_len.store(0);
  unlink(running_path_.c_str());
}

std::optional<CrashGuard::Crash> CrashGuard::take_crashed() {
  std::optional<Crash> out;
  std::ifstream running(running_path_);
  std::string id, claim;
  int64_t oom_before = -1;
  if (running >> id >> claim >> oom_before) {
    std::ifstream crashed(crashed_path_);
    std::string cid, cclaim;
    int sig = 0;
    if (crashed >> cid >> cclaim >> sig && cid == id && cclaim == claim) {
      out = Crash{id, claim, "the server crashed while running this job (" + signal_name(sig) +
                                 "); it is not run again, so that it cannot crash the server again"};
    } else {
      int64_t oom_now = oom_kill_count();
      if (oom_before >= 0 && oom_now > oom_before) {
        out = Crash{id, claim, "the server was stopped by the system for lack of memory while running this job; it is "
                               "not run again, so that it cannot do so again (try a smaller size or fewer samples)"};
      }
    }
  }
  running.close();
  unlink(running_path_.c_str());
  unlink(crashed_path_.c_str());
  return out;
}

}  // namespace fluxpipe::server
