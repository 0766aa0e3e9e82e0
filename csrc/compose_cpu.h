// CPU kernels of the composition operator ⊛ and of its adjoint (C-contiguous buffers).
//
//   compose:         G[o, i, t] = Σ_m Σ_{a+b=t} F2[o, m, a] F1[m, i, b]
//                    F2 (c2, c1, k2), F1 (c1, c0, k1) -> G (c2, c0, k1 + k2 - 1)
//   correlate_outer: X[m, i, s] = Σ_o Σ_t F2[o, m, t - s] Y[o, i, t]   (X = A^T Y)
//                    F2 (c2, c1, k2), Y (c2, c0, k1 + k2 - 1) -> X (c1, c0, k1)
//
// `threads` (>= 1): threads taking the call's pieces of work one at a time while the BLAS runs
// single-threaded (threads.h); 1 runs everything on the calling thread.
#pragma once

#include <cstdint>

#include "bilinear.h"
#include "shape.h"

namespace netmorph {

template <typename T>
void compose_cpu(const T* f2, const T* f1, int64_t c2, int64_t c1, int64_t c0, const Dims3& k2,
                 const Dims3& k1, Method method, int threads, T* g);

template <typename T>
void correlate_outer_cpu(const T* f2, const T* y, int64_t c2, int64_t c1, int64_t c0,
                         const Dims3& k2, const Dims3& k1, Method method, int threads, T* x);

}  // namespace netmorph
