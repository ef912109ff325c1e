#include "backend/backend.h"

#include "core/error.h"

namespace fluxpipe {

// Reached only through a bug: the ops layer gives nhwc tensors to backends whose has_nhwc() is true.
void Backend::group_norm_nhwc(const Tensor&, int, const Tensor*, const Tensor*, float, bool, Tensor&) {
  throw InternalError("[" + name() + "] group_norm_nhwc: this backend has no channels-last image ops");
}

void Backend::upsample_nearest2x_nhwc(const Tensor&, Tensor&) {
  throw InternalError("[" + name() + "] upsample_nearest2x_nhwc: this backend has no channels-last image ops");
}

}  // namespace fluxpipe
