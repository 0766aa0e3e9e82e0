// pybind11 module netmorph_core._native: thin wrappers over the CPU kernels in csrc/.
//
// Inputs are validated in Python (netmorph_core/backends/native.py); the checks here only
// guard memory safety, except compose_in_range's finiteness and exponent check. Any array layout is accepted: non-contiguous or non-native-byte-order
// inputs are copied to C-contiguous buffers, so the caller's arrays are never modified.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bilinear.h"
#include "blas.h"
#include "compose_cpu.h"
#include "gram_cpu.h"
#include "magnitude.h"
#include "shape.h"
#include "workspace.h"

namespace py = pybind11;
using netmorph::Dims3;

namespace {

template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

enum class Real { f32, f64 };

Real real_type(const py::array& a, const char* name) {
  const py::dtype dt = a.dtype();
  if (dt.kind() == 'f' && dt.itemsize() == 4) return Real::f32;
  if (dt.kind() == 'f' && dt.itemsize() == 8) return Real::f64;
  throw py::type_error(std::string(name) + " must be float32 or float64");
}

void check_filter(const py::array& a, const char* name) {
  if (a.ndim() < 2 || a.ndim() > 5)
    throw py::value_error(std::string(name) + " must have 2 to 5 dimensions (C_out, C_in, *K)");
  for (py::ssize_t i = 0; i < a.ndim(); ++i)
    if (a.shape(i) < 1) throw py::value_error(std::string(name) + " has an empty dimension");
}

std::vector<int64_t> spatial(const py::array& a) {
  std::vector<int64_t> k;
  for (py::ssize_t i = 2; i < a.ndim(); ++i) k.push_back(a.shape(i));
  return k;
}

std::vector<py::ssize_t> filter_shape(int64_t c_out, int64_t c_in, const std::vector<int64_t>& k) {
  std::vector<py::ssize_t> s{c_out, c_in};
  for (int64_t v : k) s.push_back(v);
  return s;
}

template <typename T>
carray<T> contiguous(const py::array& a) {
  auto c = carray<T>::ensure(a);
  if (!c) throw py::error_already_set();
  return c;
}

// Per-dimension sizes of a kernel-size argument, one per spatial dimension of `like`.
std::vector<int64_t> kernel_arg(const std::vector<int64_t>& k, const py::array& like,
                                const char* name) {
  if (static_cast<py::ssize_t>(k.size()) != like.ndim() - 2)
    throw py::value_error(std::string(name) + " must give one size per spatial dimension");
  for (int64_t v : k)
    if (v < 1) throw py::value_error(std::string(name) + " must be positive");
  return k;
}

int check_threads(int threads) {
  if (threads < 1) throw py::value_error("threads must be a positive int");
  return threads;
}

template <typename T>
py::array compose_t(const py::array& f2_in, const py::array& f1_in, netmorph::Method method,
                    int threads) {
  const carray<T> f2 = contiguous<T>(f2_in);
  const carray<T> f1 = contiguous<T>(f1_in);
  const int64_t c2 = f2.shape(0), c1 = f2.shape(1), c0 = f1.shape(1);
  const std::vector<int64_t> k2 = spatial(f2), k1 = spatial(f1);
  std::vector<int64_t> kt(k1.size());
  for (size_t d = 0; d < k1.size(); ++d) kt[d] = k1[d] + k2[d] - 1;
  py::array_t<T> g(filter_shape(c2, c0, kt));
  T* out = g.mutable_data();
  {
    py::gil_scoped_release release;
    netmorph::compose_cpu<T>(f2.data(), f1.data(), c2, c1, c0, Dims3::from(k2), Dims3::from(k1),
                             method, threads, out);
  }
  return std::move(g);
}

py::array compose(const py::array& f2, const py::array& f1, const std::string& method,
                  int threads) {
  check_filter(f2, "f2");
  check_filter(f1, "f1");
  if (f2.ndim() != f1.ndim()) throw py::value_error("f2 and f1 must have the same ndim");
  if (f2.shape(1) != f1.shape(0))
    throw py::value_error("f2.shape[1] must equal f1.shape[0] (the shared channels)");
  const Real r = real_type(f2, "f2");
  if (real_type(f1, "f1") != r) throw py::type_error("f2 and f1 must have the same dtype");
  const netmorph::Method m = netmorph::parse_method(method);
  const int t = check_threads(threads);
  return r == Real::f32 ? compose_t<float>(f2, f1, m, t) : compose_t<double>(f2, f1, m, t);
}

// G = F2 ⊛ F1 as `compose`, when both inputs are finite and the binary exponent e of each
// one's largest magnitude (frexp) satisfies |e| <= max_exponent: then G is exactly the
// power-of-two-normalised problem's answer, scaled (netmorph_core/_scaling.py). None, without
// running the kernel, when an exponent lies outside (the caller scales the inputs); ValueError
// "F2 contains NaN or Inf" (then the same for F1) otherwise. One pass over each input's bits
// (magnitude.h) precedes the kernel, with the GIL released once for both.
template <typename T>
py::object compose_in_range_t(const py::array& f2_in, const py::array& f1_in,
                              netmorph::Method method, int threads, int max_exponent) {
  const carray<T> f2 = contiguous<T>(f2_in);
  const carray<T> f1 = contiguous<T>(f1_in);
  const int64_t c2 = f2.shape(0), c1 = f2.shape(1), c0 = f1.shape(1);
  const std::vector<int64_t> k2 = spatial(f2), k1 = spatial(f1);
  std::vector<int64_t> kt(k1.size());
  for (size_t d = 0; d < k1.size(); ++d) kt[d] = k1[d] + k2[d] - 1;
  py::array_t<T> g(filter_shape(c2, c0, kt));
  T* out = g.mutable_data();
  const auto inf = netmorph::infinity_bits(T());
  bool finite2 = false, finite1 = false, in_range = false;
  {
    py::gil_scoped_release release;
    const auto b2 = netmorph::max_magnitude_bits(f2.data(), f2.size());
    const auto b1 = netmorph::max_magnitude_bits(f1.data(), f1.size());
    finite2 = b2 < inf;
    finite1 = b1 < inf;
    if (finite2 && finite1) {
      const int e2 = netmorph::magnitude_exponent<T>(b2), e1 = netmorph::magnitude_exponent<T>(b1);
      in_range = std::abs(e2) <= max_exponent && std::abs(e1) <= max_exponent;
      if (in_range)
        netmorph::compose_cpu<T>(f2.data(), f1.data(), c2, c1, c0, Dims3::from(k2),
                                 Dims3::from(k1), method, threads, out);
    }
  }
  if (!finite2) throw py::value_error("F2 contains NaN or Inf");
  if (!finite1) throw py::value_error("F1 contains NaN or Inf");
  if (!in_range) return py::none();
  return std::move(g);
}

py::object compose_in_range(const py::array& f2, const py::array& f1, const std::string& method,
                            int threads, int max_exponent) {
  check_filter(f2, "f2");
  check_filter(f1, "f1");
  if (f2.ndim() != f1.ndim()) throw py::value_error("f2 and f1 must have the same ndim");
  if (f2.shape(1) != f1.shape(0))
    throw py::value_error("f2.shape[1] must equal f1.shape[0] (the shared channels)");
  const Real r = real_type(f2, "f2");
  if (real_type(f1, "f1") != r) throw py::type_error("f2 and f1 must have the same dtype");
  const netmorph::Method m = netmorph::parse_method(method);
  const int t = check_threads(threads);
  if (max_exponent < 0) throw py::value_error("max_exponent must be non-negative");
  return r == Real::f32 ? compose_in_range_t<float>(f2, f1, m, t, max_exponent)
                        : compose_in_range_t<double>(f2, f1, m, t, max_exponent);
}

template <typename T>
py::array correlate_t(const py::array& f2_in, const py::array& y_in, const std::vector<int64_t>& k1,
                      netmorph::Method method, int threads) {
  const carray<T> f2 = contiguous<T>(f2_in);
  const carray<T> y = contiguous<T>(y_in);
  const int64_t c2 = f2.shape(0), c1 = f2.shape(1), c0 = y.shape(1);
  py::array_t<T> x(filter_shape(c1, c0, k1));
  T* out = x.mutable_data();
  {
    py::gil_scoped_release release;
    netmorph::correlate_outer_cpu<T>(f2.data(), y.data(), c2, c1, c0, Dims3::from(spatial(f2)),
                                     Dims3::from(k1), method, threads, out);
  }
  return std::move(x);
}

py::array correlate_outer(const py::array& f2, const py::array& y, const std::vector<int64_t>& k1,
                          const std::string& method, int threads) {
  check_filter(f2, "f2");
  check_filter(y, "y");
  if (f2.ndim() != y.ndim()) throw py::value_error("f2 and y must have the same ndim");
  if (y.shape(0) != f2.shape(0))
    throw py::value_error("y.shape[0] must equal f2.shape[0] (the output channels)");
  const std::vector<int64_t> k = kernel_arg(k1, f2, "k1");
  for (size_t d = 0; d < k.size(); ++d)
    if (y.shape(2 + d) != k[d] + f2.shape(2 + d) - 1)
      throw py::value_error("y must have the spatial size k1 + K2 - 1");
  const Real r = real_type(f2, "f2");
  if (real_type(y, "y") != r) throw py::type_error("f2 and y must have the same dtype");
  const netmorph::Method m = netmorph::parse_method(method);
  const int t = check_threads(threads);
  return r == Real::f32 ? correlate_t<float>(f2, y, k, m, t) : correlate_t<double>(f2, y, k, m, t);
}

template <typename T, bool Rows>
py::array gram_t(const py::array& f2_in, const std::vector<int64_t>& k1) {
  const carray<T> f2 = contiguous<T>(f2_in);
  const int64_t c2 = f2.shape(0), c1 = f2.shape(1);
  const Dims3 k2d = Dims3::from(spatial(f2)), k1d = Dims3::from(k1);
  const int64_t side = Rows ? c2 * netmorph::full_size(k1d, k2d).size() : c1 * k1d.size();
  py::array_t<T> out(std::vector<py::ssize_t>{side, side});
  T* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    if (Rows)
      netmorph::gram_outer_rows_cpu<T>(f2.data(), c2, c1, k2d, k1d, o);
    else
      netmorph::gram_outer_cpu<T>(f2.data(), c2, c1, k2d, k1d, o);
  }
  return std::move(out);
}

