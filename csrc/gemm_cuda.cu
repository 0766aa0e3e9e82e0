// Strided batched GEMM used by the compiled module's drivers (gemm_cuda.cuh).
// Launch: block 256 threads, grid (ceil(n / 64), ceil(m / 64), batches).
#include "gemm_cuda.cuh"

#define NM_DEFINE(T, S)                                                                        \
  extern "C" __global__ void __launch_bounds__(256, 2)                                         \
      nm_gemm_##S(const T* a, const T* b, T* c, long long m, long long n, long long k,        \
                  long long a_rs, long long a_cs, long long a_bs, long long b_rs,              \
                  long long b_cs, long long b_bs, long long c_rs, long long c_cs,              \
                  long long c_bs) {                                                            \
    netmorph::gemm_impl<T>(a, b, c, m, n, k, a_rs, a_cs, a_bs, b_rs, b_cs, b_bs, c_rs, c_cs,  \
                           c_bs);                                                              \
  }
NM_FOR_EACH_DTYPE(NM_DEFINE)
#undef NM_DEFINE
