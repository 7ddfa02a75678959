// Shared pieces of the per-cell time-loop drivers (lstm.cuh, gru.cuh, rnn.cuh).
//
// Each cell and direction of a pass is described by a "Steps" struct: count() launches,
// and for launch i the matmul operands mat(i) (W and K the same for every i) and the
// epilogue epi(i). run_steps() either issues one tile launch per step or, when asked
// and possible, the whole sequence as one persistent launch: kPersistGrid (one
// cooperative launch, grid-wide barrier per step) or kPersistCluster (thread-block
// clusters, one per row tile, cluster barrier per step; sm_90+, at most 16 unit tiles),
// falling back cluster -> grid -> per step where a kind does not fit.
//
// A driver is templated on a Launcher with
//   template <class Cfg, typename scalar_t, class Epi> void run(const MatParams<scalar_t>&, const Epi&);
//   template <class Cfg, typename scalar_t, class Steps> bool run_persistent(const Steps&);
//   template <class Cfg, typename scalar_t, class Steps> bool run_cluster(const Steps&);
// The CUDA launcher (launch_cuda.cuh) starts kernels on a stream; the host emulator
// (emu.cpp) runs the same phases on the CPU.
#pragma once
#include <cstddef>

#include "api.h"
#include "tile.cuh"

namespace fastrnn {
namespace cuda {

// The most blocks a thread-block cluster may have on sm_90 (above 8: non-portable). The
// cluster schedule needs all unit tiles of a row tile in one cluster; the CUDA launcher
// and the emulator refuse it (and fall back) above this.
constexpr int kMaxClusterBlocks = 16;

// Time index of processing step s (s = 0 is the first step processed).
FASTRNN_HD int time_of(int s, int T, bool reverse) { return reverse ? T - 1 - s : s; }

template <typename P>
FASTRNN_HD P* offset(P* base, int t, size_t stride) {
  return base == nullptr ? nullptr : base + static_cast<size_t>(t) * stride;
}

template <typename scalar_t>
FASTRNN_HD MatParams<scalar_t> mat(const scalar_t* A, int lda, const scalar_t* W, int N, int J, int K) {
  MatParams<scalar_t> p;
  p.A = A;
  p.lda = lda;
  p.W = W;
  p.N = N;
  p.J = J;
  p.K = K;
  return p;
}

template <int G, class Launcher, typename scalar_t, class Epi>
void launch_tile(Launcher& l, int tile, const MatParams<scalar_t>& p, const Epi& epi) {
  if (tile == kTileLarge)
    l.template run<TileLarge<G>, scalar_t>(p, epi);
  else
    l.template run<TileSmall<G>, scalar_t>(p, epi);
}

template <class Steps, class Launcher>
void run_steps(Launcher& l, const Steps& st, int tile, int persistent) {
  using scalar_t = typename Steps::value_type;
  if (persistent == kPersistCluster && l.template run_cluster<TileSmall<Steps::G>, scalar_t>(st)) return;
  if (persistent != kPersistNone && l.template run_persistent<TileSmall<Steps::G>, scalar_t>(st)) return;
  const int n = st.count();
  for (int i = 0; i < n; ++i) launch_tile<Steps::G>(l, tile, st.mat(i), st.epi(i));
}

}  // namespace cuda
}  // namespace fastrnn
