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
// are reduced through shared memory. In tile_kernel (one launch per step) A and W are
// staged KC columns at a time; persistent_kernel keeps all of the block's W rows in
// shared memory for the whole sequence and stages all K columns of A at once (one
// round trip to L2 per step instead of one per chunk).
//
// The bodies are split into phases separated by barriers so that the host emulator
// (emu.cpp) can run them thread by thread; the kernels are at the end.
#pragma once
#include <cstring>

#include "api.h"
#include "cuda_compat.h"

#include <type_traits>

#ifdef __CUDACC__
#include <cooperative_groups.h>
#endif

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

template <typename scalar_t>
struct MatParams {
  const scalar_t* A;   // [N, K], row stride lda, or nullptr
  int lda;
  const scalar_t* W;   // [J, G, K]
  int N, J, K;
};

// Loads of data written by other blocks of the same persistent kernel go around L1
// (ld.global.cg): L1 is not coherent across SMs.
template <typename scalar_t>
FASTRNN_HD scalar_t load_cg(const scalar_t* p) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(scalar_t) == 2) {
    const unsigned short bits = __ldcg(reinterpret_cast<const unsigned short*>(p));
    scalar_t out;
    memcpy(&out, &bits, 2);
    return out;
  } else {
    return __ldcg(p);
  }
#else
  return *p;
#endif
}

// A hint that *p will be read soon: fetch its line into L2 (no-op on the host).
template <typename scalar_t>
FASTRNN_HD void prefetch_l2(const scalar_t* p) {
#if defined(__CUDA_ARCH__)
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#else
  (void)p;
#endif
}

// prefetch_l2 of the G gate entries of unit j in row n of a [N, G*H] step block.
template <int G, typename scalar_t>
FASTRNN_HD void prefetch_gates(const scalar_t* base, int n, int j, int H) {
  const scalar_t* p = base + static_cast<size_t>(n) * G * H + j;
  for (int g = 0; g < G; ++g) prefetch_l2(p + static_cast<size_t>(g) * H);
}

// has_prefetch<Epi>: whether the epilogue defines prefetch(int n, int j) const.
template <class Epi, class = void>
struct has_prefetch : std::false_type {};
template <class Epi>
struct has_prefetch<Epi, std::void_t<decltype(std::declval<const Epi&>().prefetch(0, 0))>>
    : std::true_type {};

template <class Cfg, typename scalar_t>
struct Tile {
  using A = acc_t<scalar_t>;
  static constexpr int G = Cfg::G, BN = Cfg::BN, BJ = Cfg::BJ, KS = Cfg::KS, KC = Cfg::KC;
  static constexpr int THREADS = Cfg::THREADS;
  static constexpr int RED = KS > 1 ? THREADS * G : 0;

  // Shared memory, as pointers: as [BN][ast], red [THREADS][G], ws [BJ*G][wst].
  // (+1 columns: consecutive rows start in different banks.)
  struct View {
    A* as;
    A* red;
    A* ws;
    int wst;  // row stride of ws
    int ast;  // row stride of as
  };

  // Per-step kernel: W staged KC columns at a time.
  struct Smem {
    A as[BN * (KC + 1)];
    A red[RED > 0 ? RED : 1];
    A ws[BJ * G * (KC + 1)];
  };
  FASTRNN_HD static View view(Smem& s) { return View{s.as, s.red, s.ws, KC + 1, KC + 1}; }

  // Persistent kernel: all K columns of the block's W rows and of its A rows, K padded
  // to whole chunks.
  FASTRNN_HD static int kpad(int K) { return (K + KC - 1) / KC * KC; }
  FASTRNN_HD static size_t resident_elems(int K) {
    return size_t(BN) * (kpad(K) + 1) + RED + size_t(BJ) * G * (kpad(K) + 1);
  }
  FASTRNN_HD static View resident_view(A* base, int K) {
    const size_t a = size_t(BN) * (kpad(K) + 1);
    return View{base, base + a, base + a + RED, kpad(K) + 1, kpad(K) + 1};
  }

  // Where thread `tid` works: dot-product slice ks, row nl, unit jl within the tile.
  FASTRNN_HD static int ks_of(int tid) { return tid % KS; }
  FASTRNN_HD static int nl_of(int tid) { return (tid / KS) / BJ; }
  FASTRNN_HD static int jl_of(int tid) { return (tid / KS) % BJ; }