template <bool Rows>
py::array gram(const py::array& f2, const std::vector<int64_t>& k1) {
  check_filter(f2, "f2");
  const std::vector<int64_t> k = kernel_arg(k1, f2, "k1");
  return real_type(f2, "f2") == Real::f32 ? gram_t<float, Rows>(f2, k) : gram_t<double, Rows>(f2, k);
}

void* capsule_pointer(const py::object& obj, const char* name) {
  if (!PyCapsule_CheckExact(obj.ptr()))
    throw py::type_error(std::string(name) + " must be a PyCapsule");
  const char* signature = PyCapsule_GetName(obj.ptr());
  // scipy.linalg.cython_blas: void (char *, char *, int *, int *, int *, T *, ...).
  const char* expected = "void (char *, char *, int *, int *, int *,";
  if (signature == nullptr || std::strncmp(signature, expected, std::strlen(expected)) != 0)
    throw py::value_error(std::string(name) + " is not a ?gemm capsule with 32-bit integers");
  void* p = PyCapsule_GetPointer(obj.ptr(), signature);
  if (p == nullptr) throw py::error_already_set();
  return p;
}

// (products, error magnification relative to the direct method, ((rows, cols, identity) of
// transform_a, transform_b and output)) of one algorithm.
py::tuple plan_info(const std::string& operation, const std::string& method,
                    const std::vector<int64_t>& k_outer, const std::vector<int64_t>& k_inner) {
  if (operation != "compose" && operation != "correlate")
    throw py::value_error("operation must be 'compose' or 'correlate'");
  if (k_outer.size() != k_inner.size())
    throw py::value_error("k_outer and k_inner must have the same length");
  const auto op =
      operation == "compose" ? netmorph::Operation::compose : netmorph::Operation::correlate;
  const Dims3 ko = Dims3::from(k_outer), ki = Dims3::from(k_inner);
  const netmorph::Plan& p = netmorph::get_plan(op, netmorph::parse_method(method), ko, ki);
  const netmorph::Plan& direct = netmorph::get_plan(op, netmorph::Method::direct, ko, ki);
  auto shape = [](const netmorph::Matrix& m) {
    return py::make_tuple(m.rows, m.cols, m.identity);
  };
  return py::make_tuple(p.products(), p.amplification / direct.amplification,
                        py::make_tuple(shape(p.transform_a), shape(p.transform_b),
                                       shape(p.output)));
}

