// fluxpipe server: generated images on local disk.
//
// Layout: <root>/images/<token>/<file name>. Every file is written to a temporary name in
// the same folder, flushed to disk, then renamed over its final name (and the folder
// flushed), so a reader or a crash never sees half an image.
// Thread-safety: thread-safe (distinct requests never share a folder).
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace fluxpipe::server {

class ImageStore {
 public:
  // Creates <root>/images if needed. Throws IoError naming the path.
  explicit ImageStore(std::string root);
  // REQUIRES: token is [0-9a-f]+ and name a plain file name (checked; UserError otherwise).
  void write(const std::string& token, const std::string& name, const std::vector<uint8_t>& bytes);
  // The file's bytes, or nullopt when it does not exist (yet).
  std::optional<std::string> read(const std::string& token, const std::string& name) const;

 private:
  std::string path_for(const std::string& token, const std::string& name) const;
  std::string images_dir_;
};

}  // namespace fluxpipe::server
