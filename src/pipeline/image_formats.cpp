// JPEG (libjpeg-turbo) and WebP (libwebp) output. JPEG carries the generation parameters in a
// COM marker; WebP carries none (its metadata chunks need a muxer; use PNG to keep them).
#include <cstddef>  // jpeglib.h needs size_t and FILE first
#include <cstdio>
#include <jpeglib.h>
#include <webp/encode.h>

#include <algorithm>
#include <csetjmp>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "pipeline/pipeline.h"

namespace fluxpipe {
namespace {

void check(const Image& image, const char* op) {
  if (image.width <= 0 || image.height <= 0 || image.rgb.size() != static_cast<size_t>(image.width) * image.height * 3) {
    throw InternalError(std::string("[") + op + "] image " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                        " has " + std::to_string(image.rgb.size()) + " bytes");
  }
}

struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
};

void jpeg_fail(j_common_ptr cinfo) { longjmp(reinterpret_cast<JpegError*>(cinfo->err)->jump, 1); }

// libjpeg reports errors by longjmp: this frame holds no C++ objects that change after setjmp.
bool jpeg_or_fail(const Image& image, int quality, const char* comment, size_t comment_len, unsigned char** buf,
                  unsigned long* size) {
  jpeg_compress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_fail;
  if (setjmp(err.jump)) {
    jpeg_destroy_compress(&cinfo);
    return false;
  }
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, buf, size);
  cinfo.image_width = static_cast<JDIMENSION>(image.width);
  cinfo.image_height = static_cast<JDIMENSION>(image.height);
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  if (comment_len > 0) jpeg_write_marker(&cinfo, JPEG_COM, reinterpret_cast<const JOCTET*>(comment), static_cast<unsigned>(comment_len));
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(image.rgb.data() + static_cast<size_t>(cinfo.next_scanline) * image.width * 3);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  return true;
}

}  // namespace

std::vector<uint8_t> encode_jpeg(const Image& image, int quality, const std::string& comment) {
  check(image, "encode_jpeg");
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  // A COM marker holds at most 65533 bytes.
  size_t len = std::min<size_t>(comment.size(), 65533);
  bool ok = jpeg_or_fail(image, std::clamp(quality, 1, 100), comment.data(), len, &buf, &size);
  std::vector<uint8_t> out;
  if (ok) out.assign(buf, buf + size);
  std::free(buf);
  if (!ok) throw InternalError("[encode_jpeg] libjpeg failed");
  return out;
}

std::vector<uint8_t> encode_webp(const Image& image, int quality) {
  check(image, "encode_webp");
  uint8_t* buf = nullptr;
  size_t size = WebPEncodeRGB(image.rgb.data(), image.width, image.height, image.width * 3, static_cast<float>(std::clamp(quality, 0, 100)), &buf);
  if (size == 0) throw InternalError("[encode_webp] libwebp failed");
  std::vector<uint8_t> out(buf, buf + size);
  WebPFree(buf);
  return out;
}

}  // namespace fluxpipe
