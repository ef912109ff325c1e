#include "cli/pull_command.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <filesystem>
#include <cstdio>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

#include "cli/option_table.h"
#include "core/error.h"
#include "hub/pull.h"

namespace fluxpipe::cli {
namespace {

std::atomic<bool> g_interrupted{false};

extern "C" void on_interrupt(int) { g_interrupted = true; }

// Ctrl-C stops the transfers (partial files stay, to resume); a second Ctrl-C ends the process.
struct InterruptScope {
  struct sigaction old_int {}, old_term {};
  InterruptScope() {
    struct sigaction sa {};
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
  }
  ~InterruptScope() {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
  }
};

std::string human(double bytes) {
  char s[32];
  if (bytes >= 1e9) std::snprintf(s, sizeof s, "%.2f GB", bytes / 1e9);
  else if (bytes >= 1e6) std::snprintf(s, sizeof s, "%.1f MB", bytes / 1e6);
  else std::snprintf(s, sizeof s, "%.0f kB", bytes / 1e3);
  return s;
}

std::string clock_text(double seconds) {
  if (seconds < 0 || seconds > 360000) return "--:--";
  int s = static_cast<int>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%d:%02d", s / 60, s % 60);
  return buf;
}

// The progress display: on a terminal, one line per file in flight and a total line, redrawn
// five times a second; otherwise plain lines (a file starts, a file is done, the total every 10 s).
class ProgressView {
 public:
  explicit ProgressView(bool tty) : tty_(tty), start_(std::chrono::steady_clock::now()) {
    if (tty_) drawer_ = std::thread([this] { draw_loop(); });
  }
  ~ProgressView() { finish(); }

  hub::PullEvents events() {
    hub::PullEvents e;
    e.planned = [this](int files, int64_t bytes) {
      std::lock_guard lock(mu_);
      total_ = bytes;
      files_ = files;
      if (!tty_) std::fprintf(stderr, "pull: %d files to fetch or check, %s to download\n", files, human(static_cast<double>(bytes)).c_str());
    };
    e.file_started = [this](const std::string& path, int64_t size, int64_t have) {
      std::lock_guard lock(mu_);
      active_[path] = {size, have, have, std::chrono::steady_clock::now()};
      if (!tty_) {
        std::fprintf(stderr, "pull: %s: %s%s\n", path.c_str(), human(static_cast<double>(size)).c_str(),
                     have > 0 ? (", resuming at " + human(static_cast<double>(have))).c_str() : "");
      }
    };
    e.bytes = [this](const std::string& path, int64_t n) {
      std::lock_guard lock(mu_);
      active_[path].have += n;
      done_ += n;
      if (!tty_ && std::chrono::steady_clock::now() - last_line_ > std::chrono::seconds(10)) {
        last_line_ = std::chrono::steady_clock::now();
        std::fprintf(stderr, "pull: %s\n", total_line().c_str());
      }
    };
    e.file_done = [this](const std::string& path) {
      std::lock_guard lock(mu_);
      active_.erase(path);
      ++files_done_;
      if (!tty_) std::fprintf(stderr, "pull: %s: done\n", path.c_str());
    };
    e.note = [this](const std::string& line) {
      std::lock_guard lock(mu_);
      clear();
      std::fprintf(stderr, "pull: %s\n", line.c_str());
    };
    return e;
  }

  void finish() {
    {
      std::lock_guard lock(mu_);
      if (finished_) return;
      finished_ = true;
    }
    cv_.notify_all();
    if (drawer_.joinable()) drawer_.join();
    std::lock_guard lock(mu_);
    if (tty_) {
      clear();
      if (total_ > 0) std::fprintf(stderr, "pull: %s\n", total_line().c_str());
    }
  }

 private:
  struct File {
    int64_t size, have, have_at_start;
    std::chrono::steady_clock::time_point started;
  };

  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

  std::string total_line() const {
    double rate = done_ / std::max(0.001, seconds());
    double left = static_cast<double>(total_ - done_);
    char buf[160];
    std::snprintf(buf, sizeof buf, "total %s of %s (%d of %d files)  %s/s  ETA %s", human(static_cast<double>(done_)).c_str(),
                  human(static_cast<double>(total_)).c_str(), files_done_, files_, human(rate).c_str(),
                  clock_text(rate > 0 ? left / rate : -1).c_str());
    return buf;
  }

