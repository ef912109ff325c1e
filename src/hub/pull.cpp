#include "hub/pull.h"

#include <fnmatch.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace fluxpipe::hub {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kManifest = "fluxpipe-pull.json";
constexpr const char* kPartial = ".partial";

// A pattern starting with '?' is optional: a repository without a match is fine (fluxpipe.json,
// the sizes a model of unusual widths needs, is fetched where a repository has one).
bool optional_pattern(const std::string& p) { return !p.empty() && p[0] == '?'; }
std::string bare(const std::string& p) { return optional_pattern(p) ? p.substr(1) : p; }

// "12345 bytes (0.01 GB)": exact, and readable.
std::string size_text(int64_t bytes) {
  char s[64];
  std::snprintf(s, sizeof s, "%lld bytes (%.2f GB)", static_cast<long long>(bytes), static_cast<double>(bytes) / 1e9);
  return s;
}

bool valid_repo(const std::string& r) {
  size_t slash = r.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == r.size() || r.find('/', slash + 1) != std::string::npos) return false;
  for (char c : r) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '/')) return false;
  }
  return r.find("..") == std::string::npos;
}

bool valid_revision(const std::string& r) {
  if (r.empty() || r.find("..") != std::string::npos || r[0] == '/') return false;
  for (char c : r) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '/')) return false;
  }
  return true;
}

std::optional<json> read_manifest(const std::string& folder) {
  std::ifstream in(folder + "/" + kManifest);
  if (!in) return std::nullopt;
  json j = json::parse(in, nullptr, false);
  if (!j.is_object() || !j.contains("files") || !j["files"].is_array()) return std::nullopt;
  return j;
}

int64_t file_size_or(const fs::path& p, int64_t otherwise) {
  std::error_code ec;
  auto s = fs::file_size(p, ec);
  return ec ? otherwise : static_cast<int64_t>(s);
}

struct Item {
  size_t source;
  RemoteFile remote;
  std::string local;     // relative to the model folder
};

}  // namespace

const std::vector<Preset>& presets() {
  // Sizes: the repositories' listings, rounded (the listing at pull time decides what is fetched
  // and checked). Memory: what keeps every part resident; with less, the memory plan lets the
  // parts take turns (--memory-budget) and memory-mapped weights stream from disk.
  static const std::vector<Preset> table = {
      {"schnell", "FLUX.1-schnell as Black Forest Labs publish it: bf16 transformer, autoencoder, CLIP-L and T5-XXL with their tokenizers",
       33.9, "the weights are 33.9 GB: that much memory keeps them all resident; with less the parts take turns and the 23.8 GB transformer streams from disk",
       {{"black-forest-labs/FLUX.1-schnell", "main",
         {"flux1-schnell.safetensors", "ae.safetensors", "text_encoder/*", "text_encoder_2/*", "tokenizer/*", "tokenizer_2/*",
          "?fluxpipe.json"},
         false}}},
      {"schnell-fp8", "ComfyUI's all-in-one checkpoint: fp8 transformer and fp8 T5-XXL, CLIP-L and the autoencoder in one file",
       17.2, "the weights are 17.2 GB; with less memory the parts take turns (the fp8 transformer is about 11.9 GB)",
       {{"Comfy-Org/flux1-schnell", "main", {"flux1-schnell-fp8.safetensors", "?fluxpipe.json"}, true}}},
      {"schnell-q8", "city96's GGUF Q8_0 transformer, a GGUF Q8_0 T5-XXL encoder, CLIP-L and the autoencoder", 18.4,
       "the weights are 18.4 GB; on 16 GB machines the 12.7 GB transformer and the 5.1 GB T5 take turns",
       {{"city96/FLUX.1-schnell-gguf", "main", {"flux1-schnell-Q8_0.gguf", "?fluxpipe.json"}, true},
        {"city96/t5-v1_1-xxl-encoder-gguf", "main", {"t5-v1_1-xxl-encoder-Q8_0.gguf"}, true},
        {"comfyanonymous/flux_text_encoders", "main", {"clip_l.safetensors"}, true},
        {"black-forest-labs/FLUX.1-schnell", "main", {"ae.safetensors"}, true}}},
      {"schnell-q4", "city96's GGUF Q4_0 transformer, a GGUF Q8_0 T5-XXL encoder, CLIP-L and the autoencoder", 12.5,
       "the weights are 12.5 GB; on 8 GB machines the 6.8 GB transformer and the 5.1 GB T5 take turns",
       {{"city96/FLUX.1-schnell-gguf", "main", {"flux1-schnell-Q4_0.gguf", "?fluxpipe.json"}, true},
        {"city96/t5-v1_1-xxl-encoder-gguf", "main", {"t5-v1_1-xxl-encoder-Q8_0.gguf"}, true},
        {"comfyanonymous/flux_text_encoders", "main", {"clip_l.safetensors"}, true},
        {"black-forest-labs/FLUX.1-schnell", "main", {"ae.safetensors"}, true}}},
  };
  return table;
}

