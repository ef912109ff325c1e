#include "server/images.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "server/crypto.h"
#include "server/store.h"

namespace fluxpipe::server {
namespace {

void make_dir(const std::string& path) {
  if (mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    throw IoError("[images] cannot create folder '" + path + "': " + std::strerror(errno));
  }
}

void fsync_path(const std::string& path, int flags) {
  int fd = open(path.c_str(), flags);
  if (fd < 0) throw IoError("[images] cannot open '" + path + "': " + std::strerror(errno));
  int rc = fsync(fd);
  close(fd);
  if (rc != 0) throw IoError("[images] fsync of '" + path + "' failed: " + std::strerror(errno));
}

bool plain_name(const std::string& s) {
  if (s.empty() || s.size() > 128 || s == "." || s == "..") return false;
  for (char c : s) {
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

void check_image_path(const std::string& token, const std::string& name) {
  if (token.empty() || token.find_first_not_of("0123456789abcdef") != std::string::npos || !plain_name(name)) {
    throw UserError("[images] invalid image path '" + token + "/" + name + "'");
  }
}

namespace {

class FolderImageStore final : public ImageStore {
 public:
  explicit FolderImageStore(std::string dir) : images_dir_(std::move(dir)) { make_dir(images_dir_); }

  void write(const std::string& token, const std::string& name, const std::vector<uint8_t>& bytes) override {
    check_image_path(token, name);
    std::string dir = images_dir_ + "/" + token;
    std::string final_path = dir + "/" + name;
    make_dir(dir);
    std::string tmp = final_path + "." + random_hex(6) + ".tmp";
    int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) throw IoError("[images] cannot create '" + tmp + "': " + std::strerror(errno));
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        std::string err = std::strerror(errno);
        close(fd);
        unlink(tmp.c_str());
        throw IoError("[images] write to '" + tmp + "' failed: " + err);
      }
      off += static_cast<size_t>(n);
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
      std::string err = std::strerror(errno);
      unlink(tmp.c_str());
      throw IoError("[images] flushing '" + tmp + "' failed: " + err);
    }
    if (rename(tmp.c_str(), final_path.c_str()) != 0) {
      std::string err = std::strerror(errno);
      unlink(tmp.c_str());
      throw IoError("[images] rename to '" + final_path + "' failed: " + err);
    }
    fsync_path(dir, O_RDONLY | O_DIRECTORY);
  }

  std::optional<std::string> read(const std::string& token, const std::string& name) const override {
    check_image_path(token, name);
    std::ifstream in(images_dir_ + "/" + token + "/" + name, std::ios::binary);
    if (!in) return std::nullopt;
    std::ostringstream buf;
    buf << in.rdbuf();
    return buf.str();
  }

  void remove(const std::string& token, const std::vector<std::string>& names) override {
    for (const std::string& name : names) {
      check_image_path(token, name);
      std::string path = images_dir_ + "/" + token + "/" + name;
      if (unlink(path.c_str()) != 0 && errno != ENOENT) {
        throw IoError("[images] cannot delete '" + path + "': " + std::strerror(errno));
      }
    }
    std::string dir = images_dir_ + "/" + token;
    if (rmdir(dir.c_str()) != 0 && errno != ENOENT && errno != ENOTEMPTY && errno != EEXIST) {
      throw IoError("[images] cannot delete folder '" + dir + "': " + std::strerror(errno));
    }
  }

  std::string describe() const override { return "folder " + images_dir_; }

 private:
  std::string images_dir_;
};

class DatabaseImageStore final : public ImageStore {
 public:
  explicit DatabaseImageStore(Store& store) : store_(store) {}

  void write(const std::string& token, const std::string& name, const std::vector<uint8_t>& bytes) override {
    check_image_path(token, name);
    store_.put_image(token, name, std::string(bytes.begin(), bytes.end()));
  }
  std::optional<std::string> read(const std::string& token, const std::string& name) const override {
    check_image_path(token, name);
    return store_.get_image(token, name);
  }
  void remove(const std::string& token, const std::vector<std::string>&) override { store_.delete_images(token); }
  std::string describe() const override { return std::string("in the ") + store_.kind() + " database"; }

 private:
  Store& store_;
};

}  // namespace

std::unique_ptr<ImageStore> open_database_image_store(Store& store) {
  return std::make_unique<DatabaseImageStore>(store);
}

std::unique_ptr<ImageStore> open_folder_image_store(const std::string& dir) {
  return std::make_unique<FolderImageStore>(dir);
}

}  // namespace fluxpipe::server
