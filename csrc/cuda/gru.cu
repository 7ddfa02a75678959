// Instantiates the GRU time-loop drivers (gru.cuh) for the CUDA launcher, all dtypes.
#include "launch_cuda.cuh"
#include "gru.cuh"

namespace fastrnn {
namespace cuda {
namespace {
struct Fwd {
  template <typename T>
  static void run(const GruForwardArgs& a, CudaLauncher& l) { gru_forward_steps<T>(a, l); }
};
struct Bwd {
  template <typename T>
  static void run(const GruBackwardArgs& a, CudaLauncher& l) { gru_backward_steps<T>(a, l); }
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
