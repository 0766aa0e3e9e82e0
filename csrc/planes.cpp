#include "planes.h"

#include <algorithm>

#include "blas.h"
#include "threads.h"

namespace netmorph {
namespace {

constexpr int64_t kBlock = 32;            // transpose tile edge
constexpr int64_t kParallelWork = 32768;  // elements below which threads cost more than they save
constexpr int64_t kPiecesPerThread = 4;   // row pieces per thread of a tap map (dynamic schedule)
constexpr int64_t kMinRows = 256;         // fewest channel rows of one piece

// Channel rows per piece of a tap map: a few pieces per OpenMP thread.
int64_t piece_rows(int64_t rows) {
  const int64_t pieces = kPiecesPerThread * omp_threads();
  return std::max(kMinRows, (rows + pieces - 1) / pieces);
}

}  // namespace

template <typename T>
void transpose(const T* src, int64_t batch, int64_t rows, int64_t cols, int64_t lds, T* dst,
               int64_t ldd, bool accumulate, bool openmp) {
  const int64_t rb = (rows + kBlock - 1) / kBlock;
  const int64_t cb = (cols + kBlock - 1) / kBlock;
  const bool parallel = openmp && batch * rows * cols > kParallelWork;
#pragma omp parallel for collapse(2) schedule(dynamic, 16) if (parallel)
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t blk = 0; blk < rb * cb; ++blk) {
      const int64_t r0 = (blk / cb) * kBlock;
      const int64_t c0 = (blk % cb) * kBlock;
      const int64_t r1 = std::min(rows, r0 + kBlock);
      const int64_t c1 = std::min(cols, c0 + kBlock);
      const T* s = src + b * rows * lds;
      T* d = dst + b * cols * ldd;
      if (accumulate) {
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t r = r0; r < r1; ++r) d[c * ldd + r] += s[r * lds + c];
      } else {
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t r = r0; r < r1; ++r) d[c * ldd + r] = s[r * lds + c];
      }
    }
}

template <typename T>
void to_planes(const T* x, int64_t rows, const Matrix& e, int64_t p0, int64_t p1, T* planes,
               bool openmp) {
  const int64_t np = p1 - p0;
  const int64_t taps = e.cols;
  if (e.identity) {
    transpose(x + p0, 1, rows, np, taps, planes, rows, false, openmp);
    return;
  }
  // planes (np x rows) = E[p0:p1, :] · X^T with X = x as rows x taps.
  const T* em = e.data<T>() + p0 * taps;
  const int64_t step = openmp ? piece_rows(rows) : rows;
#pragma omp parallel for schedule(dynamic) if (openmp && rows > step)
  for (int64_t r0 = 0; r0 < rows; r0 += step)
    gemm<T>(false, true, np, std::min(step, rows - r0), taps, T(1), em, taps, x + r0 * taps, taps,
            T(0), planes + r0, rows);
}

template <typename T>
void from_planes(const T* planes, int64_t rows, const Matrix& e, int64_t p0, int64_t p1, T* out,
                 bool accumulate, bool openmp) {
  const int64_t np = p1 - p0;
  const int64_t taps = e.rows;
  if (e.identity) {
    transpose(planes, 1, np, rows, rows, out + p0, taps, accumulate, openmp);
    return;
  }
  // out (rows x taps) = planes^T · E[:, p0:p1]^T.
  const T* em = e.data<T>() + p0;
  const int64_t step = openmp ? piece_rows(rows) : rows;
#pragma omp parallel for schedule(dynamic) if (openmp && rows > step)
  for (int64_t r0 = 0; r0 < rows; r0 += step)
    gemm<T>(true, true, std::min(step, rows - r0), taps, np, T(1), planes + r0, rows, em, e.cols,
            accumulate ? T(1) : T(0), out + r0 * taps, taps);
}

template void to_planes<float>(const float*, int64_t, const Matrix&, int64_t, int64_t, float*,
                               bool);
template void to_planes<double>(const double*, int64_t, const Matrix&, int64_t, int64_t, double*,
                                bool);
template void from_planes<float>(const float*, int64_t, const Matrix&, int64_t, int64_t, float*,
                                 bool, bool);
template void from_planes<double>(const double*, int64_t, const Matrix&, int64_t, int64_t,
                                  double*, bool, bool);
template void transpose<float>(const float*, int64_t, int64_t, int64_t, int64_t, float*, int64_t,
                               bool, bool);
template void transpose<double>(const double*, int64_t, int64_t, int64_t, int64_t, double*,
                                int64_t, bool, bool);

}  // namespace netmorph
