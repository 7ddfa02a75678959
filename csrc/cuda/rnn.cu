// Instantiates the RNN time-loop drivers (rnn.cuh) for the CUDA launcher, all dtypes.
#include "launch_cuda.cuh"
#include "rnn.cuh"

namespace fastrnn {
namespace cuda {
namespace {
struct Fwd {
  template <typename scalar_t>
  static void run(const RnnForwardArgs& a, CudaLauncher& l) { rnn_forward_steps<scalar_t>(a, l); }
};
struct Bwd {
  template <typename scalar_t>
  static void run(const RnnBackwardArgs& a, CudaLauncher& l) { rnn_backward_steps<scalar_t>(a, l); }
};
}  // namespace

void rnn_forward_cuda(int dtype, const RnnForwardArgs& a, void* stream) {
  dispatch_dtype<Fwd>(dtype, a, stream);
}
void rnn_backward_cuda(int dtype, const RnnBackwardArgs& a, void* stream) {
  dispatch_dtype<Bwd>(dtype, a, stream);
}

}  // namespace cuda
}  // namespace fastrnn
