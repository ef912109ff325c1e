// fluxpipe core: error kinds shared by every layer.
//
// Three kinds, because callers react differently to each:
//   UserError     — the caller asked for something invalid (bad field, bad file name).
//                   The server maps it to HTTP 400; the CLI prints it and exits 2.
//   IoError       — the outside world failed (file, network, database).
//   InternalError — a bug of ours; the server maps it (and IoError) to HTTP 500.
// Messages start with the operation in brackets and carry the offending values:
//   "[request] field 'width': expected an integer, got string".
// Thread-safety: plain value types.
#pragma once

#include <stdexcept>
#include <string>

namespace fluxpipe {

struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct IoError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct InternalError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace fluxpipe