  // Stage A[n0:n0+BN, k0:k0+ncols] into as columns 0..ncols-1 (zero-padded).
  template <bool kCoherent>
  FASTRNN_HD static void load_a(View v, const MatParams<scalar_t>& p, int n0, int k0, int ncols,
                                int tid) {
    for (int e = tid; e < BN * ncols; e += THREADS) {
      const int r = e / ncols, c = e % ncols, n = n0 + r, k = k0 + c;
      A x = A(0);
      if (n < p.N && k < p.K) {
        const scalar_t* src = p.A + static_cast<size_t>(n) * p.lda + k;
        x = to_acc(kCoherent ? load_cg(src) : *src);
      }
      v.as[r * v.ast + c] = x;
    }
  }

  // Stage W[j0:j0+BJ, :, k0:k0+ncols] into ws columns 0..ncols-1 (zero-padded).
  // Rows j*G+g of W are consecutive, so the loads are coalesced.
  FASTRNN_HD static void load_w(View v, const MatParams<scalar_t>& p, int j0, int k0, int ncols, int tid) {
    for (int e = tid; e < BJ * G * ncols; e += THREADS) {
      const int r = e / ncols, c = e % ncols, k = k0 + c;
      const int j = j0 + r / G;
      v.ws[r * v.wst + c] = (j < p.J && k < p.K)
                                ? to_acc(p.W[(static_cast<size_t>(j0) * G + r) * p.K + k])
                                : A(0);
    }
  }

  // Accumulate this thread's slice of the staged A chunk (one KC chunk) against ws
  // columns wc0.. .
  FASTRNN_HD static void compute(View v, int wc0, int tid, A (&acc)[G]) {
    const int ks = ks_of(tid), nl = nl_of(tid), jl = jl_of(tid);
    const A* arow = v.as + nl * v.ast;
    const A* wrow = v.ws + jl * G * v.wst + wc0;
    FASTRNN_UNROLL
    for (int c = ks; c < KC; c += KS) {
      const A a = arow[c];
      FASTRNN_UNROLL
      for (int g = 0; g < G; ++g) acc[g] += a * wrow[g * v.wst + c];
    }
  }

  // The same over all `nchunks` staged chunks (persistent kernels, A staged whole).
  FASTRNN_HD static void compute_all(View v, int nchunks, int tid, A (&acc)[G]) {
    for (int q = 0; q < nchunks; ++q) {
      View w = v;
      w.as += q * KC;
      compute(w, q * KC, tid, acc);
    }
  }

  // Ask L2 for what the epilogue of this thread's (n, j) will read in a later step
  // (epilogues that define prefetch(n, j); others: nothing).
  template <class Epi>
  FASTRNN_HD static void prefetch(const MatParams<scalar_t>& p, const Epi& epi, int n0, int j0,
                                  int tid) {
    if constexpr (has_prefetch<Epi>::value) {
      if (ks_of(tid) != 0) return;
      const int n = n0 + nl_of(tid), j = j0 + jl_of(tid);
      if (n < p.N && j < p.J) epi.prefetch(n, j);
    }
  }

  // (KS > 1 only) publish partial sums for the reduction.
  FASTRNN_HD static void stash(View v, int tid, const A (&acc)[G]) {
    if (KS > 1)
      for (int g = 0; g < G; ++g) v.red[tid * G + g] = acc[g];
  }

  // The ks == 0 thread of each (n, j) reduces and runs the epilogue.
  template <class Epi>
  FASTRNN_HD static void finish(View v, const MatParams<scalar_t>& p, const Epi& epi, int n0, int j0,
                                int tid, A (&acc)[G]) {
    if (ks_of(tid) != 0) return;
    const int n = n0 + nl_of(tid), j = j0 + jl_of(tid);
    if (n >= p.N || j >= p.J) return;
    if (KS > 1) {
      for (int g = 0; g < G; ++g) {
        A sum = A(0);
        for (int q = 0; q < KS; ++q) sum += v.red[(tid + q) * G + g];
        acc[g] = sum;
      }
    }
    epi(n, j, acc);
  }

  FASTRNN_HD static void zero(A (&acc)[G]) {
    for (int g = 0; g < G; ++g) acc[g] = A(0);
  }

