// netmorph_core._native_cuda: the CUDA kernels of csrc/ behind thin host launchers.
//
// Each launcher takes raw device pointers (integers) of C-contiguous arrays, the channel counts,
// the spatial kernel sizes (0 to 3 entries, one per spatial dimension), the dtype name and a CUDA
// stream handle (0: the legacy default stream). Work is queued on that stream and the call
// returns without synchronising. Input validation beyond sizes stays in Python.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../csrc/launch_cuda.cuh"

namespace py = pybind11;
namespace nd = netmorph::driver;

namespace {

typedef long long ll;

template <typename T>
T* ptr(std::uintptr_t address, const char* name) {
  if (address == 0) throw std::invalid_argument(std::string(name) + " is a null pointer");
  return reinterpret_cast<T*>(address);
}

void check_channels(std::initializer_list<ll> channels) {
  for (ll c : channels) {
    if (c < 1) throw std::invalid_argument("channel counts must be positive");
  }
}

void check_rank(const std::vector<ll>& k2, const std::vector<ll>& k1) {
  if (k2.size() != k1.size()) {
    throw std::invalid_argument("k2 and k1 must have the same number of spatial dimensions");
  }
}

// Calls fn(T{}) for the scalar type named by dtype.
template <typename Fn>
void dispatch(const std::string& dtype, Fn&& fn) {
  if (dtype == "float32") {
    fn(float{});
  } else if (dtype == "float64") {
    fn(double{});
  } else {
    throw std::invalid_argument("dtype must be 'float32' or 'float64', got '" + dtype + "'");
  }
}

cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// Registers a compose-shaped launcher: two operands (names a, b) and the output c, three channel
// counts, both kernel sizes, the stream and the method. launch(T{}, a, b, c, c2, c1, c0, k2, k1,
// method, stream) queues the kernel for the scalar type T.
template <typename Launch>
void def_pair(py::module_& m, const char* name, const char* doc, const char* a_name,
              const char* b_name, const char* c_name, Launch launch) {
  m.def(
      name,
      [=](std::uintptr_t a, std::uintptr_t b, std::uintptr_t c, const std::string& dtype, ll c2,
          ll c1, ll c0, const std::vector<ll>& k2, const std::vector<ll>& k1,
          std::uintptr_t stream, const std::string& method) {
        check_channels({c2, c1, c0});
        check_rank(k2, k1);
        const nd::Extent e2 = nd::lift(k2), e1 = nd::lift(k1);
        const nd::Method how = nd::parse_method(method);
        dispatch(dtype, [&](auto zero) {
          using T = decltype(zero);
          py::gil_scoped_release release;
          launch(zero, ptr<const T>(a, a_name), ptr<const T>(b, b_name), ptr<T>(c, c_name), c2,
                 c1, c0, e2, e1, how, as_stream(stream));
        });
      },
      doc, py::arg(a_name), py::arg(b_name), py::arg(c_name), py::arg("dtype"), py::arg("c2"),
      py::arg("c1"), py::arg("c0"), py::arg("k2"), py::arg("k1"), py::arg("stream") = 0,
      py::arg("method") = "auto");
}

// Registers a Gram launcher: F2 and the output, two channel counts, both kernel sizes and the
// stream. launch(T{}, f2, out, c2, c1, k2, k1, stream) queues the kernels for the scalar type T.
template <typename Launch>
void def_gram(py::module_& m, const char* name, const char* doc, Launch launch) {
  m.def(
      name,
      [=](std::uintptr_t f2, std::uintptr_t out, const std::string& dtype, ll c2, ll c1,
          const std::vector<ll>& k2, const std::vector<ll>& k1, std::uintptr_t stream) {
        check_channels({c2, c1});
        check_rank(k2, k1);
        const nd::Extent e2 = nd::lift(k2), e1 = nd::lift(k1);
        dispatch(dtype, [&](auto zero) {
          using T = decltype(zero);
          py::gil_scoped_release release;
          launch(zero, ptr<const T>(f2, "f2"), ptr<T>(out, "out"), c2, c1, e2, e1,
                 as_stream(stream));
        });
      },
      doc, py::arg("f2"), py::arg("out"), py::arg("dtype"), py::arg("c2"), py::arg("c1"),
      py::arg("k2"), py::arg("k1"), py::arg("stream") = 0);
}

}  // namespace

PYBIND11_MODULE(_native_cuda, m) {
  m.doc() = "CUDA kernels of netmorph (compose, correlate_outer, gram_outer, gram_outer_rows)";

  def_pair(m, "compose", "G (C2, C0, *(K1+K2-1)) = F2 (C2, C1, *K2) ⊛ F1 (C1, C0, *K1).", "f2",
           "f1", "g", [](auto zero, auto f2, auto f1, auto g, ll c2, ll c1, ll c0,
                         const nd::Extent& k2, const nd::Extent& k1, nd::Method how,
                         cudaStream_t stream) {
             nd::compose<decltype(zero)>(f2, f1, g, c2, c1, c0, k2, k1, how, stream);
           });

  def_pair(m, "correlate_outer",
           "X (C1, C0, *K1) = Aᵀ·Y: X[m, i, s] = Σ_{o, t} F2[o, m, t - s] Y[o, i, t], "
           "Y (C2, C0, *(K1+K2-1)).",
           "f2", "y", "x", [](auto zero, auto f2, auto y, auto x, ll c2, ll c1, ll c0,
                              const nd::Extent& k2, const nd::Extent& k1, nd::Method how,
                              cudaStream_t stream) {
             nd::correlate_outer<decltype(zero)>(f2, y, x, c2, c1, c0, k2, k1, how, stream);
           });

  def_gram(m, "gram_outer",
           "M (C1·|K1|, C1·|K1|) = AᵀA, rows and columns indexed (m, s) in C order.",
           [](auto zero, auto f2, auto out, ll c2, ll c1, const nd::Extent& k2,
              const nd::Extent& k1, cudaStream_t stream) {
             nd::gram_outer<decltype(zero)>(f2, out, c2, c1, k2, k1, stream);
           });

  def_gram(m, "gram_outer_rows",
           "N (C2·|Kt|, C2·|Kt|) = A·Aᵀ, rows and columns indexed (o, t) in C order.",
           [](auto zero, auto f2, auto out, ll c2, ll c1, const nd::Extent& k2,
              const nd::Extent& k1, cudaStream_t stream) {
             nd::gram_outer_rows<decltype(zero)>(f2, out, c2, c1, k2, k1, stream);
           });
}
