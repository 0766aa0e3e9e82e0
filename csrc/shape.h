// Spatial kernel shapes as three sizes (depth, height, width); missing leading
// dimensions are 1, so 1-D, 2-D and 3-D filters share one code path.
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace netmorph {

struct Dims3 {
  std::array<int64_t, 3> n{1, 1, 1};

  int64_t size() const { return n[0] * n[1] * n[2]; }
  int64_t flat(int64_t i, int64_t j, int64_t k) const { return (i * n[1] + j) * n[2] + k; }
  bool operator==(const Dims3& o) const { return n == o.n; }
  bool operator<(const Dims3& o) const { return n < o.n; }

  // Up to three sizes, right-aligned: {5} -> (1, 1, 5), {3, 3} -> (1, 3, 3).
  static Dims3 from(const std::vector<int64_t>& sizes) {
    if (sizes.size() > 3) {
      throw std::invalid_argument("at most three spatial dimensions are supported");
    }
    Dims3 d;
    const size_t off = 3 - sizes.size();
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (sizes[i] < 1) {
        throw std::invalid_argument("kernel sizes must be positive");
      }
      d.n[off + i] = sizes[i];
    }
    return d;
  }
};

// K1 + K2 - 1 per dimension: the size of a full convolution.
inline Dims3 full_size(const Dims3& a, const Dims3& b) {
  Dims3 t;
  for (int d = 0; d < 3; ++d) t.n[d] = a.n[d] + b.n[d] - 1;
  return t;
}

}  // namespace netmorph
