// compose = F2 ⊛ F1, direct method: the shifted sum after the GEMM (compose_cuda.cuh).
// The transform method uses transform_cuda.cu.
// Launch: grid.x covers the C0·|Kt| columns, grid.y strides over the C2 rows.
#include "compose_cuda.cuh"

#define NM_DEFINE(T, S)                                                                        \
  extern "C" __global__ void nm_compose_shift_add_##S(                                        \
      const T* p, T* g, long long c2, long long c0, long long k2d, long long k2h,              \
      long long k2w, long long k1d, long long k1h, long long k1w) {                            \
    netmorph::compose_shift_add_impl<T>(p, g, c2, c0, netmorph::dims3(k2d, k2h, k2w),         \
                                        netmorph::dims3(k1d, k1h, k1w));                       \
  }
NM_FOR_EACH_DTYPE(NM_DEFINE)
#undef NM_DEFINE
