#include "bilinear.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <tuple>

namespace netmorph {

// ---------------------------------------------------------------- Matrix

Matrix Matrix::from(int64_t rows, int64_t cols, std::vector<double> value) {
  Matrix m;
  m.rows = rows;
  m.cols = cols;
  m.value = std::move(value);
  m.value_f.assign(m.value.begin(), m.value.end());
  m.identity = rows == cols;
  for (int64_t r = 0; m.identity && r < rows; ++r)
    for (int64_t c = 0; m.identity && c < cols; ++c)
      m.identity = m.value[r * cols + c] == (r == c ? 1.0 : 0.0);
  return m;
}

Matrix Matrix::transposed() const {
  std::vector<double> t(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[c * rows + r] = value[r * cols + c];
  return from(cols, rows, std::move(t));
}

double Matrix::row_norm(int64_t r) const {
  double s = 0.0;
  for (int64_t c = 0; c < cols; ++c) s += value[r * cols + c] * value[r * cols + c];
  return std::sqrt(s);
}

template <>
const double* Matrix::data<double>() const {
  return value.data();
}
template <>
const float* Matrix::data<float>() const {
  return value_f.data();
}

int64_t Plan::products() const {
  int64_t n = 0;
  for (const auto& t : terms) n += static_cast<int64_t>(t.size());
  return n;
}

Method parse_method(const std::string& name) {
  if (name == "direct") return Method::direct;
  if (name == "toom") return Method::toom;
  if (name == "dft") return Method::dft;
  throw std::invalid_argument("method must be 'direct', 'toom' or 'dft', got '" + name + "'");
}

namespace {

// Dense row-major matrix used while building plans.
struct Dense {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<double> v;
  Dense(int64_t r, int64_t c) : rows(r), cols(c), v(r * c, 0.0) {}
  double& at(int64_t r, int64_t c) { return v[r * cols + c]; }
  double at(int64_t r, int64_t c) const { return v[r * cols + c]; }
};

Dense identity(int64_t n) {
  Dense d(n, n);
  for (int64_t i = 0; i < n; ++i) d.at(i, i) = 1.0;
  return d;
}

Dense kron3(const Dense& a, const Dense& b, const Dense& c) {
  Dense out(a.rows * b.rows * c.rows, a.cols * b.cols * c.cols);
  for (int64_t i0 = 0; i0 < a.rows; ++i0)
    for (int64_t i1 = 0; i1 < b.rows; ++i1)
      for (int64_t i2 = 0; i2 < c.rows; ++i2)
        for (int64_t j0 = 0; j0 < a.cols; ++j0)
          for (int64_t j1 = 0; j1 < b.cols; ++j1)
            for (int64_t j2 = 0; j2 < c.cols; ++j2)
              out.at((i0 * b.rows + i1) * c.rows + i2, (j0 * b.cols + j1) * c.cols + j2) =
                  a.at(i0, j0) * b.at(i1, j1) * c.at(i2, j2);
  return out;
}

Matrix to_matrix(const Dense& d) { return Matrix::from(d.rows, d.cols, d.v); }

// ------------------------------------------------------------ Toom-Cook

// Evaluation points for n products (n <= 9); kInfinity stands for the point at infinity
// (the leading coefficient). Small powers of two keep the Vandermonde system benign.
constexpr double kInfinity = HUGE_VAL;

std::vector<double> toom_points(int64_t n) {
  switch (n) {
    case 1: return {0.0};
    case 2: return {0.0, kInfinity};
    case 3: return {0.0, 1.0, -1.0};
    case 4: return {0.0, 1.0, -1.0, kInfinity};
    case 5: return {0.0, 1.0, -1.0, 2.0, -2.0};
    case 6: return {0.0, 1.0, -1.0, 2.0, -2.0, kInfinity};
    case 7: return {0.0, 1.0, -1.0, 2.0, -2.0, 0.5, kInfinity};
    case 8: return {0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, kInfinity};
    case 9: return {0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 0.25, kInfinity};
    default:
      throw std::invalid_argument(
          "the toom method supports effective kernel sizes up to 9 per dimension");
  }
}

// Rows: points; columns: polynomial coefficients 0..k-1.
Dense evaluation(const std::vector<double>& points, int64_t k) {
  Dense e(static_cast<int64_t>(points.size()), k);
  for (int64_t j = 0; j < e.rows; ++j) {
    if (points[j] == kInfinity) {
      e.at(j, k - 1) = 1.0;
      continue;
    }
    double p = 1.0;
    for (int64_t i = 0; i < k; ++i, p *= points[j]) e.at(j, i) = p;
  }
  return e;
}

// Gauss-Jordan inverse with partial pivoting in long double (n <= 9).
Dense inverse(const Dense& a) {
  const int64_t n = a.rows;
  std::vector<long double> m(n * 2 * n, 0.0L);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) m[i * 2 * n + j] = a.at(i, j);
    m[i * 2 * n + n + i] = 1.0L;
  }
  for (int64_t col = 0; col < n; ++col) {
    int64_t piv = col;
    for (int64_t r = col + 1; r < n; ++r)
      if (std::fabs(m[r * 2 * n + col]) > std::fabs(m[piv * 2 * n + col])) piv = r;
    for (int64_t j = 0; j < 2 * n; ++j) std::swap(m[col * 2 * n + j], m[piv * 2 * n + j]);
    const long double d = m[col * 2 * n + col];
    for (int64_t j = 0; j < 2 * n; ++j) m[col * 2 * n + j] /= d;
    for (int64_t r = 0; r < n; ++r) {
      if (r == col) continue;
      const long double f = m[r * 2 * n + col];
      if (f == 0.0L) continue;
      for (int64_t j = 0; j < 2 * n; ++j) m[r * 2 * n + j] -= f * m[col * 2 * n + j];
    }
  }
  Dense inv(n, n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) inv.at(i, j) = static_cast<double>(m[i * 2 * n + n + j]);
  return inv;
}

// One dimension of a compose algorithm: evaluation of both factors, interpolation.
struct Axis {
  Dense outer, inner, interp;
};

Axis toom_axis(int64_t k_outer, int64_t k_inner) {
  const int64_t n = k_outer + k_inner - 1;
  if (k_outer == 1 || k_inner == 1) {
    // A 1-tap factor only scales: n independent products, no interpolation error.
    Dense ones(n, 1);
    for (int64_t i = 0; i < n; ++i) ones.at(i, 0) = 1.0;
    return k_outer == 1 ? Axis{ones, identity(n), identity(n)}
                        : Axis{identity(n), ones, identity(n)};
  }
  const std::vector<double> pts = toom_points(n);
  return Axis{evaluation(pts, k_outer), evaluation(pts, k_inner), inverse(evaluation(pts, n))};
}

// -------------------------------------------------------------- builders

void finish(Plan& p) {
  const Matrix& o = p.output;
  double sum_sq = 0.0;
  for (int64_t t = 0; t < o.rows; ++t) {
    double v = 0.0;
    for (int64_t c = 0; c < o.cols; ++c) {
      double inner = 0.0;
      for (const Term& term : p.terms[c])
        inner += p.transform_a.row_norm(term.a) * p.transform_b.row_norm(term.b);
      v += std::fabs(o.value[t * o.cols + c]) * inner;
    }
    sum_sq += v * v;
  }
  p.amplification = std::sqrt(sum_sq / static_cast<double>(o.rows));
  p.pointwise = p.transform_a.rows == p.transform_b.rows &&
                p.transform_a.rows == static_cast<int64_t>(p.terms.size());
  for (size_t c = 0; p.pointwise && c < p.terms.size(); ++c) {
    const auto& t = p.terms[c];
    p.pointwise = t.size() == 1 && t[0].a == static_cast<int64_t>(c) &&
                  t[0].b == static_cast<int64_t>(c);
  }
}

void pointwise_terms(Plan& p, int64_t n) {
  p.terms.resize(n);
  for (int64_t i = 0; i < n; ++i) p.terms[i] = {Term{i, i}};
}

Plan compose_direct(const Dims3& k2, const Dims3& k1) {
  const Dims3 kt = full_size(k1, k2);
  Plan p;
  p.transform_a = to_matrix(identity(k2.size()));
  p.transform_b = to_matrix(identity(k1.size()));
  p.output = to_matrix(identity(kt.size()));
  p.terms.resize(kt.size());
  for (int64_t a0 = 0; a0 < k2.n[0]; ++a0)
    for (int64_t a1 = 0; a1 < k2.n[1]; ++a1)
      for (int64_t a2 = 0; a2 < k2.n[2]; ++a2)
        for (int64_t b0 = 0; b0 < k1.n[0]; ++b0)
          for (int64_t b1 = 0; b1 < k1.n[1]; ++b1)
            for (int64_t b2 = 0; b2 < k1.n[2]; ++b2)
              p.terms[kt.flat(a0 + b0, a1 + b1, a2 + b2)].push_back(
                  Term{k2.flat(a0, a1, a2), k1.flat(b0, b1, b2)});
  return p;
}

Plan compose_toom(const Dims3& k2, const Dims3& k1) {
  const Axis x = toom_axis(k2.n[0], k1.n[0]);
  const Axis y = toom_axis(k2.n[1], k1.n[1]);
  const Axis z = toom_axis(k2.n[2], k1.n[2]);
  Plan p;
  p.transform_a = to_matrix(kron3(x.outer, y.outer, z.outer));
  p.transform_b = to_matrix(kron3(x.inner, y.inner, z.inner));
  p.output = to_matrix(kron3(x.interp, y.interp, z.interp));
  pointwise_terms(p, p.transform_a.rows);
  return p;
}

double snap(long double v) { return std::fabs(v) < 1e-14L ? 0.0 : static_cast<double>(v); }

Plan compose_dft(const Dims3& k2, const Dims3& k1) {
  const Dims3 n = full_size(k1, k2);  // the DFT size: the cyclic product is the full one
  const int64_t total = n.size();
  const long double two_pi = 6.283185307179586476925286766559L;
  // Phase of frequency f at tap s of a box, in units of 2*pi/total (exact integers).
  auto phase = [&](const std::array<int64_t, 3>& f, int64_t s0, int64_t s1, int64_t s2) {
    const int64_t p = f[0] * s0 * (total / n.n[0]) + f[1] * s1 * (total / n.n[1]) +
                      f[2] * s2 * (total / n.n[2]);
    return two_pi * static_cast<long double>(p % total) / static_cast<long double>(total);
  };
  std::vector<std::array<int64_t, 3>> freqs;
  std::vector<bool> real_only;
  for (int64_t f0 = 0; f0 < n.n[0]; ++f0)
    for (int64_t f1 = 0; f1 < n.n[1]; ++f1)
      for (int64_t f2 = 0; f2 < n.n[2]; ++f2) {
        const int64_t self = n.flat(f0, f1, f2);
        const int64_t partner = n.flat((n.n[0] - f0) % n.n[0], (n.n[1] - f1) % n.n[1],
                                       (n.n[2] - f2) % n.n[2]);
        if (self > partner) continue;
        freqs.push_back({f0, f1, f2});
        real_only.push_back(self == partner);
      }
  int64_t planes = 0;
  for (bool r : real_only) planes += r ? 1 : 3;

  // Rows of a transform for a box of taps: cos, -sin and cos - sin of the phase.
  auto transform = [&](const Dims3& box) {
    Dense d(planes, box.size());
    int64_t row = 0;
    for (size_t q = 0; q < freqs.size(); ++q) {
      for (int64_t s0 = 0; s0 < box.n[0]; ++s0)
        for (int64_t s1 = 0; s1 < box.n[1]; ++s1)
          for (int64_t s2 = 0; s2 < box.n[2]; ++s2) {
            const long double th = phase(freqs[q], s0, s1, s2);
            const int64_t col = box.flat(s0, s1, s2);
            d.at(row, col) = snap(std::cos(th));
            if (!real_only[q]) {
              d.at(row + 1, col) = snap(-std::sin(th));
              d.at(row + 2, col) = snap(std::cos(th) - std::sin(th));
            }
          }
      row += real_only[q] ? 1 : 3;
    }
    return d;
  };

  // Inverse: g[t] = (1/N) Σ_k Ĝ_k e^{+iφ}; a conjugate pair contributes
  // (2/N) Re(Ĝ_k e^{iφ}) with Re Ĝ = T1 - T2 and Im Ĝ = T3 - T1 - T2.
  Dense out(n.size(), planes);
  for (int64_t t0 = 0; t0 < n.n[0]; ++t0)
    for (int64_t t1 = 0; t1 < n.n[1]; ++t1)
      for (int64_t t2 = 0; t2 < n.n[2]; ++t2) {
        const int64_t t = n.flat(t0, t1, t2);
        int64_t col = 0;
        for (size_t q = 0; q < freqs.size(); ++q) {
          const long double ph = phase(freqs[q], t0, t1, t2);
          const long double c = std::cos(ph) / total;
          const long double s = std::sin(ph) / total;
          if (real_only[q]) {
            out.at(t, col) = snap(c);
            col += 1;
          } else {
            out.at(t, col) = snap(2 * (c + s));
            out.at(t, col + 1) = snap(2 * (s - c));
            out.at(t, col + 2) = snap(-2 * s);
            col += 3;
          }
        }
      }
  Plan p;
  p.transform_a = to_matrix(transform(k2));
  p.transform_b = to_matrix(transform(k1));
  p.output = to_matrix(out);
  pointwise_terms(p, planes);
  return p;
}

Plan compose_plan(Method method, const Dims3& k2, const Dims3& k1) {
  switch (method) {
    case Method::direct: return compose_direct(k2, k1);
    case Method::toom: return compose_toom(k2, k1);
    case Method::dft: return compose_dft(k2, k1);
  }
  throw std::invalid_argument("unknown method");
}

// X = A^T Y for the compose algorithm of A: F1 -> F2 ⊛ F1 (transpose the linear part).
Plan correlate_plan(Method method, const Dims3& k2, const Dims3& k1) {
  const Plan c = compose_plan(method, k2, k1);
  Plan p;
  p.transform_a = c.transform_a;
  p.transform_b = c.output.transposed();
  p.output = c.transform_b.transposed();
  p.trans_a = true;
  p.terms.resize(c.transform_b.rows);
  for (size_t out = 0; out < c.terms.size(); ++out)
    for (const Term& t : c.terms[out]) p.terms[t.b].push_back(Term{t.a, static_cast<int64_t>(out)});
  return p;
}

}  // namespace

const Plan& get_plan(Operation op, Method method, const Dims3& k_outer, const Dims3& k_inner) {
  using Key = std::tuple<int, int, Dims3, Dims3>;
  static std::mutex lock;
  static std::map<Key, std::unique_ptr<Plan>> cache;
  const Key key{static_cast<int>(op), static_cast<int>(method), k_outer, k_inner};
  std::lock_guard<std::mutex> guard(lock);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  auto plan = std::make_unique<Plan>(op == Operation::compose
                                         ? compose_plan(method, k_outer, k_inner)
                                         : correlate_plan(method, k_outer, k_inner));
  finish(*plan);
  return *cache.emplace(key, std::move(plan)).first->second;
}

}  // namespace netmorph
