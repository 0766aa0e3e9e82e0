// Transforms between spatial taps and transform-domain points (templated bodies).
//
// A transform is one small dense matrix M (the Kronecker product of the per-dimension matrices,
// built by the host) applied to every row b, with a layout change that puts the points first,
// so that the transform domain holds one matrix per point (the operands of a strided batched
// GEMM):
//   to_points:   y[p, b] = Σ_k M[p, k] · x[b, k]     x (nb, K) -> y (P, nb), M (P × K)
//   from_points: g[b, t] = Σ_p M[t, p] · q[p, b]     q (P, nb) -> g (nb, T), given Mᵀ (P × T)
// Each block stages `tile` <= 32 consecutive rows b in shared memory, so that the loads and the
// stores are coalesced; all index arithmetic in the loops is 32-bit and division-free where it
// runs per product.
#pragma once
#include "common_cuda.cuh"

namespace netmorph {

// One warp lane per row b (lane < tile), the block's warps striding over the points p: the
// warp reads M[p, :] uniformly (broadcast) and writes 32 consecutive y[p, b].
template <typename T>
__device__ void to_points_impl(const T* __restrict__ x, T* __restrict__ y, index_t nb, int k,
                               int np, const T* __restrict__ m, int tile) {
  T* s = shared_buffer<T>();
  const int ks = k | 1;  // odd row stride: the lanes' rows fall in distinct banks
  const index_t b0 = (index_t)blockIdx.x * tile;
  const int nbl = (int)imin(tile, nb - b0);
  const T* xb = x + b0 * k;
  for (int e = threadIdx.x; e < nbl * k; e += blockDim.x) {
    const int j = e / k;
    s[j * ks + (e - j * k)] = xb[e];
  }
  __syncthreads();
  const int lane = threadIdx.x & 31;
  if (lane >= nbl) return;
  const T* row = s + lane * ks;
  for (int p = threadIdx.x >> 5; p < np; p += blockDim.x >> 5) {
    const T* mp = m + p * k;
    T acc = 0;
    for (int c = 0; c < k; ++c) acc += mp[c] * row[c];
    y[(index_t)p * nb + b0 + lane] = acc;
  }
}

// Rows per thread in from_points: each coefficient M[t, p] read once serves this many rows.
constexpr int kFromPointsRows = 4;

// Thread (row group, t) with t fastest: consecutive threads write consecutive g[b, t].
template <typename T>
__device__ void from_points_impl(const T* __restrict__ q, T* __restrict__ g, index_t nb, int np,
                                 int nt, const T* __restrict__ mt, int tile) {
  T* s = shared_buffer<T>();
  // Row stride rounded up to whole groups; the rows past nbl hold zeros.
  const int ts = (tile + kFromPointsRows - 1) / kFromPointsRows * kFromPointsRows;
  const index_t b0 = (index_t)blockIdx.x * tile;
  const int nbl = (int)imin(tile, nb - b0);
  for (int e = threadIdx.x; e < np * ts; e += blockDim.x) {
    const int p = e / ts;
    const int j = e - p * ts;
    s[e] = j < nbl ? q[(index_t)p * nb + b0 + j] : T(0);
  }
  __syncthreads();
  const int groups = (nbl + kFromPointsRows - 1) / kFromPointsRows;
  T* gb = g + b0 * nt;
  for (int e = threadIdx.x; e < groups * nt; e += blockDim.x) {
    const int grp = e / nt;
    const int t = e - grp * nt;
    const int j0 = grp * kFromPointsRows;
    T acc[kFromPointsRows];
#pragma unroll
    for (int r = 0; r < kFromPointsRows; ++r) acc[r] = 0;
    for (int p = 0; p < np; ++p) {
      const T c = mt[p * nt + t];
      const T* sp = s + p * ts + j0;
#pragma unroll
      for (int r = 0; r < kFromPointsRows; ++r) acc[r] += c * sp[r];
    }
#pragma unroll
    for (int r = 0; r < kFromPointsRows; ++r) {
      if (j0 + r < nbl) gb[(j0 + r) * nt + t] = acc[r];
    }
  }
}

}  // namespace netmorph
