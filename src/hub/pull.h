// fluxpipe hub: models by name — the presets, the models folder, and pulling a model into it.
//
// A model name is a preset (`schnell`, `schnell-fp8`, `schnell-q8`, `schnell-q4`: lists of files in
// public Hugging Face repositories) or `hf:OWNER/REPO[@REVISION][:PATTERN,...]` (the files matching
// the glob patterns; default all). Each model lives in one sub-folder of the models folder
// (`--models DIR`, FLUXPIPE_MODELS, default $XDG_CACHE_HOME/fluxpipe/models or
// ~/.cache/fluxpipe/models): the preset's name, or `hf--OWNER--REPO@REVISION`. A finished pull
// writes `fluxpipe-pull.json` there (sources, commits, files, sizes, digests); a folder without
// it is not pulled yet. Files arrive under `<path>.partial` and are renamed only once their size
// and digest match the hub's listing, so a file under its own name is always whole.
// Thread-safety: pull() runs its own download threads; the other functions are plain.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "hub/hub.h"

namespace fluxpipe::hub {

struct PresetSource {
  std::string repo;
  std::string revision = "main";
  std::vector<std::string> patterns;   // globs (fnmatch) on the repository path
  bool flatten = false;                // store under the file's base name (several repositories)
};

struct Preset {
  std::string name;
  std::string summary;
  double approx_gb;                    // download size (the hub's listing decides at pull time)
  std::string memory;                  // what it needs to run, in words
  std::vector<PresetSource> sources;
};

const std::vector<Preset>& presets();
const Preset* find_preset(const std::string& name);

// The models folder: `flag` when set, else FLUXPIPE_MODELS, else the XDG cache default.
std::string models_dir(const std::string& flag);

// What a name means: its folder under `models` and where its files come from. UserError for a
// malformed `hf:` name. nullopt: not a model name (a path, say).
struct ModelName {
  std::string name;      // as given
  std::string folder;    // <models>/<sub-folder>
  std::vector<PresetSource> sources;
};
std::optional<ModelName> parse_model_name(const std::string& name, const std::string& models);

// Whether `folder` holds a finished pull (its fluxpipe-pull.json).
bool is_pulled(const std::string& folder);

// For --model: an existing path is itself; a pulled model name is its folder; a model name not
// pulled is a UserError that prints the `fluxpipe pull` command (or, with `pull_if_missing`, it
// is pulled first through `pull`). Anything else is returned as is (the loader names it).
std::string resolve_model(const std::string& model, const std::string& models, bool pull_if_missing,
                          const std::function<std::string(const std::string&)>& pull);

// What a pull reports as it goes (called from the download threads; the callee synchronises).
struct PullEvents {
  // Once, before any download: how many files and bytes are still to fetch.
  std::function<void(int files, int64_t bytes)> planned;
  std::function<void(const std::string& path, int64_t size, int64_t have)> file_started;
  std::function<void(const std::string& path, int64_t bytes)> bytes;
  std::function<void(const std::string& path)> file_done;
  std::function<void(const std::string& line)> note;   // a sentence for the user
};

struct PullOptions {
  std::string models;                    // the models folder
  int jobs = 4;                          // files at once
  int retries = 5;                       // per file, after a network failure (resuming each time)
  bool verify = false;                   // re-hash files already pulled
  HubOptions hub;
  const std::atomic<bool>* stop = nullptr;   // Ctrl-C
  // Free bytes of the models folder's file system; 0: statvfs. (FLUXPIPE_PULL_FREE_BYTES sets it
  // from the CLI, for tests of the disk check.)
  int64_t free_bytes = 0;
};

struct PullReport {
  std::string folder;
  int64_t bytes_downloaded = 0;
  int files = 0, files_downloaded = 0;
  bool up_to_date = false;               // nothing needed fetching
};

// Pulls `name` into its folder. UserError for bad names, refused repositories, too little disk,
// corrupt files; Interrupted on Ctrl-C (partial files kept); TransferError when retries ran out.
PullReport pull(const std::string& name, const PullOptions& options, const PullEvents& events);

// The models pulled (or partly pulled) under `models`.
struct PulledModel {
  std::string name;         // the sub-folder
  std::string source;       // "schnell" or "hf:owner/repo@rev"
  int64_t bytes = 0;        // on disk
  bool complete = false;
};
std::vector<PulledModel> list_models(const std::string& models);
// Deletes one model's folder. UserError when `name` is not a model under `models`.
void remove_model(const std::string& name, const std::string& models);

}  // namespace fluxpipe::hub
