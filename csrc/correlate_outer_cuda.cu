// correlate_outer = Aᵀ·Y (the adjoint of X ↦ F2 ⊛ X), direct method: the shifted gather after
// the GEMM (correlate_outer_cuda.cuh). The transform method uses transform_cuda.cu with the
// transposed matrices. Launch: grid.x covers the C0·|K1| columns, grid.y strides over C1 rows.
#include "correlate_outer_cuda.cuh"

#define NM_DEFINE(T, S)                                                                        \
  extern "C" __global__ void nm_correlate_gather_##S(                                         \
      const T* p, T* x, long long c1, long long c0, long long k2d, long long k2h,              \
      long long k2w, long long k1d, long long k1h, long long k1w) {                            \
    netmorph::correlate_gather_impl<T>(p, x, c1, c0, netmorph::dims3(k2d, k2h, k2w),          \
                                       netmorph::dims3(k1d, k1h, k1w));                        \
  }
NM_FOR_EACH_DTYPE(NM_DEFINE)
#undef NM_DEFINE