const Preset* find_preset(const std::string& name) {
  for (const Preset& p : presets()) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

std::string models_dir(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* m = std::getenv("FLUXPIPE_MODELS"); m && *m) return m;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/fluxpipe/models";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/fluxpipe/models";
  throw UserError("[pull] no models folder: give --models DIR (or set FLUXPIPE_MODELS, XDG_CACHE_HOME or HOME)");
}

std::optional<ModelName> parse_model_name(const std::string& name, const std::string& models) {
  if (const Preset* p = find_preset(name)) return ModelName{name, models + "/" + name, p->sources};
  if (name.rfind("hf:", 0) != 0) return std::nullopt;
  std::string rest = name.substr(3), patterns;
  if (size_t colon = rest.find(':'); colon != std::string::npos) {
    patterns = rest.substr(colon + 1);
    rest = rest.substr(0, colon);
  }
  std::string revision = "main";
  if (size_t at = rest.find('@'); at != std::string::npos) {
    revision = rest.substr(at + 1);
    rest = rest.substr(0, at);
  }
  if (!valid_repo(rest)) throw UserError("[pull] '" + name + "': expected hf:OWNER/REPO[@REVISION][:PATTERN,...]");
  if (!valid_revision(revision)) throw UserError("[pull] '" + name + "': '" + revision + "' is not a revision name");
  PresetSource src{rest, revision, {}, false};
  if (!patterns.empty()) {
    std::stringstream in(patterns);
    for (std::string p; std::getline(in, p, ',');) {
      if (p.empty()) throw UserError("[pull] '" + name + "': an empty file pattern");
      src.patterns.push_back(p);
    }
    if (patterns.back() == ',') throw UserError("[pull] '" + name + "': an empty file pattern");
  }
  if (src.patterns.empty()) src.patterns.push_back("*");
  std::string folder = "hf--" + rest.substr(0, rest.find('/')) + "--" + rest.substr(rest.find('/') + 1) + "@" + revision;
  for (char& c : folder) {
    if (c == '/') c = '-';
  }
  return ModelName{name, models + "/" + folder, {src}};
}

bool is_pulled(const std::string& folder) { return read_manifest(folder).has_value(); }

std::string resolve_model(const std::string& model, const std::string& models, bool pull_if_missing,
                          const std::function<std::string(const std::string&)>& pull_fn) {
  std::error_code ec;
  if (model.empty() || fs::exists(model, ec)) return model;
  std::optional<ModelName> mn = parse_model_name(model, models);
  if (!mn) return model;
  if (is_pulled(mn->folder)) return mn->folder;
  if (pull_if_missing) return pull_fn(model);
  std::string size;
  if (const Preset* p = find_preset(model)) {
    char s[48];
    std::snprintf(s, sizeof s, " (about %.1f GB)", p->approx_gb);
    size = s;
  }
  throw UserError("[model] '" + model + "' is not pulled into " + models + " yet: run `fluxpipe pull " + model +
                  " --models " + models + "` first" + size + ", or start serve with --pull to fetch it");
}

