// fluxpipe core: the one wall clock the project stamps records with.
// Thread-safety: stateless.
#pragma once

#include <chrono>
#include <cstdint>

namespace fluxpipe {

// Milliseconds since the Unix epoch (system clock: comparable across processes and machines).
inline int64_t wall_clock_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace fluxpipe