  // Erases the lines drawn last time (cursor up, clear line).
  void clear() {
    if (!tty_) return;
    for (int i = 0; i < drawn_; ++i) std::fprintf(stderr, "\x1b[1A\x1b[2K");
    drawn_ = 0;
  }

  void draw_loop() {
    std::unique_lock lock(mu_);
    while (!finished_) {
      clear();
      for (const auto& [path, f] : active_) {
        double t = std::max(0.001, std::chrono::duration<double>(std::chrono::steady_clock::now() - f.started).count());
        int width = 24, filled = f.size > 0 ? static_cast<int>(width * f.have / f.size) : width;
        double rate = static_cast<double>(f.have - f.have_at_start) / t;
        std::string name = path.size() > 40 ? "…" + path.substr(path.size() - 39) : path;
        std::fprintf(stderr, "  %-40s [%s%s] %s / %s  %s/s  ETA %s\n", name.c_str(), std::string(static_cast<size_t>(filled), '#').c_str(),
                     std::string(static_cast<size_t>(width - filled), '.').c_str(), human(static_cast<double>(f.have)).c_str(),
                     human(static_cast<double>(f.size)).c_str(), human(rate).c_str(),
                     clock_text(rate > 0 ? static_cast<double>(f.size - f.have) / rate : -1).c_str());
        ++drawn_;
      }
      std::fprintf(stderr, "%s\n", total_line().c_str());
      ++drawn_;
      cv_.wait_for(lock, std::chrono::milliseconds(200));
    }
  }

