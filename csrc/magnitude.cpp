#include "magnitude.h"

#include <limits>
#include <type_traits>

namespace netmorph {
namespace {

// With the sign bit cleared the patterns are below 2^(bits - 1): a signed maximum orders them
// as the unsigned one does, and signed 32-bit comparisons exist on every x86-64 (SSE2).
template <typename T>
inline __attribute__((always_inline)) auto scan(const T* x, int64_t n) {
  using S = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  constexpr S magnitude = std::numeric_limits<S>::max();
  const unsigned char* bytes = reinterpret_cast<const unsigned char*>(x);
  S m = 0;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) {
    S u;
    std::memcpy(&u, bytes + i * sizeof(S), sizeof(S));
    u &= magnitude;
    m = u > m ? u : m;
  }
  return static_cast<std::make_unsigned_t<S>>(m);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define NETMORPH_AVX2_SCAN 1
__attribute__((target("avx2"))) uint32_t scan_avx2(const float* x, int64_t n) {
  return scan(x, n);
}
__attribute__((target("avx2"))) uint64_t scan_avx2(const double* x, int64_t n) {
  return scan(x, n);
}
bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#endif

template <typename T>
auto dispatch(const T* x, int64_t n) {
#ifdef NETMORPH_AVX2_SCAN
  if (has_avx2()) return scan_avx2(x, n);
#endif
  return scan(x, n);
}

}  // namespace

uint32_t max_magnitude_bits(const float* x, int64_t n) { return dispatch(x, n); }
uint64_t max_magnitude_bits(const double* x, int64_t n) { return dispatch(x, n); }

}  // namespace netmorph
