// fluxpipe server: one-line structured log records on stderr.
// Thread-safety: log() is thread-safe (one write per line).
#pragma once

#include <string>

namespace fluxpipe::server {

// Prints "<UTC time> <level> <message>" on stderr; `quiet` silences info lines.
void log(const char* level, const std::string& message);
void set_log_quiet(bool quiet);

}  // namespace fluxpipe::server
