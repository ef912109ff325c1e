// fluxpipe server: generated images on local disk.
//
// Layout: <dir>/<token>/<file name> (dir is <data>/images, or --images: a folder several nodes
// share, since a token names its request alone and files are only ever added whole). Every file is written to a temporary name in
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
  // Creates `dir` if needed (not its parents). Throws IoError naming the path.
  explicit ImageStore(std::string dir);
  // REQUIRES: token is [0-9a-f]+ and name a plain file name (checked; UserError otherwise).
  void write(const std::string& token, const std::string& name, const std::vector<uint8_t>& bytes);
  // The file's bytes, or nullopt when it does not exist (yet).
  std::optional<std::string> read(const std::string& token, const std::string& name) const;

 private:
  std::string path_for(const std::string& token, const std::string& name) const;
  std::string images_dir_;
};

}  // namespace fluxpipe::server
