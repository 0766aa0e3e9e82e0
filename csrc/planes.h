// Moving between the tap-minor layout of filters, (channel rows, taps), and "planes" of
// channel matrices, (planes, channel rows), while applying a small linear map over the taps.
// A general map is a BLAS GEMM (the maps are tiny, the channel rows many), an identity map a
// blocked transpose.
//
// Threading: the tap maps split their rows into pieces that `threads` threads take one at a
// time (threads.h; the caller keeps the BLAS single-threaded meanwhile). `transpose`, used by
// the Grams, runs on OpenMP threads when `openmp` is true, otherwise on the calling thread.
#pragma once

#include <cstdint>

#include "bilinear.h"

namespace netmorph {

// planes[(p - p0) * rows + r] = Σ_s e[p, s] · x[r * e.cols + s]   for p in [p0, p1).
template <typename T>
void to_planes(const T* x, int64_t rows, const Matrix& e, int64_t p0, int64_t p1, T* planes,
               int threads);

// out[r * e.rows + t] = (out[...] if accumulate) + Σ_{p in [p0, p1)} e[t, p] ·
// planes[(p - p0) * rows + r].
template <typename T>
void from_planes(const T* planes, int64_t rows, const Matrix& e, int64_t p0, int64_t p1, T* out,
                 bool accumulate, int threads);

// dst[b][c * ldd + r] (+)= src[b][r * lds + c] for r < rows, c < cols; batch b advances src
// by rows * lds and dst by cols * ldd.
template <typename T>
void transpose(const T* src, int64_t batch, int64_t rows, int64_t cols, int64_t lds, T* dst,
               int64_t ldd, bool accumulate, bool openmp);

}  // namespace netmorph
