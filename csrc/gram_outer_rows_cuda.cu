// gram_outer_rows = A·Aᵀ of X ↦ F2 ⊛ X, assembled from the channel Gram matrix Z
// (gram_outer_rows_cuda.cuh).
// Launch: grid.x covers the C2·|Kt| columns, grid.y strides over the C2·|Kt| rows.
#include "gram_outer_rows_cuda.cuh"

#define NM_DEFINE(T, S)                                                                        \
  extern "C" __global__ void nm_gram_rows_assemble_##S(                                       \
      const T* z, T* out, long long c2, long long k2d, long long k2h, long long k2w,           \
      long long k1d, long long k1h, long long k1w) {                                           \
    netmorph::gram_rows_assemble_impl<T>(z, out, c2, netmorph::dims3(k2d, k2h, k2w),          \
                                         netmorph::dims3(k1d, k1h, k1w));                      \
  }
NM_FOR_EACH_DTYPE(NM_DEFINE)
#undef NM_DEFINE
