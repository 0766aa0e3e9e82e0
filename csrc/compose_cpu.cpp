#include "compose_cpu.h"

#include <algorithm>
#include <vector>

#include "blas.h"
#include "planes.h"
#include "threads.h"
#include "workspace.h"

namespace netmorph {
namespace {

// Transform planes of a pointwise plan are processed in chunks that fit this budget.
constexpr int64_t kPlaneBudgetBytes = int64_t(1) << 27;

// One channel-matrix operand of a plan: every plane is a rows x cols matrix.
template <typename T>
struct Operand {
  const T* data;
  int64_t rows;
  int64_t cols;
  int64_t size() const { return rows * cols; }
};

// Pieces per thread a split product is cut into: a thread slowed down by another process
// takes fewer of them instead of holding up the others.
constexpr int64_t kPiecesPerThread = 4;
// Fewest rows or columns of one piece: narrower pieces run the BLAS below its rate.
constexpr int64_t kMinPiece = 64;

// Size of each of the pieces `extent` is cut into for `threads` threads.
int64_t piece(int64_t extent, int threads) {
  const int64_t pieces = kPiecesPerThread * threads;
  return std::max(kMinPiece, (extent + pieces - 1) / pieces);
}

// C (m x n) = A (m x k) · B (k x n), row-major and contiguous, in row pieces on `threads`
// threads (threads.h).
template <typename T>
void gemm_rows(int64_t m, int64_t n, int64_t k, const T* a, const T* b, T* c, int threads) {
  const int64_t step = threads > 1 ? piece(m, threads) : m;
  parallel_for((m + step - 1) / step, threads, [&](int64_t i) {
    const int64_t r0 = i * step;
    gemm<T>(false, false, std::min(step, m - r0), n, k, T(1), a + r0 * k, k, b, n, T(0),
            c + r0 * n, n);
  });
}

// C (m x n) = op(A) · B with op(A) m x k (A stored k x m when trans_a), B (k x n), row-major
// and contiguous, in column pieces on `threads` threads.
template <typename T>
void gemm_cols(bool trans_a, int64_t m, int64_t n, int64_t k, const T* a, const T* b, T* c,
               int threads) {
  const SerialBlas serial;
  const int64_t step = threads > 1 ? piece(n, threads) : n;
  const int64_t lda = trans_a ? m : k;
  parallel_for((n + step - 1) / step, threads, [&](int64_t i) {
    const int64_t j0 = i * step;
    gemm<T>(trans_a, false, m, std::min(step, n - j0), k, T(1), a, lda, b + j0, n, T(0), c + j0,
            n);
  });
}

// Whether every plane c in [c0, c1) is A_c · B_j for one shared j (direct, 1-tap inner factor).
bool stacks(const Plan& plan, int64_t c0, int64_t c1) {
  if (plan.trans_a || c1 - c0 < 2) return false;
  for (int64_t c = c0; c < c1; ++c) {
    const auto& t = plan.terms[c];
    if (t.size() != 1 || t[0].a != c || t[0].b != plan.terms[c0][0].b) return false;
  }
  return true;
}

// Longest run (i, j), (i+1, j+1), ... in one term list: with op = transpose, such a run is one
// product over stacked planes.
size_t run_length(const std::vector<Term>& terms, size_t i) {
  size_t run = 1;
  while (i + run < terms.size() && terms[i + run].a == terms[i].a + int64_t(run) &&
         terms[i + run].b == terms[i].b + int64_t(run))
    ++run;
  return run;
}

// planes_c[c] = Σ_{terms} op(A_i) B_j for c in [c0, c1); plane indices are relative to the
// first plane held in each buffer (a_base, b_base, c0).
template <typename T>
void products(const Plan& plan, const T* pa, int64_t a_base, const T* pb, int64_t b_base,
              const Operand<T>& a, const Operand<T>& b, int64_t c0, int64_t c1, T* pc,
              int threads) {
  const bool ta = plan.trans_a;
  const int64_t m = ta ? a.cols : a.rows;
  const int64_t k = ta ? a.rows : a.cols;
  const int64_t n = b.cols;
  if (stacks(plan, c0, c1)) {
    // One product over the stacked planes, its rows split into pieces over the threads.
    gemm_rows<T>((c1 - c0) * m, n, k, pa + (c0 - a_base) * a.size(),
                 pb + (plan.terms[c0][0].b - b_base) * b.size(), pc, threads);
    return;
  }
  auto plane = [&](int64_t c) {
    T* dst = pc + (c - c0) * m * n;
    const auto& terms = plan.terms[c];
    if (terms.empty()) {
      std::fill(dst, dst + m * n, T(0));
      return;
    }
    for (size_t i = 0; i < terms.size();) {
      const size_t run = ta ? run_length(terms, i) : 1;
      gemm<T>(ta, false, m, n, k * int64_t(run), T(1), pa + (terms[i].a - a_base) * a.size(),
              a.cols, pb + (terms[i].b - b_base) * b.size(), n, i == 0 ? T(0) : T(1), dst, n);
      i += run;
    }
  };
  parallel_for(c1 - c0, threads, [&](int64_t i) { plane(c0 + i); });
}

// out = plan applied to the operands a and b (out has out_rows x out_cols channel pairs).
template <typename T>
void run_plan(const Plan& plan, const Operand<T>& a, const Operand<T>& b, int64_t out_rows,
              int64_t out_cols, int threads, T* out) {
  const int64_t na = a.size();
  const int64_t nb = b.size();
  const int64_t nc = out_rows * out_cols;
  const int64_t pa_n = plan.transform_a.rows;
  const int64_t pb_n = plan.transform_b.rows;
  const int64_t pc_n = static_cast<int64_t>(plan.terms.size());
  const SerialBlas serial;

  int64_t chunk = pc_n;
  if (plan.pointwise) {
    const int64_t per_plane = (na + nb + nc) * static_cast<int64_t>(sizeof(T));
    chunk = std::clamp<int64_t>(kPlaneBudgetBytes / per_plane, 1, pc_n);
  }
  // Scratch planes (every element is written before it is read); unit maps use the operand.
  const int64_t size_a = plan.transform_a.is_unit() ? 0 : (plan.pointwise ? chunk : pa_n) * na;
  const int64_t size_b = plan.transform_b.is_unit() ? 0 : (plan.pointwise ? chunk : pb_n) * nb;
  const int64_t size_c = plan.output.is_unit() ? 0 : chunk * nc;
  T* scratch = workspace<T>(size_a + size_b + size_c);
  T* buf_a = size_a ? scratch : nullptr;
  T* buf_b = size_b ? scratch + size_a : nullptr;
  T* buf_c = size_c ? scratch + size_a + size_b : nullptr;

  for (int64_t p0 = 0; p0 < pc_n; p0 += chunk) {
    const int64_t p1 = std::min(pc_n, p0 + chunk);
    const int64_t a0 = plan.pointwise ? p0 : 0;
    const int64_t b0 = plan.pointwise ? p0 : 0;
    const T* pa = a.data;
    const T* pb = b.data;
    if (buf_a) {
      to_planes(a.data, na, plan.transform_a, a0, plan.pointwise ? p1 : pa_n, buf_a, threads);
      pa = buf_a;
    }
    if (buf_b) {
      to_planes(b.data, nb, plan.transform_b, b0, plan.pointwise ? p1 : pb_n, buf_b, threads);
      pb = buf_b;
    }
    T* pc = buf_c ? buf_c : out;
    products(plan, pa, a0, pb, b0, a, b, p0, p1, pc, threads);
    if (buf_c) from_planes(pc, nc, plan.output, p0, p1, out, p0 > 0, threads);
  }
}

}  // namespace

template <typename T>
void compose_cpu(const T* f2, const T* f1, int64_t c2, int64_t c1, int64_t c0, const Dims3& k2,
                 const Dims3& k1, Method method, int threads, T* g) {
  if (k2.size() == 1) {
    // A 1-tap outer factor: G (c2 x c0|K1|) = F2 (c2 x c1) · F1 (c1 x c0|K1|).
    gemm_cols<T>(false, c2, c0 * k1.size(), c1, f2, f1, g, threads);
    return;
  }
  const Plan& plan = get_plan(Operation::compose, method, k2, k1);
  run_plan<T>(plan, Operand<T>{f2, c2, c1}, Operand<T>{f1, c1, c0}, c2, c0, threads, g);
}

template <typename T>
void correlate_outer_cpu(const T* f2, const T* y, int64_t c2, int64_t c1, int64_t c0,
                         const Dims3& k2, const Dims3& k1, Method method, int threads, T* x) {
  if (k2.size() == 1) {
    // X (c1 x c0|k1|) = F2^T (c1 x c2) · Y (c2 x c0|k1|).
    gemm_cols<T>(true, c1, c0 * k1.size(), c2, f2, y, x, threads);
    return;
  }
  const Plan& plan = get_plan(Operation::correlate, method, k2, k1);
  run_plan<T>(plan, Operand<T>{f2, c2, c1}, Operand<T>{y, c2, c0}, c1, c0, threads, x);
}

template void compose_cpu<float>(const float*, const float*, int64_t, int64_t, int64_t,
                                 const Dims3&, const Dims3&, Method, int, float*);
template void compose_cpu<double>(const double*, const double*, int64_t, int64_t, int64_t,
                                  const Dims3&, const Dims3&, Method, int, double*);
template void correlate_outer_cpu<float>(const float*, const float*, int64_t, int64_t, int64_t,
                                         const Dims3&, const Dims3&, Method, int, float*);
template void correlate_outer_cpu<double>(const double*, const double*, int64_t, int64_t, int64_t,
                                          const Dims3&, const Dims3&, Method, int, double*);

}  // namespace netmorph
