// gram_outer_rows = A·Aᵀ assembled from the channel Gram matrix (templated body).
//
// With Z[(o, u), (o', u')] = Σ_m F2[o, m, u] · F2[o', m, u'] computed by one GEMM beforehand,
//   N[(o, t), (o', t')] = Σ_s Z[(o, t - s), (o', t' - s)]    (s inside K1, t - s, t' - s inside K2)
// Z (C2, |K2|, C2, |K2|) -> N (C2·|Kt|, C2·|Kt|), one thread per element of N.
// Z is read from its upper triangle (upper()): N[(o', t'), (o, t)] sums the same entries as
// N[(o, t), (o', t')] in the same order, so N = Nᵀ bit for bit.
#pragma once
#include "common_cuda.cuh"

namespace netmorph {

template <typename T>
__device__ void gram_rows_assemble_impl(const T* __restrict__ z, T* __restrict__ out,
                                        index_t c2, Dims3 k2, Dims3 k1) {
  const Dims3 kt = dims3(k1.d + k2.d - 1, k1.h + k2.h - 1, k1.w + k2.w - 1);
  const index_t n2 = k2.size();
  const index_t nt = kt.size();
  const int col = grid_col();  // (o', t')
  if (col >= c2 * nt) return;
  const int o2 = col / (int)nt;
  const int t2 = col - o2 * (int)nt;
  const index_t bd = t2 / (int)(kt.w * kt.h), bh = (t2 / (int)kt.w) % (int)kt.h;
  const index_t bw = t2 % (int)kt.w;
  NM_FOR_EACH_ROW(row, c2 * nt) {  // (o, t)
    const int o = (int)row / (int)nt;
    const int t = (int)row - o * (int)nt;
    const index_t ad = t / (int)(kt.w * kt.h), ah = (t / (int)kt.w) % (int)kt.h;
    const index_t aw = t % (int)kt.w;
    const index_t a0 = (index_t)o * n2, b0 = (index_t)o2 * n2;
    T acc = 0;
    for (index_t sd = imax(0, imax(ad, bd) - k2.d + 1); sd <= imin(k1.d - 1, imin(ad, bd)); ++sd) {
      for (index_t sh = imax(0, imax(ah, bh) - k2.h + 1); sh <= imin(k1.h - 1, imin(ah, bh));
           ++sh) {
        for (index_t sw = imax(0, imax(aw, bw) - k2.w + 1); sw <= imin(k1.w - 1, imin(aw, bw));
             ++sw) {
          acc += upper(z, c2 * n2, a0 + k2.flat(ad - sd, ah - sh, aw - sw),
                       b0 + k2.flat(bd - sd, bh - sh, bw - sw));
        }
      }
    }
    out[row * c2 * nt + col] = acc;
  }
}

}  // namespace netmorph
