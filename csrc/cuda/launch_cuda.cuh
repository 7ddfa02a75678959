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

  // The whole sequence as one cooperative launch, W resident in shared memory. Returns
  // false (nothing launched) when this device cannot hold one block per unit tile at
  // once, or the block's weights exceed its shared memory: the caller then runs the
  // per-step kernels.
  template <class Cfg, typename T, class Steps>
  bool run_persistent(const Steps& st) {
    using Tl = Tile<Cfg, T>;
    const MatParams<T> p0 = st.mat(0);
    const size_t smem = Tl::resident_elems(p0.K) * sizeof(typename Tl::A);
    int dev = 0, coop = 0, optin = 0, sms = 0;
    check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev), "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
               "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
    if (!coop || smem > static_cast<size_t>(optin)) return false;
    auto kernel = persistent_kernel<Cfg, T, Steps>;
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)),
               "cudaFuncSetAttribute");
    int per_sm = 0;
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, Cfg::THREADS, smem),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    const long capacity = static_cast<long>(per_sm) * sms;
    const int gx = Tl::grid_x(p0), gy_all = Tl::grid_y(p0);
    if (gx == 0 || gy_all == 0 || capacity < gx) return false;
    const int gy = static_cast<int>(capacity / gx < gy_all ? capacity / gx : gy_all);
    Steps arg = st;
    void* args[] = {&arg};
    check_cuda(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(gx, gy),
                                           dim3(Cfg::THREADS), args, smem, stream),
               "persistent_kernel cooperative launch");
    return true;
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
