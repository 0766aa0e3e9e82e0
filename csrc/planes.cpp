#include "planes.h"

#include <algorithm>

#include "blas.h"
#include "threads.h"

namespace netmorph {
namespace {

constexpr int64_t kBlock = 32;            // transpose tile edge
constexpr int64_t kParallelWork = 32768;  // elements below which threads cost more than they save
constexpr int64_t kPiecesPerThread = 4;   // pieces per thread of a tap map or transpose
constexpr int64_t kMinRows = 256;         // fewest channel rows of one piece of a tap map

// Channel rows per piece of a tap map on `threads` threads.
int64_t piece_rows(int64_t rows, int threads) {
  const int64_t pieces = kPiecesPerThread * threads;
  return std::max(kMinRows, (rows + pieces - 1) / pieces);
}

// Tiles [t0, t1) of the transpose described at `transpose` (planes.h); tile t is batch
// t / (rb * cb), tile row (t % (rb * cb)) / cb, tile column t % cb.
template <typename T>
void transpose_tiles(const T* src, int64_t rows, int64_t cols, int64_t lds, T* dst, int64_t ldd,
                     bool accumulate, int64_t t0, int64_t t1) {
  const int64_t rb = (rows + kBlock - 1) / kBlock;
  const int64_t cb = (cols + kBlock - 1) / kBlock;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / (rb * cb);
    const int64_t blk = t % (rb * cb);
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

// One matrix of `transpose`, its tiles in pieces on `threads` threads (threads.h).
template <typename T>
void transpose_threads(const T* src, int64_t rows, int64_t cols, int64_t lds, T* dst, int64_t ldd,
                       bool accumulate, int threads) {
  const int64_t tiles = ((rows + kBlock - 1) / kBlock) * ((cols + kBlock - 1) / kBlock);
  const int64_t pieces = rows * cols > kParallelWork ? kPiecesPerThread * threads : 1;
  const int64_t step = (tiles + pieces - 1) / pieces;
  parallel_for((tiles + step - 1) / step, threads, [&](int64_t i) {
    transpose_tiles(src, rows, cols, lds, dst, ldd, accumulate, i * step,
                    std::min(tiles, (i + 1) * step));
  });
}

}  // namespace

template <typename T>
void transpose(const T* src, int64_t batch, int64_t rows, int64_t cols, int64_t lds, T* dst,
               int64_t ldd, bool accumulate, bool openmp) {
  const int64_t tiles = ((rows + kBlock - 1) / kBlock) * ((cols + kBlock - 1) / kBlock);
  const bool parallel = openmp && batch * rows * cols > kParallelWork;
#pragma omp parallel for schedule(dynamic, 16) if (parallel)
  for (int64_t t = 0; t < batch * tiles; ++t)
    transpose_tiles(src, rows, cols, lds, dst, ldd, accumulate, t, t + 1);
}

template <typename T>
void to_planes(const T* x, int64_t rows, const Matrix& e, int64_t p0, int64_t p1, T* planes,
               int threads) {
  const int64_t np = p1 - p0;
  const int64_t taps = e.cols;
  if (e.identity) {
    transpose_threads(x + p0, rows, np, taps, planes, rows, false, threads);
    return;
  }
  // planes (np x rows) = E[p0:p1, :] · X^T with X = x as rows x taps.
  const T* em = e.data<T>() + p0 * taps;
  const int64_t step = threads > 1 ? piece_rows(rows, threads) : rows;
  parallel_for((rows + step - 1) / step, threads, [&](int64_t i) {
    const int64_t r0 = i * step;
    gemm<T>(false, true, np, std::min(step, rows - r0), taps, T(1), em, taps, x + r0 * taps, taps,
            T(0), planes + r0, rows);
  });
}

template <typename T>
void from_planes(const T* planes, int64_t rows, const Matrix& e, int64_t p0, int64_t p1, T* out,
                 bool accumulate, int threads) {
  const int64_t np = p1 - p0;
  const int64_t taps = e.rows;
  if (e.identity) {
    transpose_threads(planes, np, rows, rows, out + p0, taps, accumulate, threads);
    return;
  }
  // out (rows x taps) = planes^T · E[:, p0:p1]^T.
  const T* em = e.data<T>() + p0;
  const int64_t step = threads > 1 ? piece_rows(rows, threads) : rows;
  parallel_for((rows + step - 1) / step, threads, [&](int64_t i) {
    const int64_t r0 = i * step;
    gemm<T>(true, true, std::min(step, rows - r0), taps, np, T(1), planes + r0, rows, em, e.cols,
            accumulate ? T(1) : T(0), out + r0 * taps, taps);
  });
}

template void to_planes<float>(const float*, int64_t, const Matrix&, int64_t, int64_t, float*,
                               int);
template void to_planes<double>(const double*, int64_t, const Matrix&, int64_t, int64_t, double*,
                                int);
template void from_planes<float>(const float*, int64_t, const Matrix&, int64_t, int64_t, float*,
                                 bool, int);
template void from_planes<double>(const double*, int64_t, const Matrix&, int64_t, int64_t,
                                  double*, bool, int);
template void transpose<float>(const float*, int64_t, int64_t, int64_t, int64_t, float*, int64_t,
                               bool, bool);
template void transpose<double>(const double*, int64_t, int64_t, int64_t, int64_t, double*,
                                int64_t, bool, bool);

}  // namespace netmorph
