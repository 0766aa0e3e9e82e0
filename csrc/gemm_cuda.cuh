// Strided batched GEMM (templated body): C[b] = A[b] · B[b] for every batch index b.
//
// Element (r, c) of batch b of A is a[b·a_bs + r·a_rs + c·a_cs] (likewise B and C), so
// transposed and permuted operands need no copy. A (m × k), B (k × n), C (m × n).
// 64 × 64 output tiles, 16-deep panels staged in shared memory, 256 threads each owning a
// 4 × 4 block of the tile; loads are coalesced along whichever operand axis has unit stride.
// Accumulates in T (float32 arithmetic for float: no TF32, no reduced precision).
#pragma once
#include "common_cuda.cuh"

namespace netmorph {

constexpr int kGemmTile = 64;
constexpr int kGemmDepth = 16;
constexpr int kGemmThreads = 256;

template <typename T>
__device__ void gemm_impl(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ c,
                          index_t m, index_t n, index_t k, index_t a_rs, index_t a_cs,
                          index_t a_bs, index_t b_rs, index_t b_cs, index_t b_bs, index_t c_rs,
                          index_t c_cs, index_t c_bs) {
  // +1 column of padding: the transposed stores of a panel hit distinct banks.
  __shared__ T as[kGemmDepth][kGemmTile + 1];
  __shared__ T bs[kGemmDepth][kGemmTile + 1];
  const index_t batch = blockIdx.z;
  a += batch * a_bs;
  b += batch * b_bs;
  c += batch * c_bs;
  const index_t row0 = (index_t)blockIdx.y * kGemmTile;
  const index_t col0 = (index_t)blockIdx.x * kGemmTile;
  const int tid = threadIdx.x;
  const int tx = tid % 16;
  const int ty = tid / 16;
  T acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0;
  }
  // Each thread loads 4 elements of each panel; their tile coordinates never change.
  const bool a_k_fast = a_cs == 1;
  const bool b_n_fast = b_cs == 1;
  int a_r[4], a_k[4], b_c[4], b_k[4];
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    const int e = tid + l * kGemmThreads;
    a_r[l] = a_k_fast ? e / kGemmDepth : e % kGemmTile;
    a_k[l] = a_k_fast ? e % kGemmDepth : e / kGemmTile;
    b_c[l] = b_n_fast ? e % kGemmTile : e / kGemmDepth;
    b_k[l] = b_n_fast ? e / kGemmTile : e % kGemmDepth;
  }
  for (index_t k0 = 0; k0 < k; k0 += kGemmDepth) {
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const index_t gr = row0 + a_r[l];
      const index_t gk = k0 + a_k[l];
      as[a_k[l]][a_r[l]] = (gr < m && gk < k) ? a[gr * a_rs + gk * a_cs] : T(0);
      const index_t gc = col0 + b_c[l];
      const index_t gkb = k0 + b_k[l];
      bs[b_k[l]][b_c[l]] = (gc < n && gkb < k) ? b[gkb * b_rs + gc * b_cs] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kGemmDepth; ++kk) {
      T ar[4];
      T br[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) ar[i] = as[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) br[j] = bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += ar[i] * br[j];
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const index_t r = row0 + ty + 16 * i;
    if (r >= m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const index_t cc = col0 + tx + 16 * j;
      if (cc < n) c[r * c_rs + cc * c_cs] = acc[i][j];
    }
  }
}

}  // namespace netmorph
