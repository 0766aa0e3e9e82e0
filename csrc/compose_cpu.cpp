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
              bool openmp) {
  const bool ta = plan.trans_a;
  const int64_t m = ta ? a.cols : a.rows;
  const int64_t k = ta ? a.rows : a.cols;
  const int64_t n = b.cols;
  if (stacks(plan, c0, c1)) {
    gemm<T>(false, false, (c1 - c0) * m, n, k, T(1), pa + (c0 - a_base) * a.size(), k,
            pb + (plan.terms[c0][0].b - b_base) * b.size(), n, T(0), pc, n);
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
#pragma omp parallel for schedule(dynamic) if (openmp && c1 - c0 > 1)
  for (int64_t c = c0; c < c1; ++c) plane(c);
}

// Whether a plan's products are small enough to run it in the OpenMP regime (planes.h).
bool use_openmp(const Plan& plan, int64_t m, int64_t n, int64_t k, int64_t planes) {
  if (stacks(plan, 0, planes)) return gemm_is_small(m * planes, n, k);
  size_t longest = 1;
  if (plan.trans_a)
    for (const auto& terms : plan.terms)
      for (size_t i = 0; i < terms.size(); i += run_length(terms, i))
        longest = std::max(longest, run_length(terms, i));
  return gemm_is_small(m, n, k * int64_t(longest));
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
  const int64_t k = plan.trans_a ? a.rows : a.cols;
  const bool openmp = threads > 1 && use_openmp(plan, out_rows, out_cols, k, pc_n);
  const CallThreads scope(threads, openmp);

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
      to_planes(a.data, na, plan.transform_a, a0, plan.pointwise ? p1 : pa_n, buf_a, openmp);
      pa = buf_a;
    }
    if (buf_b) {
      to_planes(b.data, nb, plan.transform_b, b0, plan.pointwise ? p1 : pb_n, buf_b, openmp);
      pb = buf_b;
    }
    T* pc = buf_c ? buf_c : out;
    products(plan, pa, a0, pb, b0, a, b, p0, p1, pc, openmp);
    if (buf_c) from_planes(pc, nc, plan.output, p0, p1, out, p0 > 0, openmp);
  }
}

}  // namespace

template <typename T>
void compose_cpu(const T* f2, const T* f1, int64_t c2, int64_t c1, int64_t c0, const Dims3& k2,
                 const Dims3& k1, Method method, int threads, T* g) {
  if (k2.size() == 1) {
    // A 1-tap outer factor: G (c2 x c0|K1|) = F2 (c2 x c1) · F1 (c1 x c0|K1|).
    const BlasThreads scope(threads);
    const int64_t n = c0 * k1.size();
    gemm<T>(false, false, c2, n, c1, T(1), f2, c1, f1, n, T(0), g, n);
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
    const BlasThreads scope(threads);
    const int64_t n = c0 * k1.size();
    gemm<T>(true, false, c1, n, c2, T(1), f2, c1, y, n, T(0), x, n);
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
