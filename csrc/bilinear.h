// Bilinear algorithms for the multichannel full convolution G = F2 ⊛ F1 and its adjoint.
//
// Every method is written in one form (a "plan"):
//   planes_a = transform_a · a,  planes_b = transform_b · b   (per channel pair, over taps)
//   planes_c[c] = Σ_{(i, j) ∈ terms[c]} op(planes_a[i]) · planes_b[j]     (channel GEMMs)
//   out = output · planes_c                                      (back to taps)
// For compose, a = F2 (taps K2), b = F1 (taps K1), out = G (taps Kt = K1 + K2 - 1) and
// op is the identity. For correlate (the adjoint of compose in its inner argument),
// a = F2, b = Y (taps Kt), out = X (taps k1) and op is the transpose.
//
// Methods:
//   direct - the taps themselves: |K1|·|K2| products of plain channel matrices.
//   toom   - Toom-Cook evaluation at Kt points per dimension (0, ±1, ±2, ±1/2, 1/4, ∞):
//            |Kt| products, but the interpolation amplifies rounding errors as Kt grows.
//   dft    - a real-arithmetic DFT of size Kt per dimension: one product per
//            self-conjugate frequency and three (Gauss/3M) per conjugate pair; close to
//            orthogonal, so as accurate as direct.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "shape.h"

namespace netmorph {

// A small dense row-major matrix over taps; values are kept in double and in float.
struct Matrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<double> value;
  std::vector<float> value_f;
  bool identity = false;  // square identity: applying it only moves data

  static Matrix from(int64_t rows, int64_t cols, std::vector<double> value);
  Matrix transposed() const;
  // The 1 x 1 matrix [1]: the transform leaves its operand as the single plane.
  bool is_unit() const { return rows == 1 && identity; }
  double row_norm(int64_t r) const;

  template <typename T>
  const T* data() const;
};

enum class Method { direct, toom, dft };
enum class Operation { compose, correlate };

// "direct", "toom" or "dft"; std::invalid_argument otherwise.
Method parse_method(const std::string& name);

// One product op(planes_a[a]) · planes_b[b].
struct Term {
  int64_t a;
  int64_t b;
};

struct Plan {
  Matrix transform_a;
  Matrix transform_b;
  Matrix output;
  std::vector<std::vector<Term>> terms;  // one list per intermediate output plane
  bool trans_a = false;
  bool pointwise = false;  // terms[p] == {(p, p)}: planes can be processed in chunks
  // Root mean square over output taps of Σ_c |output[t, c]| Σ_{(i,j)} ‖row_a i‖‖row_b j‖:
  // how much the algorithm can magnify the rounding error of the channel products.
  double amplification = 0.0;

  int64_t products() const;
};

// The cached plan for `op` with outer taps k_outer (F2) and inner taps k_inner
// (F1 for compose, the unknown X for correlate). Thread-safe.
const Plan& get_plan(Operation op, Method method, const Dims3& k_outer, const Dims3& k_inner);

}  // namespace netmorph
