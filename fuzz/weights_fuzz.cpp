// libFuzzer targets: the safetensors and GGUF parsers on arbitrary bytes. Any input must end
// in a WeightSet whose every tensor lies inside the input, or a UserError.
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "io/weights.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fluxpipe;
  auto storage = allocate_cpu(size);
  if (size) std::memcpy(storage->data, data, size);
  const uint8_t* begin = static_cast<const uint8_t*>(storage->data);
  for (int format = 0; format < 2; ++format) {
    try {
      io::WeightSet ws = format == 0 ? io::parse_gguf(storage, "fuzz.gguf") : io::parse_safetensors(storage, "fuzz.safetensors");
      for (const auto& [name, t] : ws.tensors) {
        const uint8_t* p = t.data<uint8_t>();
        if (p < begin || p + t.nbytes() > begin + size) std::abort();
        (void)ws.metadata.dump();
      }
    } catch (const UserError&) {
    }
  }
  return 0;
}
