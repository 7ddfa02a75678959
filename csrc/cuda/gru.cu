// Instantiates the GRU time-loop drivers (gru.cuh) for the CUDA launcher, all dtypes.
#include "launch_cuda.cuh"
#include "gru.cuh"

namespace fastrnn {
namespace cuda {
namespace {
struct Fwd {
  template <typename scalar_t>
  static void run(const GruForwardArgs& a, CudaLauncher& l) { gru_forward_steps<scalar_t>(a, l); }
};
struct Bwd {
  template <typename scalar_t>
  static void run(const GruBackwardArgs& a, CudaLauncher& l) { gru_backward_steps<scalar_t>(a, l); }
};
}  // namespace

void gru_forward_cuda(int dtype, const GruForwardArgs& a, void* stream) {
  dispatch_dtype<Fwd>(dtype, a, stream);
}
void gru_backward_cuda(int dtype, const GruBackwardArgs& a, void* stream) {
  dispatch_dtype<Bwd>(dtype, a, stream);
}

}  // namespace cuda
}  // namespace fastrnn
