// Host drivers of the compiled CUDA module: each protocol routine as a sequence of launches of
// the csrc/*_cuda.cu kernels on one stream, for C-contiguous device arrays.
//
// Host-only (CUDA runtime, C++ standard library): included by bindings/cuda_module.cu alone,
// never by NVRTC. It includes the kernel sources so that the module is one translation unit.
// The transform method and its limits mirror netmorph_core/backends/cupy_backend.py.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "compose_cuda.cu"
#include "correlate_outer_cuda.cu"
#include "gemm_cuda.cu"
#include "gram_outer_cuda.cu"
#include "gram_outer_rows_cuda.cu"
#include "transform_cuda.cu"

namespace netmorph {
namespace driver {

typedef long long ll;

// Spatial extents lifted to 3 dimensions (leading ones padded with 1).
struct Extent {
  ll d = 1, h = 1, w = 1;
  ll size() const { return d * h * w; }
  ll operator[](int i) const { return i == 0 ? d : (i == 1 ? h : w); }
};

inline Extent lift(const std::vector<ll>& k) {
  if (k.size() > 3) throw std::invalid_argument("at most 3 spatial dimensions are supported");
  Extent e;
  ll* slots[3] = {&e.d, &e.h, &e.w};
  const size_t pad = 3 - k.size();
  for (size_t i = 0; i < k.size(); ++i) {
    if (k[i] < 1) throw std::invalid_argument("kernel sizes must be positive");
    *slots[pad + i] = k[i];
  }
  return e;
}

inline Extent full_size(const Extent& k1, const Extent& k2) {
  Extent t;
  t.d = k1.d + k2.d - 1;
  t.h = k1.h + k2.h - 1;
  t.w = k1.w + k2.w - 1;
  return t;
}

enum class Method { Auto, Direct, Transform };

inline Method parse_method(const std::string& name) {
  if (name == "auto") return Method::Auto;
  if (name == "direct") return Method::Direct;
  if (name == "transform") return Method::Transform;
  throw std::invalid_argument("method must be 'auto', 'direct' or 'transform', got '" + name + "'");
}

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
  }
}

inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// Stream-ordered device scratch memory, released on the same stream.
template <typename T>
class Workspace {
 public:
  Workspace(size_t count, cudaStream_t stream) : stream_(stream) {
    check(cudaMallocAsync(reinterpret_cast<void**>(&ptr_), count * sizeof(T), stream),
          "cudaMallocAsync");
  }
  ~Workspace() { cudaFreeAsync(ptr_, stream_); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  cudaStream_t stream_;
};

// The extern "C" kernels of each scalar type.
template <typename T>
struct Kernels;

#define NM_KERNEL_TABLE(T, S)                                        \
  template <>                                                        \
  struct Kernels<T> {                                                \
    static constexpr auto to_points = nm_to_points_##S;              \
    static constexpr auto from_points = nm_from_points_##S;          \
    static constexpr auto gemm = nm_gemm_##S;                        \
    static constexpr auto compose_shift_add = nm_compose_shift_add_##S; \
    static constexpr auto correlate_gather = nm_correlate_gather_##S;   \
    static constexpr auto gram_assemble = nm_gram_assemble_##S;         \
    static constexpr auto gram_rows_assemble = nm_gram_rows_assemble_##S; \
  };
NM_FOR_EACH_DTYPE(NM_KERNEL_TABLE)
#undef NM_KERNEL_TABLE

constexpr int kThreads = 256;
constexpr size_t kSharedBytes = 48 * 1024;

// Grid of an element-wise kernel writing a rows × cols output (common_cuda.cuh).
inline dim3 elementwise_grid(ll rows, ll cols) {
  if (rows >= (1LL << 31) || cols >= (1LL << 31)) {
    throw std::invalid_argument("output too large for one launch");
  }
  return dim3(static_cast<unsigned>((cols + kThreads - 1) / kThreads),
              static_cast<unsigned>(rows < 65535 ? rows : 65535));
}

// ---------------------------------------------------------------- transform-domain matrices

// Evaluation points per transform size Kt: well conditioned up to Kt = 5 in float32 and 7 in
// float64 (norm-relative error about 1e-6 and 1e-14). A NaN stands for the point at infinity.
inline std::vector<double> toom_points(ll kt) {
  const double inf = NAN;
  switch (kt) {
    case 1: return {0.0};
    case 2: return {0.0, inf};
    case 3: return {0.0, 1.0, -1.0};
    case 4: return {0.0, 1.0, -1.0, inf};
    case 5: return {0.0, 1.0, -1.0, 2.0, -2.0};
    case 6: return {0.0, 1.0, -1.0, 2.0, -2.0, inf};
    case 7: return {0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5};
    default: throw std::invalid_argument("no transform for an effective kernel size above 7");
  }
}

template <typename T>
constexpr ll transform_limit() {
  return sizeof(T) == sizeof(float) ? 5 : 7;
}

// E (P × K): row p evaluates a polynomial of K coefficients at point p.
inline std::vector<double> evaluation(const std::vector<double>& points, ll k) {
  const ll np = static_cast<ll>(points.size());
  std::vector<double> e(np * k, 0.0);
  for (ll p = 0; p < np; ++p) {
    if (std::isnan(points[p])) {
      e[p * k + k - 1] = 1.0;
      continue;
    }
    double v = 1.0;
    for (ll s = 0; s < k; ++s, v *= points[p]) e[p * k + s] = v;
  }
  return e;
}

// The inverse of a square matrix by Gauss-Jordan elimination with partial pivoting.
inline std::vector<double> inverse(std::vector<double> a, ll n) {
  std::vector<double> inv(n * n, 0.0);
  for (ll i = 0; i < n; ++i) inv[i * n + i] = 1.0;
  for (ll col = 0; col < n; ++col) {
    ll pivot = col;
    for (ll r = col + 1; r < n; ++r) {
      if (std::fabs(a[r * n + col]) > std::fabs(a[pivot * n + col])) pivot = r;
    }
    for (ll c = 0; c < n; ++c) {
      std::swap(a[col * n + c], a[pivot * n + c]);
      std::swap(inv[col * n + c], inv[pivot * n + c]);
    }
    const double scale = 1.0 / a[col * n + col];
    for (ll c = 0; c < n; ++c) {
      a[col * n + c] *= scale;
      inv[col * n + c] *= scale;
    }
    for (ll r = 0; r < n; ++r) {
      if (r == col) continue;
      const double f = a[r * n + col];
      for (ll c = 0; c < n; ++c) {
        a[r * n + c] -= f * a[col * n + c];
        inv[r * n + c] -= f * inv[col * n + c];
      }
    }
  }
  return inv;
}

inline std::vector<double> transposed(const std::vector<double>& a, ll rows, ll cols) {
  std::vector<double> t(a.size());
  for (ll r = 0; r < rows; ++r) {
    for (ll c = 0; c < cols; ++c) t[c * rows + r] = a[r * cols + c];
  }
  return t;
}

// Per dimension: V1 (Kt × K1), V2 (Kt × K2) evaluate F1 and F2; W (Kt × Kt) interpolates.
struct ToomDim {
  std::vector<double> v1, v2, w;
};

inline ToomDim toom_dim(ll k1, ll k2) {
  const ll kt = k1 + k2 - 1;
  const std::vector<double> points = toom_points(kt);
  return {evaluation(points, k1), evaluation(points, k2), inverse(evaluation(points, kt), kt)};
}

template <typename T>
bool transform_applies(const Extent& k2, const Extent& k1) {
  const Extent kt = full_size(k1, k2);
  for (int i = 0; i < 3; ++i) {
    if (kt[i] > transform_limit<T>()) return false;
  }
  return kt.size() < k1.size() * k2.size();
}

template <typename T>
bool use_transform(Method method, const Extent& k2, const Extent& k1) {
  if (method == Method::Direct) return false;
  const bool applies = transform_applies<T>(k2, k1);
  if (method == Method::Transform) {
    const Extent kt = full_size(k1, k2);
    for (int i = 0; i < 3; ++i) {
      if (kt[i] > transform_limit<T>()) {
        throw std::invalid_argument("the transform method supports effective kernel sizes up to " +
                                    std::to_string(transform_limit<T>()) + " for this dtype");
      }
    }
    return true;
  }
  return applies;
}

// The Kronecker product a ⊗ b of a (ra × ca) and b (rb × cb), row-major.
inline std::vector<double> kron(const std::vector<double>& a, ll ra, ll ca,
                                const std::vector<double>& b, ll rb, ll cb) {
  std::vector<double> out(ra * rb * ca * cb);
  for (ll i = 0; i < ra; ++i) {
    for (ll k = 0; k < rb; ++k) {
      for (ll j = 0; j < ca; ++j) {
        for (ll l = 0; l < cb; ++l) {
          out[((i * rb + k) * ca + j) * cb + l] = a[i * ca + j] * b[k * cb + l];
        }
      }
    }
  }
  return out;
}

// A dense row-major matrix.
struct DenseMatrix {
  std::vector<double> values;
  ll rows, cols;
};

// V1 (|Kt| × |K1|), V2 (|Kt| × |K2|), W (|Kt| × |Kt|): the Kronecker products over (d, h, w).
struct Toom {
  DenseMatrix v1, v2, w;
};

inline Toom toom(const Extent& k1, const Extent& k2) {
  Toom t{{{1.0}, 1, 1}, {{1.0}, 1, 1}, {{1.0}, 1, 1}};
  for (int i = 0; i < 3; ++i) {
    const ll a = k1[i], b = k2[i], n = a + b - 1;
    const ToomDim d = toom_dim(a, b);
    t.v1 = {kron(t.v1.values, t.v1.rows, t.v1.cols, d.v1, n, a), t.v1.rows * n, t.v1.cols * a};
    t.v2 = {kron(t.v2.values, t.v2.rows, t.v2.cols, d.v2, n, b), t.v2.rows * n, t.v2.cols * b};
    t.w = {kron(t.w.values, t.w.rows, t.w.cols, d.w, n, n), t.w.rows * n, t.w.cols * n};
  }
  return t;
}

inline DenseMatrix transposed(const DenseMatrix& m) {
  return {transposed(m.values, m.rows, m.cols), m.cols, m.rows};
}

// Matrices converted to T and copied to one device buffer.
template <typename T>
class DeviceMatrices {
 public:
  DeviceMatrices(const std::vector<DenseMatrix>& mats, cudaStream_t stream)
      : offsets_(mats.size()), ws_(total(mats), stream) {
    std::vector<T> host;
    for (size_t i = 0; i < mats.size(); ++i) {
      offsets_[i] = host.size();
      for (double v : mats[i].values) host.push_back(static_cast<T>(v));
    }
    // Pageable source: the call returns once the data is staged, so `host` may go.
    check(cudaMemcpyAsync(ws_.get(), host.data(), host.size() * sizeof(T),
                          cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync");
  }
  const T* operator[](size_t i) const { return ws_.get() + offsets_[i]; }

 private:
  static size_t total(const std::vector<DenseMatrix>& mats) {
    size_t n = 0;
    for (const auto& m : mats) n += m.values.size();
    return n;
  }
  std::vector<size_t> offsets_;
  Workspace<T> ws_;
};

// y (P, nb) = M · xᵀ for x (nb, K), M (P × K) on the device.
template <typename T>
void to_points(const T* x, T* y, ll nb, int k, int np, const T* m, cudaStream_t stream) {
  const int ks = k | 1;
  int tile = static_cast<int>(kSharedBytes / (ks * sizeof(T)));
  tile = tile < 32 ? (tile < 1 ? 1 : tile) : 32;
  const ll blocks = (nb + tile - 1) / tile;
  Kernels<T>::to_points<<<static_cast<unsigned>(blocks), kThreads, tile * ks * sizeof(T),
                          stream>>>(x, y, nb, k, np, m, tile);
  check_launch("nm_to_points");
}

// g (nb, T) with g[b, t] = Σ_p Mt[p, t] q[p, b], for q (P, nb) and Mt (P × T) on the device.
template <typename T>
void from_points(const T* q, T* g, ll nb, int np, int nt, const T* mt, cudaStream_t stream) {
  int tile = static_cast<int>(kSharedBytes / (np * sizeof(T))) / 4 * 4;
  tile = tile < 32 ? tile : 32;
  if (tile < 4) throw std::invalid_argument("too many transform points for shared memory");
  const ll blocks = (nb + tile - 1) / tile;
  Kernels<T>::from_points<<<static_cast<unsigned>(blocks), kThreads, np * tile * sizeof(T),
                            stream>>>(q, g, nb, np, nt, mt, tile);
  check_launch("nm_from_points");
}

// C[b] = A[b] · B[b] with element strides (row, column, batch) for each operand.
struct Strides {
  ll r, c, b;
};

template <typename T>
void gemm(const T* a, Strides sa, const T* b, Strides sb, T* c, Strides sc, ll m, ll n, ll k,
          ll batches, cudaStream_t stream) {
  const ll gy = (m + kGemmTile - 1) / kGemmTile;
  if (gy > 65535 || batches > 65535) throw std::invalid_argument("GEMM too large for one launch");
  const dim3 grid(static_cast<unsigned>((n + kGemmTile - 1) / kGemmTile),
                  static_cast<unsigned>(gy), static_cast<unsigned>(batches));
  Kernels<T>::gemm<<<grid, kGemmThreads, 0, stream>>>(a, b, c, m, n, k, sa.r, sa.c, sa.b, sb.r,
                                                      sb.c, sb.b, sc.r, sc.c, sc.b);
  check_launch("nm_gemm");
}

// ---------------------------------------------------------------- the protocol routines

// G (C2, C0, *Kt) = F2 (C2, C1, *K2) ⊛ F1 (C1, C0, *K1).
template <typename T>
void compose(const T* f2, const T* f1, T* g, ll c2, ll c1, ll c0, const Extent& k2,
             const Extent& k1, Method method, cudaStream_t stream) {
  const Extent kt = full_size(k1, k2);
  const ll n1 = k1.size(), n2 = k2.size(), nt = kt.size();
  if (use_transform<T>(method, k2, k1)) {
    const Toom t = toom(k1, k2);
    const DeviceMatrices<T> mats({t.v1, t.v2, transposed(t.w)}, stream);
    const int np = static_cast<int>(nt);
    Workspace<T> t1(nt * c1 * c0, stream), t2(nt * c2 * c1, stream), q(nt * c2 * c0, stream);
    to_points<T>(f1, t1.get(), c1 * c0, static_cast<int>(n1), np, mats[0], stream);
    to_points<T>(f2, t2.get(), c2 * c1, static_cast<int>(n2), np, mats[1], stream);
    gemm<T>(t2.get(), {c1, 1, c2 * c1}, t1.get(), {c0, 1, c1 * c0}, q.get(), {c0, 1, c2 * c0},
            c2, c0, c1, nt, stream);
    from_points<T>(q.get(), g, c2 * c0, np, np, mats[2], stream);
    return;
  }
  // P[o, u, i, s] = Σ_m F2[o, m, u] F1[m, i, s]: one GEMM per tap u of F2.
  const Strides sa{c1 * n2, n2, 1}, sb{c0 * n1, 1, 0};
  if (n2 == 1) {
    gemm<T>(f2, sa, f1, sb, g, {c0 * n1, 1, 0}, c2, c0 * n1, c1, 1, stream);
    return;
  }
  Workspace<T> p(c2 * n2 * c0 * n1, stream);
  gemm<T>(f2, sa, f1, sb, p.get(), {n2 * c0 * n1, 1, c0 * n1}, c2, c0 * n1, c1, n2, stream);
  Kernels<T>::compose_shift_add<<<elementwise_grid(c2, c0 * nt), kThreads, 0, stream>>>(
      p.get(), g, c2, c0, k2.d, k2.h, k2.w, k1.d, k1.h, k1.w);
  check_launch("nm_compose_shift_add");
}

// X (C1, C0, *K1) = Aᵀ·Y for Y (C2, C0, *Kt): X[m, i, s] = Σ_{o, t} F2[o, m, t - s] Y[o, i, t].
template <typename T>
void correlate_outer(const T* f2, const T* y, T* x, ll c2, ll c1, ll c0, const Extent& k2,
                     const Extent& k1, Method method, cudaStream_t stream) {
  const Extent kt = full_size(k1, k2);
  const ll n1 = k1.size(), n2 = k2.size(), nt = kt.size();
  if (use_transform<T>(method, k2, k1)) {
    // The transpose of compose's transform method: Wᵀ on Y, V2 on F2, V1ᵀ back.
    const Toom t = toom(k1, k2);
    const DeviceMatrices<T> mats({transposed(t.w), t.v2, t.v1}, stream);
    const int np = static_cast<int>(nt);
    Workspace<T> ty(nt * c2 * c0, stream), t2(nt * c2 * c1, stream), q(nt * c1 * c0, stream);
    to_points<T>(y, ty.get(), c2 * c0, np, np, mats[0], stream);
    to_points<T>(f2, t2.get(), c2 * c1, static_cast<int>(n2), np, mats[1], stream);
    gemm<T>(t2.get(), {1, c1, c2 * c1}, ty.get(), {c0, 1, c2 * c0}, q.get(), {c0, 1, c1 * c0},
            c1, c0, c2, nt, stream);
    from_points<T>(q.get(), x, c1 * c0, np, static_cast<int>(n1), mats[2], stream);
    return;
  }
  // P[m, u, i, t] = Σ_o F2[o, m, u] Y[o, i, t]: one GEMM per tap u of F2.
  const Strides sa{n2, c1 * n2, 1}, sb{c0 * nt, 1, 0};
  if (n2 == 1) {
    gemm<T>(f2, sa, y, sb, x, {c0 * nt, 1, 0}, c1, c0 * nt, c2, 1, stream);
    return;
  }
  Workspace<T> p(c1 * n2 * c0 * nt, stream);
  gemm<T>(f2, sa, y, sb, p.get(), {n2 * c0 * nt, 1, c0 * nt}, c1, c0 * nt, c2, n2, stream);
  Kernels<T>::correlate_gather<<<elementwise_grid(c1, c0 * n1), kThreads, 0, stream>>>(
      p.get(), x, c1, c0, k2.d, k2.h, k2.w, k1.d, k1.h, k1.w);
  check_launch("nm_correlate_gather");
}

// M (C1·|K1|, C1·|K1|) = AᵀA.
template <typename T>
void gram_outer(const T* f2, T* out, ll c2, ll c1, const Extent& k2, const Extent& k1,
                cudaStream_t stream) {
  const ll n2 = k2.size(), n1 = k1.size(), w = c1 * n2;
  Workspace<T> z(w * w, stream);
  gemm<T>(f2, {1, w, 0}, f2, {w, 1, 0}, z.get(), {w, 1, 0}, w, w, c2, 1, stream);
  Kernels<T>::gram_assemble<<<elementwise_grid(c1 * n1, c1 * n1), kThreads, 0, stream>>>(
      z.get(), out, c1, k2.d, k2.h, k2.w, k1.d, k1.h, k1.w);
  check_launch("nm_gram_assemble");
}

// N (C2·|Kt|, C2·|Kt|) = A·Aᵀ.
template <typename T>
void gram_outer_rows(const T* f2, T* out, ll c2, ll c1, const Extent& k2, const Extent& k1,
                     cudaStream_t stream) {
  const ll n2 = k2.size(), nt = full_size(k1, k2).size();
  Workspace<T> z(c2 * n2 * c2 * n2, stream);
  // Z[o, u, o', u'] = Σ_m F2[o, m, u] F2[o', m, u']: for each u, one GEMM per u'.
  for (ll u = 0; u < n2; ++u) {
    gemm<T>(f2 + u, {c1 * n2, n2, 0}, f2, {n2, c1 * n2, 1}, z.get() + u * c2 * n2,
            {n2 * c2 * n2, n2, 1}, c2, c2, c1, n2, stream);
  }
  Kernels<T>::gram_rows_assemble<<<elementwise_grid(c2 * nt, c2 * nt), kThreads, 0, stream>>>(
      z.get(), out, c2, k2.d, k2.h, k2.w, k1.d, k1.h, k1.w);
  check_launch("nm_gram_rows_assemble");
}

}  // namespace driver
}  // namespace netmorph
