// Shared by the benchmarks: timing, and this machine's measured peak (an F32 FMA loop, a
// BF16 dot-product loop, and AMX BF16 tiles where present), run on the global thread pool.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <functional>

#include "backend/cpu/gemm.h"
#include "core/thread_pool.h"

namespace fluxpipe::bench {

inline double seconds_of(const std::function<void()>& fn, int reps) {
  fn();   // warm-up (page faults, packing buffers)
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

__attribute__((target("avx512f"))) inline double fma_loop(int64_t iters) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  __m512 a = _mm512_set1_ps(1.0000001f), b = _mm512_set1_ps(0.9999999f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  float s = 0;
  for (int i = 0; i < 12; ++i) s += _mm512_reduce_add_ps(acc[i]);
  return s;
}

__attribute__((target("avx512f,avx512bf16"))) inline double bf16_loop(int64_t iters) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_setzero_ps();
  __m512bh a = (__m512bh)_mm512_set1_epi16(0x3F80), b = (__m512bh)_mm512_set1_epi16(0x3F80);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  float s = 0;
  for (int i = 0; i < 12; ++i) s += _mm512_reduce_add_ps(acc[i]);
  return s;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// AMX: four independent 16x16 accumulators, each tdpbf16ps is 16*16*32*2 FLOP.
__attribute__((target("amx-tile,amx-bf16"))) inline double amx_loop(int64_t iters) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  asm volatile("ldtilecfg %0" : : "m"(cfg));
  alignas(64) static thread_local uint16_t zeros[16 * 32] = {};
  _tile_loadd(4, zeros, 64);
  _tile_loadd(6, zeros, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t it = 0; it < iters; ++it) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 6);
    _tile_dpbf16ps(2, 4, 6);
    _tile_dpbf16ps(3, 4, 6);
  }
  alignas(64) float out[256];
  _tile_stored(0, out, 64);
  _tile_release();
  return out[0];
}

inline double amx_peak(int threads) {
  ThreadPool::set_global_threads(threads);
  const int64_t iters = 2'000'000;
  volatile double sink = 0;
  double t = seconds_of([&] {
    ThreadPool::global().parallel_for(threads, [&](int, int64_t, int64_t) { sink = sink + amx_loop(iters); });
  }, 2);
  return 4.0 * 16 * 16 * 32 * 2 * static_cast<double>(iters) * threads / t;
}

// FLOP/s of `loop` run on every thread of the pool at once.
inline double peak(bool bf16, int threads) {
  ThreadPool::set_global_threads(threads);
  const int64_t iters = 20'000'000;
  volatile double sink = 0;
  double t = seconds_of([&] {
    ThreadPool::global().parallel_for(threads, [&](int, int64_t, int64_t) { sink = sink + (bf16 ? bf16_loop(iters) : fma_loop(iters)); });
  }, 2);
  double flop_per_iter = 12.0 * 16 * 2 * (bf16 ? 2 : 1);   // 16 lanes, multiply+add; bf16 does two pairs
  return flop_per_iter * static_cast<double>(iters) * threads / t;
}


// The best BF16 rate this machine offers on `threads` threads: AMX tiles where present,
// else the vdpbf16ps loop. Leaves the global pool at `threads`.
inline double bf16_peak(int threads) {
  double p = peak(true, threads);
  if (cpu::gemm_has_amx()) p = std::max(p, amx_peak(threads));
  ThreadPool::set_global_threads(threads);
  return p;
}

}  // namespace fluxpipe::bench
