// fluxpipe server: where generated images are kept — a folder, or an S3-compatible bucket.
// Thread-safety: every implementation is thread-safe.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace fluxpipe::server {

class Store;

// Where a request's images live, by its download token and file name. Implementations: a folder
// (below) and an S3-compatible bucket (s3_images.cpp). Both write an image whole or not at all.
class ImageStore {
 public:
  virtual ~ImageStore() = default;
  // REQUIRES: token is [0-9a-f]+ and name a plain file name (checked; UserError otherwise).
  // Throws IoError naming what failed (paths and bucket names go to the log, not to clients).
  virtual void write(const std::string& token, const std::string& name, const std::vector<uint8_t>& bytes) = 0;
  // The image's bytes, or nullopt when it does not exist (yet).
  virtual std::optional<std::string> read(const std::string& token, const std::string& name) const = 0;
  // Deletes a request's images (retention); names that do not exist are skipped.
  virtual void remove(const std::string& token, const std::vector<std::string>& names) = 0;
  // For the start-up log line: "folder /x" or "s3://bucket/prefix at ENDPOINT".
  virtual std::string describe() const = 0;
};

// Throws UserError unless token is [0-9a-f]+ and name a plain file name.
void check_image_path(const std::string& token, const std::string& name);

// Layout: <dir>/<token>/<file name>. Every file is written to a temporary name (unique per
// writer, so two nodes writing one image after a takeover never share it) in the same folder,
// flushed, then renamed over its final name (and the folder flushed), so a reader or a crash
// never sees half an image. `dir` may be shared by every node of one store (NFS).
// Creates `dir` if needed (not its parents). Throws IoError naming the path.
std::unique_ptr<ImageStore> open_folder_image_store(const std::string& dir);

// Images in the database of `store` (which must outlive it).
std::unique_ptr<ImageStore> open_database_image_store(Store& store);

}  // namespace fluxpipe::server
