// Shared device helpers of the CUDA kernels.
//
// Every csrc/*_cuda.cu file is loaded twice: by NVRTC at run time (cupy.RawModule, after the
// local #include lines are expanded) and by nvcc for the pybind11 module. So these headers use
// no host-only includes and no standard library.
//
// Spatial kernels of 0 to 3 dimensions are "lifted" to exactly 3 (d, h, w) by the callers, the
// leading dimensions padded with size 1, so every kernel serves 1-D, 2-D and 3-D alike.
#pragma once

namespace netmorph {

typedef long long index_t;

// Spatial extents (d, h, w) and C-order flattening of an offset.
struct Dims3 {
  index_t d, h, w;
  __device__ index_t size() const { return d * h * w; }
  __device__ index_t flat(index_t a, index_t b, index_t c) const { return (a * h + b) * w + c; }
};

__device__ inline Dims3 dims3(index_t d, index_t h, index_t w) {
  Dims3 r;
  r.d = d;
  r.h = h;
  r.w = w;
  return r;
}

__device__ inline index_t imax(index_t a, index_t b) { return a > b ? a : b; }
__device__ inline index_t imin(index_t a, index_t b) { return a < b ? a : b; }

// z[a, b] of an n × n matrix that is symmetric in exact arithmetic (a GEMM's BᵀB), read from
// its upper triangle only: sums of such entries taken in mirrored order are then equal bit for
// bit, whatever order the GEMM summed z[a, b] and z[b, a] in.
template <typename T>
__device__ inline T upper(const T* z, index_t n, index_t a, index_t b) {
  return a <= b ? z[a * n + b] : z[b * n + a];
}

// Output matrices (rows × cols) of the element-wise kernels: one thread per column element
// (x: blocks of threads), the grid's y dimension striding over the rows; rows and cols each
// below 2^31 (checked by the launchers).
__device__ inline int grid_col() { return blockIdx.x * blockDim.x + threadIdx.x; }
#define NM_FOR_EACH_ROW(row, rows) \
  for (::netmorph::index_t row = blockIdx.y; row < (rows); row += gridDim.y)

// The block's dynamically sized shared memory, viewed as T.
template <typename T>
__device__ inline T* shared_buffer() {
  extern __shared__ __align__(16) unsigned char netmorph_shared_raw[];
  return reinterpret_cast<T*>(netmorph_shared_raw);
}

}  // namespace netmorph

// X(T, suffix) for every supported scalar type: the .cu files define their extern "C"
// wrappers, name_f32 and name_f64, with one macro over the templated kernel body.
#define NM_FOR_EACH_DTYPE(X) X(float, f32) X(double, f64)
