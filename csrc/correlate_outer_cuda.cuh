// correlate_outer, direct method: the shifted gather after one GEMM (templated body).
//
// With P[m, u, i, t] = Σ_o F2[o, m, u] · Y[o, i, t] computed by a GEMM beforehand,
//   X[m, i, s] = Σ_u P[m, u, i, s + u]  =  Σ_{o, t} F2[o, m, t - s] · Y[o, i, t]
// P (C1, |K2|, C0, |Kt|) -> X (C1, C0, *K1), one thread per element of X.
#pragma once
#include "common_cuda.cuh"

namespace netmorph {

template <typename T>
__device__ void correlate_gather_impl(const T* __restrict__ p, T* __restrict__ x, index_t c1,
                                      index_t c0, Dims3 k2, Dims3 k1) {
  const Dims3 kt = dims3(k1.d + k2.d - 1, k1.h + k2.h - 1, k1.w + k2.w - 1);
  const index_t n2 = k2.size();
  const index_t n1 = k1.size();
  const index_t nt = kt.size();
  const int col = grid_col();  // (i, s) of X viewed as C1 × (C0·|K1|)
  if (col >= c0 * n1) return;
  const int i = col / (int)n1;
  const int s = col - i * (int)n1;
  const int sw = s % (int)k1.w;
  const int sh = (s / (int)k1.w) % (int)k1.h;
  const int sd = s / (int)(k1.w * k1.h);
  NM_FOR_EACH_ROW(m, c1) {
    const T* base = p + m * n2 * c0 * nt + i * nt;
    T acc = 0;
    for (index_t ud = 0; ud < k2.d; ++ud) {
      for (index_t uh = 0; uh < k2.h; ++uh) {
        for (index_t uw = 0; uw < k2.w; ++uw) {
          acc += base[k2.flat(ud, uh, uw) * c0 * nt + kt.flat(sd + ud, sh + uh, sw + uw)];
        }
      }
    }
    x[m * c0 * n1 + col] = acc;
  }
}

}  // namespace netmorph
