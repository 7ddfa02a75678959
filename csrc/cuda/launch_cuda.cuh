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
  static constexpr int kMaxCluster = 16;  // blocks per cluster on sm_90 (above 8: non-portable)
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
    auto kernel = persistent_kernel<Cfg, T, Steps, false>;
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

  // The whole sequence as one launch of thread-block clusters: grid (gx unit tiles,
  // every row tile), one cluster per row tile, so a step waits only for the gx blocks
  // that produce its rows (a cluster barrier, not a grid-wide one). Clusters are
  // independent: they need not all be resident at once. Returns false (nothing
  // launched) below sm_90, when gx exceeds the largest cluster (16, non-portable), or
  // when the weights or the cluster do not fit.
  template <class Cfg, typename T, class Steps>
  bool run_cluster(const Steps& st) {
    using Tl = Tile<Cfg, T>;
    const MatParams<T> p0 = st.mat(0);
    const size_t smem = Tl::resident_elems(p0.K) * sizeof(typename Tl::A);
    int dev = 0, major = 0, optin = 0;
    check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
               "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
               "cudaDeviceGetAttribute");
    const int gx = Tl::grid_x(p0), gy = Tl::grid_y(p0);
    if (major < 9 || gx == 0 || gy == 0 || gx > kMaxCluster || smem > static_cast<size_t>(optin))
      return false;
    auto kernel = persistent_kernel<Cfg, T, Steps, true>;
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)),
               "cudaFuncSetAttribute");
    if (gx > 8)
      check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1),
                 "cudaFuncSetAttribute(NonPortableClusterSizeAllowed)");
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(gx, gy);
    cfg.blockDim = dim3(Cfg::THREADS);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = gx;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    int clusters = 0;
    check_cuda(cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg),
               "cudaOccupancyMaxActiveClusters");
    if (clusters < 1) return false;
    check_cuda(cudaLaunchKernelEx(&cfg, kernel, st), "persistent_kernel cluster launch");
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
