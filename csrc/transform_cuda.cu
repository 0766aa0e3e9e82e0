// Transform-domain kernels shared by compose (Toom-Cook evaluation and interpolation) and
// correlate_outer (their transposes); see transform_cuda.cuh for the equations.
// Launch: blocks of a multiple of 32 threads, one block per `tile` <= 32 consecutive rows b
// (grid ceil(nb / tile)); dynamic shared memory tile·(K | 1) elements for to_points and
// P·(tile rounded up to a multiple of 4) elements for from_points.
#include "transform_cuda.cuh"

#define NM_DEFINE(T, S)                                                                        \
  extern "C" __global__ void nm_to_points_##S(const T* x, T* y, long long nb, int k, int np,  \
                                              const T* m, int tile) {                          \
    netmorph::to_points_impl<T>(x, y, nb, k, np, m, tile);                                    \
  }                                                                                            \
  extern "C" __global__ void nm_from_points_##S(const T* q, T* g, long long nb, int np,       \
                                                int nt, const T* mt, int tile) {               \
    netmorph::from_points_impl<T>(q, g, nb, np, nt, mt, tile);                                \
  }
NM_FOR_EACH_DTYPE(NM_DEFINE)
#undef NM_DEFINE
