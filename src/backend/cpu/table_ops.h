// The CPU backend's table builders and conversions (Backend::embedding, position_bias,
// timestep_embedding, rope_tables, to_u8, blend_tile): plain loops whose float32 (and, for
// RoPE, double) arithmetic is the reference's. Contracts as in backend/backend.h.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace fluxpipe::cpu {

void embedding(const Tensor& table, const Tensor& ids, Tensor& out);
void position_bias(const Tensor& table, const Tensor& buckets, const Tensor* mask, Tensor& out);
void timestep_embedding(const Tensor& t, float time_factor, float max_period, Tensor& out);
void rope_tables(const Tensor& ids, const std::vector<int>& axes_dim, double theta, Tensor& cos, Tensor& sin);
void to_u8(const Tensor& image, Tensor& out);
void blend_tile(const Tensor& tile, const Tensor& wy, const Tensor& wx, int64_t b, int64_t y0, int64_t x0, Tensor& acc,
                Tensor* wsum);

}  // namespace fluxpipe::cpu
