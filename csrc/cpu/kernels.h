// Entry points of the CPU kernels. Each kernel source is compiled once per
// instruction set into namespace fastrnn::cpu::<isa>; dispatch.cpp chooses.
#pragma once
#include "common/rnn_params.h"

#define FASTRNN_DECLARE_CPU_KERNELS(isa)                                   \
  namespace fastrnn {                                                       \
  namespace cpu {                                                           \
  namespace isa {                                                           \
  template <typename T> void lstm_forward(const LstmForwardParams<T>& p);   \
  template <typename T> void lstm_backward(const LstmBackwardParams<T>& p); \
  template <typename T> void gru_forward(const GruForwardParams<T>& p);     \
  template <typename T> void gru_backward(const GruBackwardParams<T>& p);   \
  template <typename T> void rnn_forward(const RnnForwardParams<T>& p);     \
  template <typename T> void rnn_backward(const RnnBackwardParams<T>& p);   \
  template <typename T> void cell_forward(const CellForwardParams<T>& p);   \
  template <typename T> void cell_backward(const CellBackwardParams<T>& p); \
  }                                                                         \
  }                                                                         \
  }

FASTRNN_DECLARE_CPU_KERNELS(avx512)
FASTRNN_DECLARE_CPU_KERNELS(avx2)
FASTRNN_DECLARE_CPU_KERNELS(generic)

#define FASTRNN_INSTANTIATE(fn, Params)      \
  template void fn<float>(const Params<float>&); \
  template void fn<double>(const Params<double>&);