int openmp_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "netmorph CPU kernels: compose, correlate_outer, gram_outer, gram_outer_rows";
  m.def(
      "set_blas",
      [](const py::object& sgemm, const py::object& dgemm) {
        netmorph::set_blas(capsule_pointer(sgemm, "sgemm"), capsule_pointer(dgemm, "dgemm"));
      },
      py::arg("sgemm"), py::arg("dgemm"),
      "Use the sgemm/dgemm PyCapsules of scipy.linalg.cython_blas for every product.");
  m.def("blas_ready", &netmorph::blas_ready, "Whether set_blas has been called.");
  m.def(
      "release_workspace",
      [] {
        netmorph::release_workspace<float>();
        netmorph::release_workspace<double>();
      },
      "Free the scratch memory the kernels keep for the calling thread between calls.");
  m.def("openmp_threads", &openmp_threads, "OpenMP threads available (1 without OpenMP).");
  m.def("blas_threads", &netmorph::blas_threads,
        "The BLAS's thread count (0: its library has no OpenBLAS thread controls).");
  m.def("compose", &compose, py::arg("f2"), py::arg("f1"), py::arg("method"), py::arg("threads"),
        "G = F2 ⊛ F1: (C2, C1, *K2), (C1, C0, *K1) -> (C2, C0, *(K1 + K2 - 1)), on `threads` "
        "threads.");
  m.def("compose_in_range", &compose_in_range, py::arg("f2"), py::arg("f1"), py::arg("method"),
        py::arg("threads"), py::arg("max_exponent"),
        "G = F2 ⊛ F1 as compose when both inputs are finite and the exponent of each one's "
        "largest magnitude lies in [-max_exponent, max_exponent]; None (no kernel run) when one "
        "does not; ValueError naming F2 or F1 when it holds NaN or Inf.");
  m.def("correlate_outer", &correlate_outer, py::arg("f2"), py::arg("y"), py::arg("k1"),
        py::arg("method"), py::arg("threads"),
        "X = A^T Y: X[m, i, s] = Σ_{o,t} F2[o, m, t - s] Y[o, i, t]; X has shape (C1, C0, *k1).");
  m.def("gram_outer", &gram<false>, py::arg("f2"), py::arg("k1"),
        "M = A^T A of shape (C1·|k1|, C1·|k1|).");
  m.def("gram_outer_rows", &gram<true>, py::arg("f2"), py::arg("k1"),
        "N = A A^T of shape (C2·|Kt|, C2·|Kt|).");
  m.def("plan_info", &plan_info, py::arg("operation"), py::arg("method"), py::arg("k_outer"),
        py::arg("k_inner"),
        "(products, error magnification relative to direct, shapes of the three tap maps).");
}
