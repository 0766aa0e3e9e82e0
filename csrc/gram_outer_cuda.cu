// gram_outer = AᵀA of X ↦ F2 ⊛ X: the spatial autocorrelation of F2 assembled from the tap Gram
// matrix Z (gram_outer_cuda.cuh).
// Launch: grid.x covers the C1·|K1| columns, grid.y strides over the C1·|K1| rows.
#include "gram_outer_cuda.cuh"

#define NM_DEFINE(T, S)                                                                        \
  extern "C" __global__ void nm_gram_assemble_##S(const T* z, T* out, long long c1,           \
                                                  long long k2d, long long k2h, long long k2w, \
                                                  long long k1d, long long k1h,                \
                                                  long long k1w) {                             \
    netmorph::gram_assemble_impl<T>(z, out, c1, netmorph::dims3(k2d, k2h, k2w),               \
                                    netmorph::dims3(k1d, k1h, k1w));                           \
  }
NM_FOR_EACH_DTYPE(NM_DEFINE)
#undef NM_DEFINE
