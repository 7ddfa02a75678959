// Entry points of the CPU kernels. Each kernel source is compiled once per
// instruction set into namespace fastrnn::cpu::<isa>; dispatch.cpp chooses.
#pragma once
#include "common/rnn_params.h"

#define FASTRNN_DECLARE_CPU_KERNELS(isa)                                   \
  namespace fastrnn {                                                       \
  namespace cpu {                                                           \
  namespace isa {                                                           \
  template <typename scalar_t> void lstm_forward(const LstmForwardParams<scalar_t>& p);   \
  template <typename scalar_t> void lstm_backward(const LstmBackwardParams<scalar_t>& p); \
  template <typename scalar_t> void gru_forward(const GruForwardParams<scalar_t>& p);     \
  template <typename scalar_t> void gru_backward(const GruBackwardParams<scalar_t>& p);   \
  template <typename scalar_t> void rnn_forward(const RnnForwardParams<scalar_t>& p);     \
  template <typename scalar_t> void rnn_backward(const RnnBackwardParams<scalar_t>& p);   \
  template <typename scalar_t> void cell_forward(const CellForwardParams<scalar_t>& p);   \
  template <typename scalar_t> void cell_backward(const CellBackwardParams<scalar_t>& p); \
  template <typename scalar_t> void reg_forward(const RegForwardParams<scalar_t>& p);     \
  template <typename scalar_t> void reg_backward(const RegBackwardParams<scalar_t>& p);   \
  template <typename scalar_t> void ln_forward(const LnForwardParams<scalar_t>& p);       \
  template <typename scalar_t> void ln_backward(const LnBackwardParams<scalar_t>& p);     \
  template <typename scalar_t> void bernoulli_mask(const MaskParams<scalar_t>& p);        \
  }                                                                         \
  }                                                                         \
  }

FASTRNN_DECLARE_CPU_KERNELS(avx512)
FASTRNN_DECLARE_CPU_KERNELS(avx2)
FASTRNN_DECLARE_CPU_KERNELS(generic)

#define FASTRNN_INSTANTIATE(fn, Params)      \
  template void fn<float>(const Params<float>&); \
  template void fn<double>(const Params<double>&);
