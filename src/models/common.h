// fluxpipe models: what every model component shares — the debugging trace hook and the weight
// of a linear layer as the checkpoints store it.
#pragma once

#include <functional>
#include <string>

#include "core/tensor.h"

namespace fluxpipe::models {

// Called with each named intermediate ("double_blocks.0.img", "decoder.mid", ...) when set.
using Trace = std::function<void(const std::string& name, const Tensor& value)>;

struct Linear {
  Tensor w;       // [out, in]
  Tensor b;       // [out] (may be undefined)
  Tensor scale;   // one value (ComfyUI's scaled fp8 files: w * scale is the weight), or undefined
};

}  // namespace fluxpipe::models
