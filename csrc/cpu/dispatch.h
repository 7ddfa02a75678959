// The CPU kernels as the bindings see them: one entry per kernel, forwarded to
// the instruction-set build chosen at run time.
#pragma once
#include <string>
#include <vector>

#include "common/rnn_params.h"

namespace fastrnn {
namespace cpu {

std::string isa();  // the build in use: avx512bf16 (avx512 + the bf16 kernels, bf16.h), avx512, avx2, generic
void set_isa(const std::string& name);        // "auto" or one of supported_isas()
std::vector<std::string> supported_isas();    // compiled in and supported by this CPU

// Denormals flushed to zero (x86 FTZ/DAZ) in every thread of the calling thread's OpenMP
// team of `threads` threads, the team torch's intra-op work and BLAS run on (one libgomp
// per process): on = true saves each thread's mode and sets the flush, on = false restores
// the saved mode. Calls nest (a count per thread). Elsewhere than x86-64: no effect.
void team_flush_denormals(int threads, bool on);

template <typename scalar_t> void lstm_forward(const LstmForwardParams<scalar_t>& p);
template <typename scalar_t> void lstm_backward(const LstmBackwardParams<scalar_t>& p);
template <typename scalar_t> void gru_forward(const GruForwardParams<scalar_t>& p);
template <typename scalar_t> void gru_backward(const GruBackwardParams<scalar_t>& p);
template <typename scalar_t> void rnn_forward(const RnnForwardParams<scalar_t>& p);
template <typename scalar_t> void rnn_backward(const RnnBackwardParams<scalar_t>& p);
template <typename scalar_t> void cell_forward(const CellForwardParams<scalar_t>& p);
template <typename scalar_t> void cell_backward(const CellBackwardParams<scalar_t>& p);
template <typename scalar_t> void reg_forward(const RegForwardParams<scalar_t>& p);
template <typename scalar_t> void reg_backward(const RegBackwardParams<scalar_t>& p);
template <typename scalar_t> void ln_forward(const LnForwardParams<scalar_t>& p);
template <typename scalar_t> void ln_backward(const LnBackwardParams<scalar_t>& p);
template <typename scalar_t> void bernoulli_mask(const MaskParams<scalar_t>& p);

}  // namespace cpu
}  // namespace fastrnn
