// fastrnn._cuda: the CUDA recurrence kernels (see api.h), called by
// fastrnn/backends/cuda.py with raw pointers and the caller's stream.
#include <cuda_runtime.h>

#include "bind_common.h"

namespace fc = fastrnn::cuda;

namespace {
struct CudaBackend {
  static void lstm_forward(int d, const fc::LstmForwardArgs& a, void* s) { fc::lstm_forward_cuda(d, a, s); }
  static void lstm_backward(int d, const fc::LstmBackwardArgs& a, void* s) { fc::lstm_backward_cuda(d, a, s); }
  static void gru_forward(int d, const fc::GruForwardArgs& a, void* s) { fc::gru_forward_cuda(d, a, s); }
  static void gru_backward(int d, const fc::GruBackwardArgs& a, void* s) { fc::gru_backward_cuda(d, a, s); }
  static void rnn_forward(int d, const fc::RnnForwardArgs& a, void* s) { fc::rnn_forward_cuda(d, a, s); }
  static void rnn_backward(int d, const fc::RnnBackwardArgs& a, void* s) { fc::rnn_backward_cuda(d, a, s); }
};
}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fastrnn CUDA kernels: fused per-step LSTM/GRU/RNN recurrences";
  fc::def_rnn_api<CudaBackend>(m);
  // Number of visible CUDA devices as the runtime sees it (0 without a driver), with
  // the error string when the query fails; never raises, so it is safe at import.
  m.def("device_count", []() -> pybind11::tuple {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error state
      return pybind11::make_tuple(0, std::string(cudaGetErrorString(err)));
    }
    return pybind11::make_tuple(n, std::string());
  });
  m.def("runtime_version", []() {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  });
}