  bool tty_;
  std::chrono::steady_clock::time_point start_, last_line_{};
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread drawer_;
  std::map<std::string, File> active_;
  int64_t total_ = 0, done_ = 0;
  int files_ = 0, files_done_ = 0, drawn_ = 0;
  bool finished_ = false;
};

// Pulls with the display and Ctrl-C handling; returns the folder.
std::string pull_with_progress(const std::string& name, hub::PullOptions options) {
  InterruptScope scope;
  g_interrupted = false;
  options.stop = &g_interrupted;
  if (const char* f = std::getenv("FLUXPIPE_PULL_FREE_BYTES")) {
    options.free_bytes = parse_integer("pull", "FLUXPIPE_PULL_FREE_BYTES", f, 1, INT64_MAX);
  }
  ProgressView view(isatty(2) != 0);
  hub::PullReport r;
  try {
    r = hub::pull(name, options, view.events());
  } catch (const hub::Interrupted&) {
    view.finish();
    throw UserError("[pull] interrupted; the partial files are kept: run the same command to resume");
  } catch (const hub::TransferError& e) {
    view.finish();
    throw UserError(std::string(e.what()) + "; the partial files are kept: run the same command to resume");
  }
  view.finish();
  if (r.up_to_date) {
    std::fprintf(stderr, "pull: '%s' is complete in %s (%d files checked, nothing downloaded)\n", name.c_str(), r.folder.c_str(), r.files);
  } else {
    std::fprintf(stderr, "pull: '%s' is complete in %s (%d files, %s downloaded)\n", name.c_str(), r.folder.c_str(), r.files,
                 human(static_cast<double>(r.bytes_downloaded)).c_str());
  }
  return r.folder;
}

int print_list(const std::string& models) {
  std::printf("%-12s %9s  %-10s %s\n", "preset", "download", "here", "what it is; memory");
  for (const hub::Preset& p : hub::presets()) {
    std::optional<hub::ModelName> mn = hub::parse_model_name(p.name, models);
    std::printf("%-12s %6.1f GB  %-10s %s\n%34s%s\n", p.name.c_str(), p.approx_gb, hub::is_pulled(mn->folder) ? "pulled" : "-",
                p.summary.c_str(), "", ("memory: " + p.memory).c_str());
  }
  std::printf("\nor hf:OWNER/REPO[@REVISION][:PATTERN,...] for any repository (files matching the globs).\n"
              "Models folder: %s\n",
              models.c_str());
  return 0;
}

}  // namespace

int cmd_pull(const std::vector<std::string>& args) {
  std::string name, models_flag, help;
  hub::PullOptions options;
  bool list = false;
  Command c{"pull", "NAME [--models DIR] [--jobs N] [--retries N] [--verify] | --list",
            "Downloads a model (a preset or hf:OWNER/REPO[@REVISION][:PATTERN,...]) and prints its folder for --model.\n"
            "Honours HF_ENDPOINT, HF_TOKEN (sent to the hub only) and HF_HUB_OFFLINE=1 (no network: checks what is here).",
            {{"--models", "DIR", "where models live [FLUXPIPE_MODELS] (default ~/.cache/fluxpipe/models)",
              [&](const std::string& v) { models_flag = v; }},
             {"--jobs", "N", "files downloaded at once, 1..16 (default 4)",
              [&](const std::string& v) { options.jobs = static_cast<int>(parse_integer("pull", "--jobs", v, 1, 16)); }},
             {"--retries", "N", "per file after a network failure, resuming each time, 0..50 (default 5)",
              [&](const std::string& v) { options.retries = static_cast<int>(parse_integer("pull", "--retries", v, 0, 50)); }},
             {"--verify", nullptr, "re-read every file already here and check its digest", [&](const std::string&) { options.verify = true; }},
             {"--list", nullptr, "the presets, their sizes, what they need, and which are pulled", [&](const std::string&) { list = true; }}},
            [&](const std::string& v) {
              if (!name.empty()) throw UserError("[pull] one model name at a time ('" + name + "', then '" + v + "')");
              name = v;
            }};
  if (!parse(c, args, 1, &help)) {
    std::cout << help;
    return 0;
  }
  options.models = hub::models_dir(models_flag);
  if (list) return print_list(options.models);
  if (name.empty()) throw UserError("[pull] which model? (see fluxpipe pull --list)");
  options.hub = hub::hub_options_from_env();
  std::cout << pull_with_progress(name, options) << std::endl;
  return 0;
}

int cmd_models(const std::vector<std::string>& args) {
  std::string models_flag, help;
  std::vector<std::string> positional;
  Command c{"models", "[--models DIR] | models rm NAME [--models DIR]", "Lists the pulled models with their sizes, or deletes one.",
            {{"--models", "DIR", "where models live [FLUXPIPE_MODELS] (default ~/.cache/fluxpipe/models)",
              [&](const std::string& v) { models_flag = v; }}},
            [&](const std::string& v) { positional.push_back(v); }};
  if (!parse(c, args, 1, &help)) {
    std::cout << help;
    return 0;
  }
  std::string models = hub::models_dir(models_flag);
  if (!positional.empty()) {
    if (positional[0] != "rm" || positional.size() != 2) throw UserError("[models] expected `models` or `models rm NAME`");
    hub::remove_model(positional[1], models);
    std::cout << "removed " << positional[1] << " from " << models << "\n";
    return 0;
  }
  std::vector<hub::PulledModel> all = hub::list_models(models);
  if (all.empty()) {
    std::cout << "no models in " << models << " (fluxpipe pull --list shows what can be pulled)\n";
    return 0;
  }
  std::printf("%-44s %10s  %s\n", "model", "on disk", "state");
  for (const hub::PulledModel& m : all) {
    std::printf("%-44s %10s  %s\n", m.name.c_str(), human(static_cast<double>(m.bytes)).c_str(),
                m.complete ? ("pulled (" + m.source + ")").c_str() : "partial: run `fluxpipe pull` again to finish");
  }
  std::printf("models folder: %s\n", models.c_str());
  return 0;
}

std::string resolve_model_arg(const std::string& model, const std::string& models_flag, bool pull_if_missing) {
  std::error_code ec;
  if (model.empty() || std::filesystem::exists(model, ec)) return model;
  std::string models = hub::models_dir(models_flag);
  return hub::resolve_model(model, models, pull_if_missing, [&](const std::string& name) {
    hub::PullOptions options;
    options.models = models;
    options.hub = hub::hub_options_from_env();
    std::fprintf(stderr, "fluxpipe: '%s' is not pulled yet; pulling it into %s (--pull)\n", name.c_str(), models.c_str());
    return pull_with_progress(name, options);
  });
}

}  // namespace fluxpipe::cli
