// BLAS GEMM through function pointers handed over at import time.
//
// The extension links no BLAS of its own: the Python side passes the `sgemm`/`dgemm`
// entry points that SciPy exports in `scipy.linalg.cython_blas.__pyx_capi__` (Fortran
// calling convention, column-major, 32-bit integers), so every product runs in the same
// optimised, multithreaded BLAS that SciPy ships.
#pragma once

#include <cstdint>

namespace netmorph {

// Register the Fortran-convention sgemm and dgemm entry points (neither may be null). The
// library that holds sgemm is also searched for OpenBLAS's thread controls
// (scipy_openblas_{set,get}_num_threads[64_] or openblas_{set,get}_num_threads).
void set_blas(void* sgemm, void* dgemm);

// True once set_blas has been called.
bool blas_ready();

// Row-major C (m x n, leading dimension ldc) = alpha * op(A) * op(B) + beta * C, where
// op(A) is m x k (A stored k x m when trans_a) and op(B) is k x n (B stored n x k when
// trans_b). Leading dimensions are those of the stored row-major matrices.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// Threads the BLAS runs its products on outside SerialBlas scopes; 0 when its library has no
// OpenBLAS thread controls.
int blas_threads();

// While any SerialBlas scope of the process is alive, the BLAS runs every product on its
// calling thread (no effect without thread controls); the count from before the first scope is
// restored when the last one ends. The count is the library's global setting: products other
// threads of the process run meanwhile are single-threaded too.
class SerialBlas {
 public:
  SerialBlas();
  ~SerialBlas();
  SerialBlas(const SerialBlas&) = delete;
  SerialBlas& operator=(const SerialBlas&) = delete;
};

// Largest m * n * k that OpenBLAS runs on the calling thread (4 * 65536): products up to this
// size can be spread over OpenMP threads without the BLAS starting threads of its own.
constexpr double kSerialGemmWork = 262144.0;

// True when one m x n x k product is at most kSerialGemmWork.
bool gemm_is_small(int64_t m, int64_t n, int64_t k);

}  // namespace netmorph
