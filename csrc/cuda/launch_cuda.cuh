// Launches tile_kernel on the caller's stream and checks every launch.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "steps.cuh"

namespace fastrnn {
namespace cuda {

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("fastrnn CUDA error in ") + what + ": " +
                             cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

struct CudaLauncher {
  cudaStream_t stream;

  template <class Cfg, typename T, class Epi>
  void run(const MatParams<T>& p, const Epi& epi) {
    using Tl = Tile<Cfg, T>;
    const dim3 grid(Tl::grid_x(p), Tl::grid_y(p));
    if (grid.x == 0 || grid.y == 0) return;
    tile_kernel<Cfg, T, Epi><<<grid, Cfg::THREADS, 0, stream>>>(p, epi);
    check_cuda(cudaGetLastError(), "tile_kernel launch");
  }
};

// Calls F::template run<T>(args, launcher) for the runtime dtype.
template <class F, class Args>
void dispatch_dtype(int dtype, const Args& a, void* stream) {
  CudaLauncher l{static_cast<cudaStream_t>(stream)};
  switch (dtype) {
    case kFloat32: F::template run<float>(a, l); break;
    case kFloat64: F::template run<double>(a, l); break;
    case kFloat16: F::template run<__half>(a, l); break;
    case kBFloat16: F::template run<__nv_bfloat16>(a, l); break;
    default: throw std::invalid_argument("fastrnn CUDA: unsupported dtype code " + std::to_string(dtype));
  }
}

}  // namespace cuda
}  // namespace fastrnn
