// Plain reference implementations of every op, in double precision, written for clarity
// only. The CPU backend's kernels are tested against these (tests/core/kernels_test.cpp).
// Same contracts as Backend (validated inputs, output preallocated).
#pragma once

#include <vector>

#include "backend/backend.h"

namespace fluxpipe::cpu::ref {

void linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out);
void attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const Tensor* bias, bool causal,
               Tensor& out);
void layer_norm(const Tensor& x, const Tensor* w, const Tensor* b, float eps, Tensor& out);
void rms_norm(const Tensor& x, const Tensor* w, float eps, Tensor& out);
void group_norm(const Tensor& x, int groups, const Tensor* w, const Tensor* b, float eps, Tensor& out);
void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& out);
void unary(Unary op, const Tensor& x, Tensor& out);
void binary(Binary op, const Tensor& a, const Tensor& b, Tensor& out);
void softmax(const Tensor& x, Tensor& out);
void conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, const Conv2dParams& p, Tensor& out);
void upsample_nearest2x(const Tensor& x, Tensor& out);
void concat(const std::vector<Tensor>& xs, int dim, Tensor& out);

double unary_value(Unary op, double x);

}  // namespace fluxpipe::cpu::ref
