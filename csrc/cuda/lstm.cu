// Instantiates the LSTM time-loop drivers (lstm.cuh) for the CUDA launcher, all dtypes.
#include "launch_cuda.cuh"
#include "lstm.cuh"

namespace fastrnn {
namespace cuda {
namespace {
struct Fwd {
  template <typename scalar_t>
  static void run(const LstmForwardArgs& a, CudaLauncher& l) { lstm_forward_steps<scalar_t>(a, l); }
};
struct Bwd {
  template <typename scalar_t>
  static void run(const LstmBackwardArgs& a, CudaLauncher& l) { lstm_backward_steps<scalar_t>(a, l); }
};
}  // namespace

void lstm_forward_cuda(int dtype, const LstmForwardArgs& a, void* stream) {
  dispatch_dtype<Fwd>(dtype, a, stream);
}
void lstm_backward_cuda(int dtype, const LstmBackwardArgs& a, void* stream) {
  dispatch_dtype<Bwd>(dtype, a, stream);
}

}  // namespace cuda
}  // namespace fastrnn
