// gram_outer = AᵀA assembled from the tap Gram matrix (templated body).
//
// With Z[(m, u), (m', u')] = Σ_o F2[o, m, u] · F2[o, m', u'] computed by one GEMM beforehand,
//   M[(m, s), (m', s')] = Σ_u Z[(m, u), (m', u + s - s')]    (u, u + s - s' inside K2)
// Z (C1, |K2|, C1, |K2|) -> M (C1·|K1|, C1·|K1|), one thread per element of M.
// Z is read from its upper triangle (upper()): M[(m', s'), (m, s)] sums the same entries as
// M[(m, s), (m', s')] in the same order (u ↦ u + s - s'), so M = Mᵀ bit for bit.
#pragma once
#include "common_cuda.cuh"

namespace netmorph {

template <typename T>
__device__ void gram_assemble_impl(const T* __restrict__ z, T* __restrict__ out, index_t c1,
                                   Dims3 k2, Dims3 k1) {
  const index_t n2 = k2.size();
  const index_t n1 = k1.size();
  const int col = grid_col();  // (m', s')
  if (col >= c1 * n1) return;
  const int m2 = col / (int)n1;
  const int s2 = col - m2 * (int)n1;
  const int s2d = s2 / (int)(k1.w * k1.h), s2h = (s2 / (int)k1.w) % (int)k1.h;
  const int s2w = s2 % (int)k1.w;
  NM_FOR_EACH_ROW(row, c1 * n1) {  // (m, s)
    const int m = (int)row / (int)n1;
    const int s = (int)row - m * (int)n1;
    const index_t dd = s / (int)(k1.w * k1.h) - s2d;
    const index_t dh = (s / (int)k1.w) % (int)k1.h - s2h;
    const index_t dw = s % (int)k1.w - s2w;
    const index_t a0 = (index_t)m * n2, b0 = (index_t)m2 * n2;
    T acc = 0;
    for (index_t ud = imax(0, -dd); ud < imin(k2.d, k2.d - dd); ++ud) {
      for (index_t uh = imax(0, -dh); uh < imin(k2.h, k2.h - dh); ++uh) {
        for (index_t uw = imax(0, -dw); uw < imin(k2.w, k2.w - dw); ++uw) {
          acc += upper(z, c1 * n2, a0 + k2.flat(ud, uh, uw),
                       b0 + k2.flat(ud + dd, uh + dh, uw + dw));
        }
      }
    }
    out[row * c1 * n1 + col] = acc;
  }
}

}  // namespace netmorph