PullReport pull(const std::string& name, const PullOptions& options, const PullEvents& events) {
  std::optional<ModelName> mn = parse_model_name(name, options.models);
  if (!mn) {
    std::string names;
    for (const Preset& p : presets()) names += (names.empty() ? "" : ", ") + p.name;
    throw UserError("[pull] '" + name + "' is neither a preset (" + names + ") nor an hf:OWNER/REPO[@REVISION][:PATTERN,...] name");
  }
  auto note = [&](const std::string& s) {
    if (events.note) events.note(s);
  };
  PullReport report;
  report.folder = mn->folder;
  std::optional<json> manifest = read_manifest(mn->folder);

  // Offline: only what is here, checked against the manifest.
  if (options.hub.offline) {
    if (!manifest) {
      throw UserError("[pull] HF_HUB_OFFLINE is set and '" + name + "' is not pulled into " + mn->folder +
                      "; unset HF_HUB_OFFLINE to download it");
    }
    for (const json& f : (*manifest)["files"]) {
      fs::path p = fs::path(mn->folder) / f.value("path", "");
      if (file_size_or(p, -1) != f.value("size", int64_t{-1})) {
        throw UserError("[pull] HF_HUB_OFFLINE is set and " + p.string() + " is missing or incomplete; unset HF_HUB_OFFLINE to fetch it");
      }
      ++report.files;
    }
    report.up_to_date = true;
    note("offline: every file of '" + name + "' is present with its size (no request was made)");
    return report;
  }

  // What the sources hold now, and which of their files this model takes.
  std::vector<Item> items;
  std::vector<RepoTree> trees;
  std::set<std::string> locals;
  {
    HubClient client(options.hub);
    for (size_t s = 0; s < mn->sources.size(); ++s) {
      const PresetSource& src = mn->sources[s];
      trees.push_back(client.list(src.repo, src.revision));
      for (const std::string& pattern : src.patterns) {
        bool matched = false;
        for (const RemoteFile& f : trees.back().files) {
          if (fnmatch(bare(pattern).c_str(), f.path.c_str(), 0) != 0) continue;
          matched = true;
          std::string local = src.flatten ? fs::path(f.path).filename().string() : f.path;
          if (!locals.insert(local).second) {
            if (optional_pattern(pattern) || local == "fluxpipe.json") continue;   // the first source's wins
            throw UserError("[pull] two files of '" + name + "' would be stored as '" + local + "'");
          }
          items.push_back({s, f, local});
        }
        if (!matched && !optional_pattern(pattern)) {
          throw UserError("[pull] '" + src.repo + "' at '" + src.revision + "' has no file matching '" + pattern + "'");
        }
      }
    }
  }
  report.files = static_cast<int>(items.size());

  // What is already whole: a file the manifest lists with the same digest and the right size.
  auto recorded = [&](const Item& it) {
    if (!manifest) return false;
    for (const json& f : (*manifest)["files"]) {
      if (f.value("path", "") == it.local && f.value("size", int64_t{-1}) == it.remote.size &&
          f.value("sha256", "") == it.remote.sha256 && f.value("git_oid", "") == it.remote.git_oid) {
        return true;
      }
    }
    return false;
  };
  std::vector<Item> todo;
  int64_t needed = 0;
  for (const Item& it : items) {
    fs::path final_path = fs::path(mn->folder) / it.local;
    bool whole = file_size_or(final_path, -1) == it.remote.size;
    if (whole && recorded(it) && !options.verify) continue;
    todo.push_back(it);
    int64_t have = whole ? it.remote.size : file_size_or(fs::path(final_path.string() + kPartial), 0);
    needed += std::max<int64_t>(0, it.remote.size - std::min(have, it.remote.size));
  }
  if (todo.empty()) {
    report.up_to_date = true;
    note("'" + name + "' is up to date in " + mn->folder + " (" + std::to_string(items.size()) + " files; commits unchanged)");
    return report;
  }

  fs::create_directories(mn->folder);
  int64_t free_bytes = options.free_bytes;
  if (free_bytes <= 0) {
    struct statvfs sv{};
    if (statvfs(mn->folder.c_str(), &sv) != 0) throw IoError("[pull] cannot read the free space of '" + mn->folder + "'");
    free_bytes = static_cast<int64_t>(sv.f_bavail) * static_cast<int64_t>(sv.f_frsize);
  }
  if (needed > free_bytes) {
    throw UserError("[pull] not enough disk space for '" + name + "' in " + mn->folder + ": the files still to download need " +
                    size_text(needed) + ", and that file system has " + size_text(free_bytes) + " free");
  }

  if (events.planned) events.planned(static_cast<int>(todo.size()), needed);
  // The downloads, `jobs` at once. The first failure stops the others (their partials stay).
  std::atomic<bool> halt{false};
  std::mutex mu;
  std::exception_ptr first_error;
  size_t next = 0;
  std::atomic<int64_t> downloaded{0};
  auto worker = [&] {
    HubClient client(options.hub);
    while (true) {
      Item it;
      {
        std::lock_guard lock(mu);
        if (next >= todo.size() || halt.load()) return;
        it = todo[next++];
      }
      fs::path final_path = fs::path(mn->folder) / it.local;
      std::string partial = final_path.string() + kPartial;
      try {
        fs::create_directories(final_path.parent_path());
        // A whole file already here (an earlier run finished it, or --verify) is checked by
        // reading it back as the partial of itself; nothing is fetched when it is right.
        if (file_size_or(final_path, -1) == it.remote.size) fs::rename(final_path, partial);
        const RepoTree& tree = trees[it.source];
        for (int attempt = 0;; ++attempt) {
          int64_t have = std::min(file_size_or(partial, 0), it.remote.size);
          if (events.file_started) events.file_started(it.local, it.remote.size, have);
          try {
            client.download(tree.repo, tree.commit, it.remote, partial, [&](int64_t n) {
              downloaded += n;
              if (events.bytes) events.bytes(it.local, n);
            }, halt);
            break;
          } catch (const TransferError& e) {
            if (attempt >= options.retries) throw;
            note(std::string(e.what()) + "; retrying (" + std::to_string(attempt + 1) + " of " + std::to_string(options.retries) + ")");
            std::this_thread::sleep_for(std::chrono::milliseconds(std::min(250 << attempt, 8000)));
          } catch (const UserError&) {
            // A corrupt file that had been resumed may owe its fault to the kept part: once more
            // from nothing (download() deleted it). A fresh one that is corrupt is reported.
            if (have == 0 || attempt >= options.retries) throw;
            note(it.local + ": the resumed file did not match its digest; downloading it again from the start");
          }
        }
        fs::rename(partial, final_path);
        if (events.file_done) events.file_done(it.local);
      } catch (...) {
        std::lock_guard lock(mu);
        if (!first_error) first_error = std::current_exception();
        halt = true;
        return;
      }
    }
  };
  std::thread watcher([&] {
    while (!halt.load()) {
      if (options.stop && options.stop->load()) halt = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  std::vector<std::thread> threads;
  for (int i = 0; i < std::max(1, std::min<int>(options.jobs, static_cast<int>(todo.size()))); ++i) threads.emplace_back(worker);
  for (std::thread& t : threads) t.join();
  halt = true;
  watcher.join();
  report.bytes_downloaded = downloaded.load();
  if (first_error) std::rethrow_exception(first_error);
  report.files_downloaded = static_cast<int>(todo.size());

  // The manifest last: its presence says the folder is whole.
  json m = {{"name", name}, {"sources", json::array()}, {"files", json::array()}};
  for (size_t s = 0; s < trees.size(); ++s) {
    m["sources"].push_back({{"repo", trees[s].repo}, {"revision", trees[s].revision}, {"commit", trees[s].commit}});
  }
  for (const Item& it : items) {
    m["files"].push_back({{"path", it.local}, {"repo", trees[it.source].repo}, {"remote_path", it.remote.path},
                          {"size", it.remote.size}, {"sha256", it.remote.sha256}, {"git_oid", it.remote.git_oid}});
  }
  std::string tmp = mn->folder + "/" + kManifest + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << m.dump(1) << "\n";
    if (!out) throw IoError("[pull] cannot write '" + tmp + "'");
  }
  fs::rename(tmp, mn->folder + "/" + kManifest);
  return report;
}

std::vector<PulledModel> list_models(const std::string& models) {
  std::vector<PulledModel> out;
  std::error_code ec;
  if (!fs::is_directory(models, ec)) return out;
  for (const auto& e : fs::directory_iterator(models)) {
    if (!e.is_directory()) continue;
    PulledModel m;
    m.name = e.path().filename().string();
    std::optional<json> manifest = read_manifest(e.path().string());
    m.complete = manifest.has_value();
    m.source = manifest ? manifest->value("name", m.name) : m.name;
    bool ours = m.complete;
    for (const auto& f : fs::recursive_directory_iterator(e.path())) {
      if (!f.is_regular_file()) continue;
      m.bytes += static_cast<int64_t>(f.file_size());
      if (f.path().extension() == kPartial) ours = true;
    }
    if (ours) out.push_back(m);
  }
  std::sort(out.begin(), out.end(), [](const PulledModel& a, const PulledModel& b) { return a.name < b.name; });
  return out;
}

void remove_model(const std::string& name, const std::string& models) {
  std::optional<ModelName> mn = parse_model_name(name, models);
  fs::path folder = mn ? fs::path(mn->folder) : fs::path(models) / name;
  folder = folder.lexically_normal();
  bool child = folder.parent_path() == fs::path(models).lexically_normal() && !folder.filename().empty();
  for (const PulledModel& m : list_models(models)) {
    if (child && m.name == folder.filename().string()) {
      fs::remove_all(folder);
      return;
    }
  }
  throw UserError("[models] no pulled model '" + name + "' in " + models + " (see `fluxpipe models`)");
}

}  // namespace fluxpipe::hub
