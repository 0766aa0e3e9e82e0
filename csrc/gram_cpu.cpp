#include "gram_cpu.h"

#include <algorithm>
#include <vector>

#include "blas.h"
#include "planes.h"
#include "workspace.h"

namespace netmorph {
namespace {

// A GEMM accumulated into a block: block += op(A) op(B)^T-style operands set by the caller.
struct Gemm {
  int64_t a_offset;
  int64_t b_offset;
  int64_t k;
};

// Run each block's product list (first product overwrites, the rest accumulate); blocks with
// no product are zeroed. In the OpenMP regime (planes.h) blocks are spread over threads,
// otherwise the BLAS threads work on one product at a time.
template <typename T, typename Call>
void run_blocks(const std::vector<std::vector<Gemm>>& jobs, const std::vector<int64_t>& targets,
                int64_t block_size, bool openmp, T* blocks, Call call) {
  const int64_t count = static_cast<int64_t>(jobs.size());
  auto one = [&](int64_t j) {
    T* dst = blocks + targets[j] * block_size;
    if (jobs[j].empty()) {
      std::fill(dst, dst + block_size, T(0));
      return;
    }
    bool first = true;
    for (const Gemm& g : jobs[j]) {
      call(g, first ? T(0) : T(1), dst);
      first = false;
    }
  };
#pragma omp parallel for schedule(dynamic) if (openmp && count > 1)
  for (int64_t j = 0; j < count; ++j) one(j);
}

// a[i, j] = a[j, i] for j < i (n x n, leading dimension ld): the lower triangle becomes the
// mirror of the upper one, so a product that is symmetric in exact arithmetic (Σ BᵀB) is
// symmetric bit for bit, whatever order the BLAS kernel summed (i, j) and (j, i) in.
template <typename T>
void mirror_upper(T* a, int64_t n, int64_t ld) {
  constexpr int64_t kTile = 64;
  for (int64_t i0 = 0; i0 < n; i0 += kTile)
    for (int64_t j0 = 0; j0 <= i0; j0 += kTile)
      for (int64_t i = i0; i < std::min(n, i0 + kTile); ++i)
        for (int64_t j = j0; j < std::min(i, j0 + kTile); ++j) a[i * ld + j] = a[j * ld + i];
}

}  // namespace

template <typename T>
void gram_outer_cpu(const T* f2, int64_t c2, int64_t c1, const Dims3& k2, const Dims3& k1, T* m) {
  const int64_t s2 = k2.size();
  const int64_t s1 = k1.size();
  const int64_t plane = c2 * c1;
  Dims3 lags;  // δ_d + k1_d - 1 in [0, 2 k1_d - 1)
  for (int d = 0; d < 3; ++d) lags.n[d] = 2 * k1.n[d] - 1;
  const int64_t nl = lags.size();
  const int64_t center = (nl - 1) / 2;
  const int64_t cc = c1 * c1;
  const bool openmp = gemm_is_small(c1, c1, c2 * k2.n[2]);
  T* planes = workspace<T>(s2 * plane + nl * cc);  // planes[u] = F2[:, :, u] (c2 x c1)
  T* r = planes + s2 * plane;                       // R(δ) (c1 x c1) per lag
  transpose(f2, 1, plane, s2, s2, planes, plane, false, openmp);

  // R(δ) = Σ_u planes[u]^T planes[u + δ] for δ >= 0 (flat order); w-runs of u stack along k.
  std::vector<std::vector<Gemm>> jobs;
  std::vector<int64_t> targets;
  for (int64_t l = center; l < nl; ++l) {
    const int64_t d0 = l / (lags.n[1] * lags.n[2]) - (k1.n[0] - 1);
    const int64_t d1 = (l / lags.n[2]) % lags.n[1] - (k1.n[1] - 1);
    const int64_t d2 = l % lags.n[2] - (k1.n[2] - 1);
    std::vector<Gemm> list;
    const int64_t lo = std::max<int64_t>(0, -d2);
    const int64_t hi = std::min(k2.n[2], k2.n[2] - d2);
    for (int64_t u0 = std::max<int64_t>(0, -d0); u0 < std::min(k2.n[0], k2.n[0] - d0); ++u0)
      for (int64_t u1 = std::max<int64_t>(0, -d1); u1 < std::min(k2.n[1], k2.n[1] - d1); ++u1)
        if (hi > lo)
          list.push_back(Gemm{k2.flat(u0, u1, lo) * plane,
                              k2.flat(u0 + d0, u1 + d1, lo + d2) * plane, (hi - lo) * c2});
    jobs.push_back(std::move(list));
    targets.push_back(l);
  }
  run_blocks<T>(jobs, targets, cc, openmp, r,
                [&](const Gemm& g, T beta, T* dst) {
                  gemm<T>(true, false, c1, c1, g.k, T(1), planes + g.a_offset, c1,
                          planes + g.b_offset, c1, beta, dst, c1);
                });
  // R(0) = R(0)^T and R(-δ) = R(δ)^T hold bit for bit: one triangle of R(0) and one lag of
  // each pair ±δ are computed, the rest copied. Mirroring every lag coordinate maps flat index
  // l to nl - 1 - l.
  mirror_upper(r + center * cc, c1, c1);
  for (int64_t l = center + 1; l < nl; ++l)
    transpose(r + l * cc, 1, c1, c1, c1, r + (nl - 1 - l) * cc, c1, false, openmp);

  // M[(m, s), (m', s')] = R(s - s')[m, m'].
  std::vector<int64_t> lag_of(s1 * s1);
  for (int64_t a = 0; a < s1; ++a)
    for (int64_t b = 0; b < s1; ++b) {
      const int64_t a0 = a / (k1.n[1] * k1.n[2]), a1 = (a / k1.n[2]) % k1.n[1], a2 = a % k1.n[2];
      const int64_t b0 = b / (k1.n[1] * k1.n[2]), b1 = (b / k1.n[2]) % k1.n[1], b2 = b % k1.n[2];
      lag_of[a * s1 + b] =
          lags.flat(a0 - b0 + k1.n[0] - 1, a1 - b1 + k1.n[1] - 1, a2 - b2 + k1.n[2] - 1);
    }
  const int64_t width = c1 * s1;
#pragma omp parallel for schedule(static) if (openmp && width * width > 32768)
  for (int64_t i = 0; i < c1; ++i)
    for (int64_t s = 0; s < s1; ++s) {
      T* row = m + (i * s1 + s) * width;
      const int64_t* lag = lag_of.data() + s * s1;
      for (int64_t j = 0; j < c1; ++j)
        for (int64_t t = 0; t < s1; ++t) row[j * s1 + t] = r[lag[t] * cc + i * c1 + j];
    }
}

template <typename T>
void gram_outer_rows_cpu(const T* f2, int64_t c2, int64_t c1, const Dims3& k2, const Dims3& k1,
                         T* n) {
  const Dims3 kt = full_size(k1, k2);
  const int64_t s2 = k2.size();
  const int64_t nt = kt.size();
  const int64_t ld = s2 * c1;
  const int64_t cc = c2 * c2;
  const bool openmp = gemm_is_small(c2, c2, c1 * k1.n[2]);
  T* f2q = workspace<T>(c2 * ld + nt * nt * cc);  // F2q[o][u][m] = F2[o][m][u]
  T* blocks = f2q + c2 * ld;                      // N_{t,t'} (c2 x c2) per pair
  transpose(f2, c2, c1, s2, s2, f2q, c1, false, openmp);
  // N_{t,t'} = Σ_{s ∈ k1, t-s ∈ K2, t'-s ∈ K2} F2_{t-s} F2_{t'-s}^T; a w-run of s is one
  // product with k = run * c1 (u = t - s then runs over consecutive columns of F2q).
  std::vector<std::vector<Gemm>> jobs;
  std::vector<int64_t> targets;
  for (int64_t t = 0; t < nt; ++t) {
    const int64_t t0 = t / (kt.n[1] * kt.n[2]), t1 = (t / kt.n[2]) % kt.n[1], t2 = t % kt.n[2];
    for (int64_t v = t; v < nt; ++v) {
      const int64_t v0 = v / (kt.n[1] * kt.n[2]), v1 = (v / kt.n[2]) % kt.n[1], v2 = v % kt.n[2];
      std::vector<Gemm> list;
      const int64_t lo = std::max({int64_t(0), t2 - k2.n[2] + 1, v2 - k2.n[2] + 1});
      const int64_t hi = std::min({k1.n[2] - 1, t2, v2});
      for (int64_t s0 = 0; s0 < k1.n[0]; ++s0) {
        if (t0 - s0 < 0 || t0 - s0 >= k2.n[0] || v0 - s0 < 0 || v0 - s0 >= k2.n[0]) continue;
        for (int64_t s1 = 0; s1 < k1.n[1]; ++s1) {
          if (t1 - s1 < 0 || t1 - s1 >= k2.n[1] || v1 - s1 < 0 || v1 - s1 >= k2.n[1]) continue;
          if (hi >= lo)
            list.push_back(Gemm{k2.flat(t0 - s0, t1 - s1, t2 - hi) * c1,
                                k2.flat(v0 - s0, v1 - s1, v2 - hi) * c1, (hi - lo + 1) * c1});
        }
      }
      jobs.push_back(std::move(list));
      targets.push_back(t * nt + v);
    }
  }
  run_blocks<T>(jobs, targets, cc, openmp, blocks,
                [&](const Gemm& g, T beta, T* dst) {
                  gemm<T>(false, true, c2, c2, g.k, T(1), f2q + g.a_offset, ld, f2q + g.b_offset,
                          ld, beta, dst, c2);
                });
  // N_{t,t} = N_{t,t}^T and N_{t',t} = N_{t,t'}^T hold bit for bit (copies, not recomputed).
  for (int64_t t = 0; t < nt; ++t) mirror_upper(blocks + (t * nt + t) * cc, c2, c2);
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t v = 0; v < t; ++v)
      transpose(blocks + (v * nt + t) * cc, 1, c2, c2, c2, blocks + (t * nt + v) * cc, c2, false,
                openmp);

  // N[(o, t), (o', t')] = N_{t,t'}[o, o'].
  const int64_t width = c2 * nt;
#pragma omp parallel for schedule(static) if (openmp && width * width > 32768)
  for (int64_t o = 0; o < c2; ++o)
    for (int64_t t = 0; t < nt; ++t) {
      T* row = n + (o * nt + t) * width;
      const T* blk = blocks + t * nt * cc + o * c2;
      for (int64_t p = 0; p < c2; ++p)
        for (int64_t v = 0; v < nt; ++v) row[p * nt + v] = blk[v * cc + p];
    }
}

template void gram_outer_cpu<float>(const float*, int64_t, int64_t, const Dims3&, const Dims3&,
                                    float*);
template void gram_outer_cpu<double>(const double*, int64_t, int64_t, const Dims3&, const Dims3&,
                                     double*);
template void gram_outer_rows_cpu<float>(const float*, int64_t, int64_t, const Dims3&,
                                         const Dims3&, float*);
template void gram_outer_rows_cpu<double>(const double*, int64_t, int64_t, const Dims3&,
                                          const Dims3&, double*);

}  // namespace netmorph
