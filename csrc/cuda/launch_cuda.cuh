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

// An attribute of the current device, every runtime call checked.
inline int current_device_attribute(cudaDeviceAttr what) {
  int dev = 0, value = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&value, what, dev), "cudaDeviceGetAttribute");
  return value;
}

// Dynamic shared memory of a persistent kernel (the block's resident W rows and A rows):
// its size, or 0 when it exceeds what a block may opt into on this device. When it fits,
// the kernel is allowed that much.
template <class Cfg, typename scalar_t, class Kernel>
size_t resident_smem(Kernel kernel, int K) {
  const size_t smem = Tile<Cfg, scalar_t>::resident_elems(K) * sizeof(typename Tile<Cfg, scalar_t>::A);
  if (smem > static_cast<size_t>(
                 current_device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin)))
    return 0;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)),
             "cudaFuncSetAttribute");
  return smem;
}

struct CudaLauncher {
  cudaStream_t stream;

  template <class Cfg, typename scalar_t, class Epi>
  void run(const MatParams<scalar_t>& p, const Epi& epi) {
    using Tl = Tile<Cfg, scalar_t>;
    const dim3 grid(Tl::grid_x(p), Tl::grid_y(p));
    if (grid.x == 0 || grid.y == 0) return;
    tile_kernel<Cfg, scalar_t, Epi><<<grid, Cfg::THREADS, 0, stream>>>(p, epi);
    check_cuda(cudaGetLastError(), "tile_kernel launch");
  }

  // The whole sequence as one cooperative launch, W resident in shared memory. Returns
  // false (nothing launched) when this device cannot hold one block per unit tile at
  // once, or the block's weights exceed its shared memory: the caller then runs the
  // per-step kernels.
  template <class Cfg, typename scalar_t, class Steps>
  bool run_persistent(const Steps& st) {
    using Tl = Tile<Cfg, scalar_t>;
    const MatParams<scalar_t> p0 = st.mat(0);
    if (!current_device_attribute(cudaDevAttrCooperativeLaunch)) return false;
    auto kernel = persistent_kernel<Cfg, scalar_t, Steps, false>;
    const size_t smem = resident_smem<Cfg, scalar_t>(kernel, p0.K);
    if (smem == 0) return false;
    const int sms = current_device_attribute(cudaDevAttrMultiProcessorCount);
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
  template <class Cfg, typename scalar_t, class Steps>
  bool run_cluster(const Steps& st) {
    using Tl = Tile<Cfg, scalar_t>;
    const MatParams<scalar_t> p0 = st.mat(0);
    const int gx = Tl::grid_x(p0), gy = Tl::grid_y(p0);
    if (current_device_attribute(cudaDevAttrComputeCapabilityMajor) < 9 || gx == 0 || gy == 0 ||
        gx > kMaxClusterBlocks)
      return false;
    auto kernel = persistent_kernel<Cfg, scalar_t, Steps, true>;
    const size_t smem = resident_smem<Cfg, scalar_t>(kernel, p0.K);
    if (smem == 0) return false;
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

// Calls F::template run<scalar_t>(args, launcher) for the runtime dtype.
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
