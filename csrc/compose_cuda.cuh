// compose, direct method: the shifted sum after one GEMM (templated body).
//
// With P[o, u, i, s] = Σ_m F2[o, m, u] · F1[m, i, s] computed by a GEMM beforehand,
//   G[o, i, t] = Σ_{u : 0 <= t - u < K1} P[o, u, i, t - u]        (t = u + s, Kt = K1 + K2 - 1)
// P (C2, |K2|, C0, |K1|) -> G (C2, C0, *Kt), one thread per element of G.
#pragma once
#include "common_cuda.cuh"

namespace netmorph {

template <typename T>
__device__ void compose_shift_add_impl(const T* __restrict__ p, T* __restrict__ g, index_t c2,
                                       index_t c0, Dims3 k2, Dims3 k1) {
  const Dims3 kt = dims3(k1.d + k2.d - 1, k1.h + k2.h - 1, k1.w + k2.w - 1);
  const index_t n2 = k2.size();
  const index_t n1 = k1.size();
  const index_t nt = kt.size();
  const int col = grid_col();  // (i, t) of G viewed as C2 × (C0·|Kt|)
  if (col >= c0 * nt) return;
  const int i = col / (int)nt;
  const int t = col - i * (int)nt;
  const int tw = t % (int)kt.w;
  const int th = (t / (int)kt.w) % (int)kt.h;
  const int td = t / (int)(kt.w * kt.h);
  NM_FOR_EACH_ROW(o, c2) {
    const T* base = p + o * n2 * c0 * n1 + i * n1;
    T acc = 0;
    for (index_t ud = imax(0, td - k1.d + 1); ud <= imin(k2.d - 1, td); ++ud) {
      for (index_t uh = imax(0, th - k1.h + 1); uh <= imin(k2.h - 1, th); ++uh) {
        for (index_t uw = imax(0, tw - k1.w + 1); uw <= imin(k2.w - 1, tw); ++uw) {
          acc += base[k2.flat(ud, uh, uw) * c0 * n1 + k1.flat(td - ud, th - uh, tw - uw)];
        }
      }
    }
    g[o * c0 * nt + col] = acc;
  }
}

}  // namespace netmorph
