// PNG encoding through libpng, with tEXt chunks for the generation parameters.
#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "pipeline/pipeline.h"

namespace fluxpipe {
namespace {

void append_bytes(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<std::vector<uint8_t>*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + length);
}

void no_flush(png_structp) {}

}  // namespace

namespace {

// The libpng calls, apart from the setjmp frame below (which must hold no C++ objects that
// change after setjmp).
void write_png(png_structp png, png_infop info, const Image& image, png_text* chunks, int n_chunks,
               std::vector<uint8_t>* out) {
  png_set_write_fn(png, out, append_bytes, no_flush);
  png_set_IHDR(png, info, image.width, image.height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (n_chunks > 0) png_set_text(png, info, chunks, n_chunks);
  png_write_info(png, info);
  for (int y = 0; y < image.height; ++y) {
    png_write_row(png, const_cast<png_bytep>(image.rgb.data() + static_cast<size_t>(y) * image.width * 3));
  }
  png_write_end(png, info);
}

bool encode_or_fail(const Image& image, png_text* chunks, int n_chunks, std::vector<uint8_t>* out) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  if (!png) return false;
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_write_struct(&png, nullptr);
    return false;
  }
  if (setjmp(png_jmpbuf(png))) {   // libpng reports errors by longjmp
    png_destroy_write_struct(&png, &info);
    return false;
  }
  write_png(png, info, image, chunks, n_chunks, out);
  png_destroy_write_struct(&png, &info);
  return true;
}

}  // namespace

std::vector<uint8_t> encode_png(const Image& image,
                                const std::vector<std::pair<std::string, std::string>>& text) {
  if (image.width <= 0 || image.height <= 0 ||
      image.rgb.size() != static_cast<size_t>(image.width) * image.height * 3) {
    throw InternalError("[encode_png] image " + std::to_string(image.width) + "x" +
                        std::to_string(image.height) + " has " + std::to_string(image.rgb.size()) +
                        " bytes, expected width*height*3");
  }
  // Values as written: control characters escaped, so NUL cannot cut a chunk short.
  std::vector<std::string> values;
  values.reserve(text.size());
  for (const auto& [key, value] : text) {
    std::string v;
    for (unsigned char c : value) {
      if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
        char esc[8];
        std::snprintf(esc, sizeof esc, "\\x%02x", c);
        v += esc;
      } else {
        v += static_cast<char>(c);
      }
    }
    values.push_back(std::move(v));
  }
  std::vector<png_text> chunks(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    bool ascii = true;
    for (unsigned char c : values[i]) ascii = ascii && c < 0x80;
    std::memset(&chunks[i], 0, sizeof(png_text));
    chunks[i].compression = ascii ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
    chunks[i].key = const_cast<char*>(text[i].first.c_str());
    chunks[i].text = const_cast<char*>(values[i].c_str());
    if (ascii) {
      chunks[i].text_length = values[i].size();
    } else {
      chunks[i].itxt_length = values[i].size();
      chunks[i].lang = const_cast<char*>("");
      chunks[i].lang_key = const_cast<char*>("");
    }
  }
  std::vector<uint8_t> out;
  if (!encode_or_fail(image, chunks.data(), static_cast<int>(chunks.size()), &out)) {
    throw InternalError("[encode_png] libpng failed");
  }
  return out;
}

}  // namespace fluxpipe
