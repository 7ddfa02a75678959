// The one building block of every recurrent step: a block-tiled "matmul + epilogue".
//
// For every batch row n < N and output unit j < J, compute G dot products of length K
//     acc[g] = sum_k A[n, k] * W[j, g, k]          (g = 0 .. G-1)
// and hand (n, j, acc) to an epilogue functor that applies bias, nonlinearities and the
// state update for that (n, j). Because W is laid out [J, G, K] (the G gate rows of one
// unit next to each other), one thread owns all gates of its unit and the whole step is
// one launch with no intermediate gate buffer.
//
//   A : [N, K] with row stride lda (nullptr: acc = 0, e.g. the first backward step)
//   W : [J, G, K] contiguous
//
// A block covers BN rows x BJ units; KS threads split each dot product along K and
// are reduced through shared memory. K is walked in chunks of KC staged in shared
// memory. The body is split into phases separated by barriers so that the host
// emulator can run it thread by thread (see emu.cpp); the CUDA kernel is at the end.
#pragma once
#include "api.h"
#include "cuda_compat.h"

namespace fastrnn {
namespace cuda {

template <int G_, int BN_, int BJ_, int KS_, int KC_>
struct TileCfg {
  static constexpr int G = G_, BN = BN_, BJ = BJ_, KS = KS_, KC = KC_;
  static constexpr int THREADS = BN * BJ * KS;
};

// Two shapes per gate count: "small" spreads a step over many blocks (each dot product
// split over 8 threads), for small batches and latency-bound steps; "large" gives each
// thread whole dot products and more reuse of the staged weights, for big N*H.
template <int G> using TileSmall = TileCfg<G, 4, 8, 8, 64>;
template <int G> using TileLarge = TileCfg<G, 16, 16, 1, 32>;

template <typename T>
struct MatParams {
  const T* A;   // [N, K], row stride lda, or nullptr
  int lda;
  const T* W;   // [J, G, K]
  int N, J, K;
};

template <class Cfg, typename T>
struct Tile {
  using A = acc_t<T>;
  static constexpr int G = Cfg::G, BN = Cfg::BN, BJ = Cfg::BJ, KS = Cfg::KS, KC = Cfg::KC;
  static constexpr int THREADS = Cfg::THREADS;

  struct Smem {
    A as[BN][KC + 1];        // +1: rows start in different banks
    A ws[BJ * G][KC + 1];
    A red[KS > 1 ? THREADS : 1][G];
  };

  // Where thread `tid` works: dot-product slice ks, row nl, unit jl within the tile.
  FASTRNN_HD static int ks_of(int tid) { return tid % KS; }
  FASTRNN_HD static int nl_of(int tid) { return (tid / KS) / BJ; }
  FASTRNN_HD static int jl_of(int tid) { return (tid / KS) % BJ; }

  // Phase 1: stage A[n0:n0+BN, k0:k0+KC] and W[j0:j0+BJ, :, k0:k0+KC] (zero-padded).
  FASTRNN_HD static void load(Smem& s, const MatParams<T>& p, int n0, int j0, int k0, int tid) {
    for (int e = tid; e < BN * KC; e += THREADS) {
      const int r = e / KC, c = e % KC, n = n0 + r, k = k0 + c;
      s.as[r][c] = (n < p.N && k < p.K) ? to_acc(p.A[static_cast<size_t>(n) * p.lda + k]) : A(0);
    }
    for (int e = tid; e < BJ * G * KC; e += THREADS) {
      const int r = e / KC, c = e % KC, k = k0 + c;
      const int j = j0 + r / G;  // rows j*G+g of W are consecutive: coalesced loads
      s.ws[r][c] = (j < p.J && k < p.K)
                       ? to_acc(p.W[(static_cast<size_t>(j0) * G + r) * p.K + k])
                       : A(0);
    }
  }

  // Phase 2: accumulate this thread's slice of the staged chunk.
  FASTRNN_HD static void compute(const Smem& s, int tid, A (&acc)[G]) {
    const int ks = ks_of(tid), nl = nl_of(tid), jl = jl_of(tid);
FASTRNN_UNROLL
    for (int c = ks; c < KC; c += KS) {
      const A a = s.as[nl][c];
FASTRNN_UNROLL
      for (int g = 0; g < G; ++g) acc[g] += a * s.ws[jl * G + g][c];
    }
  }

  // Phase 3 (KS > 1 only): publish partial sums for the reduction.
  FASTRNN_HD static void stash(Smem& s, int tid, const A (&acc)[G]) {
    if (KS > 1)
      for (int g = 0; g < G; ++g) s.red[tid][g] = acc[g];
  }

  // Phase 4: the ks == 0 thread of each (n, j) reduces and runs the epilogue.
  template <class Epi>
  FASTRNN_HD static void finish(const Smem& s, const MatParams<T>& p, const Epi& epi, int n0,
                                int j0, int tid, A (&acc)[G]) {
    if (ks_of(tid) != 0) return;
    const int n = n0 + nl_of(tid), j = j0 + jl_of(tid);
    if (n >= p.N || j >= p.J) return;
    if (KS > 1) {
      for (int g = 0; g < G; ++g) {
        A sum = A(0);
        for (int q = 0; q < KS; ++q) sum += s.red[tid + q][g];
        acc[g] = sum;
      }
    }
    epi(n, j, acc);
  }

  // Grid: x over units (ceil(J / BJ)), y over batch rows (ceil(N / BN)).
  static int grid_x(const MatParams<T>& p) { return (p.J + BJ - 1) / BJ; }
  static int grid_y(const MatParams<T>& p) { return (p.N + BN - 1) / BN; }
};

#ifdef __CUDACC__
template <class Cfg, typename T, class Epi>
__global__ void __launch_bounds__(Cfg::THREADS) tile_kernel(MatParams<T> p, Epi epi) {
  using Tl = Tile<Cfg, T>;
  using A = typename Tl::A;
  __shared__ typename Tl::Smem s;
  const int tid = threadIdx.x;
  const int n0 = blockIdx.y * Cfg::BN, j0 = blockIdx.x * Cfg::BJ;
  A acc[Cfg::G];
#pragma unroll
  for (int g = 0; g < Cfg::G; ++g) acc[g] = A(0);
  if (p.A != nullptr) {
    for (int k0 = 0; k0 < p.K; k0 += Cfg::KC) {
      Tl::load(s, p, n0, j0, k0, tid);
      __syncthreads();
      Tl::compute(s, tid, acc);
      __syncthreads();
    }
  }
  if (Cfg::KS > 1) {
    Tl::stash(s, tid, acc);
    __syncthreads();
  }
  Tl::finish(s, p, epi, n0, j0, tid, acc);
}
#endif

}  // namespace cuda
}  // namespace fastrnn
