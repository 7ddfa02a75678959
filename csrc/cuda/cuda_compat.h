// Host/device portability layer for the CUDA kernels.
//
// Everything the kernels compute (tile loads, dot products, gate math, state updates)
// is written as FASTRNN_HD functions so that the very same code also compiles as plain
// C++: the host emulator (emu.cpp, module fastrnn._cuda_emu) runs it block by block,
// thread by thread, which lets machines without a GPU test the kernel logic.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define FASTRNN_HD __host__ __device__ __forceinline__
#else
#define FASTRNN_HD inline
#endif
#if defined(__CUDA_ARCH__)
#define FASTRNN_UNROLL _Pragma("unroll")
#else
#define FASTRNN_UNROLL
#endif

namespace fastrnn {
namespace cuda {

// Accumulation type: float for float/half/bfloat16, double for double.
template <typename scalar_t> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename scalar_t> using acc_t = typename AccOf<scalar_t>::type;

// Storage <-> accumulation conversions.
FASTRNN_HD float to_acc(float x) { return x; }
FASTRNN_HD double to_acc(double x) { return x; }
template <typename scalar_t> FASTRNN_HD scalar_t from_acc(float x);
template <typename scalar_t> FASTRNN_HD scalar_t from_acc(double x);
template <> FASTRNN_HD float from_acc<float>(float x) { return x; }
template <> FASTRNN_HD double from_acc<double>(double x) { return x; }
#ifdef __CUDACC__
FASTRNN_HD float to_acc(__half x) { return __half2float(x); }
FASTRNN_HD float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
template <> FASTRNN_HD __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> FASTRNN_HD __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
#endif

// Nonlinearities in the accumulation type, and their derivatives from the
// activated value (d_sigmoid(s) = s (1 - s), d_tanh(t) = 1 - t^2).
FASTRNN_HD float act_exp(float x) { return expf(x); }
FASTRNN_HD double act_exp(double x) { return exp(x); }
FASTRNN_HD float act_tanh(float x) { return tanhf(x); }
FASTRNN_HD double act_tanh(double x) { return tanh(x); }
template <typename A> FASTRNN_HD A act_sigmoid(A x) { return A(1) / (A(1) + act_exp(-x)); }
// relu keeps NaN (as torch.relu does): NaN < 0 is false.
template <typename A> FASTRNN_HD A act_relu(A x) { return x < A(0) ? A(0) : x; }
template <typename A> FASTRNN_HD A d_sigmoid(A s) { return s * (A(1) - s); }
template <typename A> FASTRNN_HD A d_tanh(A t) { return A(1) - t * t; }

// Step t of sequence n is valid when t < lengths[n] (lengths == nullptr: all valid).
FASTRNN_HD bool step_valid(const int64_t* lengths, int n, int t) {
  return lengths == nullptr || static_cast<int64_t>(t) < lengths[n];
}

}  // namespace cuda
}  // namespace fastrnn
