// Shared pieces of the per-cell time-loop drivers (lstm.cuh, gru.cuh, rnn.cuh).
//
// A driver is templated on a Launcher: something with
//   template <class Cfg, typename T, class Epi> void run(const MatParams<T>&, const Epi&);
// The CUDA launcher (launch_cuda.cuh) starts tile_kernel on a stream; the host
// emulator (emu.cpp) runs the same tile phases on the CPU.
#pragma once
#include <cstddef>

#include "api.h"
#include "tile.cuh"

namespace fastrnn {
namespace cuda {

// Time index of processing step s (s = 0 is the first step processed).
inline int time_of(int s, int T, bool reverse) { return reverse ? T - 1 - s : s; }

template <int G, class Launcher, typename T, class Epi>
void launch_tile(Launcher& l, int tile, const MatParams<T>& p, const Epi& epi) {
  if (tile == kTileLarge)
    l.template run<TileLarge<G>, T>(p, epi);
  else
    l.template run<TileSmall<G>, T>(p, epi);
}

template <typename T>
MatParams<T> mat(const T* A, int lda, const T* W, int N, int J, int K) {
  MatParams<T> p;
  p.A = A;
  p.lda = lda;
  p.W = W;
  p.N = N;
  p.J = J;
  p.K = K;
  return p;
}

template <typename P>
inline P* offset(P* base, int t, size_t stride) {
  return base == nullptr ? nullptr : base + static_cast<size_t>(t) * stride;
}

}  // namespace cuda
}  // namespace fastrnn