  // Grid: x over units (ceil(J / BJ)), y over batch rows (ceil(N / BN)).
  FASTRNN_HD static int grid_x(const MatParams<scalar_t>& p) { return (p.J + BJ - 1) / BJ; }
  FASTRNN_HD static int grid_y(const MatParams<scalar_t>& p) { return (p.N + BN - 1) / BN; }
};

#ifdef __CUDACC__
// One step: one launch over the (unit tile, row tile) grid.
template <class Cfg, typename scalar_t, class Epi>
__global__ void __launch_bounds__(Cfg::THREADS) tile_kernel(MatParams<scalar_t> p, Epi epi) {
  using Tl = Tile<Cfg, scalar_t>;
  using A = typename Tl::A;
  __shared__ typename Tl::Smem s;
  const typename Tl::View v = Tl::view(s);
  const int tid = threadIdx.x;
  const int n0 = blockIdx.y * Cfg::BN, j0 = blockIdx.x * Cfg::BJ;
  A acc[Cfg::G];
  Tl::zero(acc);
  if (p.A != nullptr) {
    for (int k0 = 0; k0 < p.K; k0 += Cfg::KC) {
      Tl::template load_a<false>(v, p, n0, k0, Cfg::KC, tid);
      Tl::load_w(v, p, j0, k0, Cfg::KC, tid);
      __syncthreads();
      Tl::compute(v, 0, tid, acc);
      __syncthreads();
    }
  }
  if (Cfg::KS > 1) {
    Tl::stash(v, tid, acc);
    __syncthreads();
  }
  Tl::finish(v, p, epi, n0, j0, tid, acc);
}

// Barrier between the steps of a persistent kernel: the whole grid (cooperative
// launch), or the thread-block cluster (kCluster: a cluster is the gx unit tiles of one
// row tile, which is all a row tile's next step reads; sm_90+). Both order this step's
// global writes before the next step's reads (release/acquire at their scope).
template <bool kCluster>
__device__ __forceinline__ void step_barrier() {
  if constexpr (kCluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cooperative_groups::this_cluster().sync();
#else
    __trap();  // the launcher never starts the cluster kernel below sm_90
#endif
  } else {
    cooperative_groups::this_grid().sync();
  }
}

// The whole sequence in one launch. `Steps` describes launch i of the per-step path:
// count(), mat(i) (same W and K for every i) and epi(i). Block x owns units
// [x*BJ, x*BJ+BJ) for the whole sequence with their W rows resident in shared memory;
// it walks row tiles y = blockIdx.y, y + gridDim.y, ... (kCluster: gridDim.y is every
// row tile, so one each). Per step it stages all of A at once, asks L2 for what the
// next step's epilogue reads, computes, and meets the other blocks at step_barrier.
template <class Cfg, typename scalar_t, class Steps, bool kCluster>
__global__ void __launch_bounds__(Cfg::THREADS) persistent_kernel(Steps steps) {
  using Tl = Tile<Cfg, scalar_t>;
  using A = typename Tl::A;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int tid = threadIdx.x;
  const int j0 = blockIdx.x * Cfg::BJ;
  const MatParams<scalar_t> p0 = steps.mat(0);
  const int kp = Tl::kpad(p0.K), nchunks = kp / Cfg::KC;
  const typename Tl::View v = Tl::resident_view(reinterpret_cast<A*>(smem_raw), p0.K);
  Tl::load_w(v, p0, j0, 0, kp, tid);
  __syncthreads();
  const int count = steps.count();
  for (int i = 0; i < count; ++i) {
    const MatParams<scalar_t> p = steps.mat(i);
    const auto epi = steps.epi(i);
    for (int by = blockIdx.y; by < Tl::grid_y(p); by += gridDim.y) {
      const int n0 = by * Cfg::BN;
      if (i + 1 < count) Tl::prefetch(p, steps.epi(i + 1), n0, j0, tid);
      A acc[Cfg::G];
      Tl::zero(acc);
      if (p.A != nullptr) {
        Tl::template load_a<true>(v, p, n0, 0, kp, tid);
        __syncthreads();
        Tl::compute_all(v, nchunks, tid, acc);
      }
      if (Cfg::KS > 1) {
        Tl::stash(v, tid, acc);
        __syncthreads();
      }
      Tl::finish(v, p, epi, n0, j0, tid, acc);
      __syncthreads();  // as and red are reused by the next row tile
    }
    step_barrier<kCluster>();
  }
}
#endif

}  // namespace cuda
}  // namespace fastrnn
