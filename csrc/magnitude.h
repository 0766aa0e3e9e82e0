// The largest magnitude of an array and whether it is finite, in one pass over its bits.
//
// For IEEE numbers with the sign bit cleared, the order of the bit patterns read as integers
// is the order of the magnitudes, and every NaN or infinity lies at or above the pattern of
// +inf. So one integer maximum over (bits & ~sign) gives both max|x| and whether x holds a NaN
// or an infinity: no floating-point comparison (NaN compares false) and no second reduction.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace netmorph {

// max over i < n of the bits of |x[i]| (0 for n = 0), x C-contiguous. On x86-64 CPUs with
// AVX2 the loop runs on 256-bit vectors (chosen at run time; the build stays portable).
uint32_t max_magnitude_bits(const float* x, int64_t n);
uint64_t max_magnitude_bits(const double* x, int64_t n);

// The bit pattern of +inf: max_magnitude_bits at or above it means NaN or Inf.
constexpr uint32_t infinity_bits(float) { return 0x7f800000u; }
constexpr uint64_t infinity_bits(double) { return 0x7ff0000000000000ull; }

// The binary exponent e of the magnitude whose bits are `bits` (f·2^e with 0.5 <= f < 1, as
// frexp gives it); 0 for bits = 0 (an all-zero array). `bits` must be below infinity_bits.
template <typename T, typename U>
int magnitude_exponent(U bits) {
  static_assert(sizeof(T) == sizeof(U), "bits of T");
  if (bits == 0) return 0;
  T top;
  std::memcpy(&top, &bits, sizeof(T));
  int e = 0;
  std::frexp(top, &e);
  return e;
}

}  // namespace netmorph
