#include "blas.h"

#include <dlfcn.h>

#include <climits>
#include <mutex>
#include <stdexcept>
#include <string>

namespace netmorph {
namespace {

using sgemm_t = void (*)(char*, char*, int*, int*, int*, float*, float*, int*, float*, int*,
                         float*, float*, int*);
using dgemm_t = void (*)(char*, char*, int*, int*, int*, double*, double*, int*, double*, int*,
                         double*, double*, int*);

using set_threads_t = void (*)(int);
using get_threads_t = int (*)();

sgemm_t g_sgemm = nullptr;
dgemm_t g_dgemm = nullptr;
set_threads_t g_set_threads = nullptr;
get_threads_t g_get_threads = nullptr;
// SerialBlas scopes alive in the process, and the BLAS's thread count from before the first.
std::mutex g_serial_mutex;
int g_serial_scopes = 0;
int g_threads_outside = 0;

// OpenBLAS's thread controls in the shared library that defines `symbol`, if it has them.
void find_thread_controls(void* symbol) {
  g_set_threads = nullptr;
  g_get_threads = nullptr;
  Dl_info info;
  if (dladdr(symbol, &info) == 0 || info.dli_fname == nullptr) return;
  void* lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (lib == nullptr) return;
  const char* prefixes[] = {"scipy_openblas", "openblas"};
  const char* suffixes[] = {"", "64_"};
  for (const char* prefix : prefixes)
    for (const char* suffix : suffixes) {
      const std::string set = std::string(prefix) + "_set_num_threads" + suffix;
      const std::string get = std::string(prefix) + "_get_num_threads" + suffix;
      void* s = dlsym(lib, set.c_str());
      void* g = dlsym(lib, get.c_str());
      if (s != nullptr && g != nullptr) {
        g_set_threads = reinterpret_cast<set_threads_t>(s);
        g_get_threads = reinterpret_cast<get_threads_t>(g);
        dlclose(lib);
        return;
      }
    }
  dlclose(lib);
}

int as_blas_int(int64_t v, const char* what) {
  if (v < 0 || v > INT_MAX) {
    throw std::overflow_error(std::string("GEMM ") + what + " exceeds the 32-bit BLAS range");
  }
  return static_cast<int>(v);
}

template <typename T>
void call_gemm(char ta, char tb, int m, int n, int k, T alpha, T* a, int lda, T* b, int ldb,
               T beta, T* c, int ldc);

template <>
void call_gemm<float>(char ta, char tb, int m, int n, int k, float alpha, float* a, int lda,
                      float* b, int ldb, float beta, float* c, int ldc) {
  g_sgemm(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

template <>
void call_gemm<double>(char ta, char tb, int m, int n, int k, double alpha, double* a, int lda,
                       double* b, int ldb, double beta, double* c, int ldc) {
  g_dgemm(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

}  // namespace

void set_blas(void* sgemm, void* dgemm) {
  if (sgemm == nullptr || dgemm == nullptr) {
    throw std::invalid_argument("set_blas needs non-null sgemm and dgemm pointers");
  }
  g_sgemm = reinterpret_cast<sgemm_t>(sgemm);
  g_dgemm = reinterpret_cast<dgemm_t>(dgemm);
  find_thread_controls(sgemm);
}

int blas_threads() {
  if (g_get_threads == nullptr) return 0;
  const std::lock_guard<std::mutex> lock(g_serial_mutex);
  return g_serial_scopes > 0 ? g_threads_outside : g_get_threads();
}

SerialBlas::SerialBlas() {
  if (g_set_threads == nullptr) return;
  const std::lock_guard<std::mutex> lock(g_serial_mutex);
  if (g_serial_scopes++ == 0) {
    g_threads_outside = g_get_threads();
    if (g_threads_outside != 1) g_set_threads(1);
  }
}

SerialBlas::~SerialBlas() {
  if (g_set_threads == nullptr) return;
  const std::lock_guard<std::mutex> lock(g_serial_mutex);
  if (--g_serial_scopes == 0 && g_threads_outside != 1) g_set_threads(g_threads_outside);
}

bool blas_ready() { return g_sgemm != nullptr && g_dgemm != nullptr; }

bool gemm_is_small(int64_t m, int64_t n, int64_t k) {
  return static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) <=
         kSerialGemmWork;
}

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (!blas_ready()) {
    throw std::runtime_error("BLAS entry points are not set: call set_blas first");
  }
  if (m == 0 || n == 0) {
    return;
  }
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  call_gemm<T>(trans_b ? 'T' : 'N', trans_a ? 'T' : 'N', as_blas_int(n, "n"), as_blas_int(m, "m"),
               as_blas_int(k, "k"), alpha, const_cast<T*>(b), as_blas_int(ldb, "ldb"),
               const_cast<T*>(a), as_blas_int(lda, "lda"), beta, c, as_blas_int(ldc, "ldc"));
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);

}  // namespace netmorph
