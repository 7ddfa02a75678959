// fastrnn._cuda_emu: the CUDA kernels' code run on the CPU, for testing without a GPU.
//
// The same tile phases and step epilogues that tile_kernel runs on a GPU (tile.cuh,
// lstm.cuh, gru.cuh, rnn.cuh) are executed here block by block and, between what
// would be barriers, thread by thread, on host pointers. This checks the indexing,
// tiling, padding, step order, frozen-state and gradient logic of the kernels; it
// cannot check anything GPU-specific (memory model, launch limits, half types).
// The persistent (one-launch) path is emulated too: see run_persistent.
// Float32 and float64 only. Shared memory is filled with NaN before each block so a
// read of a slot no thread staged shows up in the results.
//
// set_shuffle(seed) runs the blocks of each launch, and the threads of each phase, in a
// random order: correct kernels give bit-identical results in any order, so a
// difference exposes a race (a block reading what another block of the same launch
// writes, or a thread depending on another within a barrier interval).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "bind_common.h"
#include "gru.cuh"
#include "lstm.cuh"
#include "rnn.cuh"

namespace fc = fastrnn::cuda;

namespace {

uint64_t g_seed = 0;  // 0: in order
std::mt19937_64 g_rng;

// 0 .. n-1, shuffled when a seed is set.
std::vector<int> order(int n) {
  std::vector<int> v(n);
  std::iota(v.begin(), v.end(), 0);
  if (g_seed != 0) std::shuffle(v.begin(), v.end(), g_rng);
  return v;
}

// Every (bx, by) of a gx x gy grid, shuffled when a seed is set.
std::vector<std::pair<int, int>> blocks(int gx, int gy) {
  std::vector<std::pair<int, int>> out;
  for (int i : order(gx * gy)) out.emplace_back(i % gx, i / gx);
  return out;
}

struct EmuLauncher {
  int64_t launches = 0;
  int64_t cluster_launches = 0;

  template <class Cfg, typename scalar_t, class Epi>
  void run(const fc::MatParams<scalar_t>& p, const Epi& epi) {
    using Tl = fc::Tile<Cfg, scalar_t>;
    using A = typename Tl::A;
    struct Acc {
      A v[Cfg::G];
    };
    ++launches;
    auto s = std::make_unique<typename Tl::Smem>();
    std::vector<Acc> acc(Cfg::THREADS);
    const int gx = Tl::grid_x(p), gy = Tl::grid_y(p);
    for (const auto& b : blocks(gx, gy)) {
      const int bx = b.first, by = b.second;
      {
        A* raw = reinterpret_cast<A*>(s.get());
        for (size_t i = 0; i < sizeof(typename Tl::Smem) / sizeof(A); ++i)
          raw[i] = std::numeric_limits<A>::quiet_NaN();
        const auto v = Tl::view(*s);
        const int n0 = by * Cfg::BN, j0 = bx * Cfg::BJ;
        for (auto& a : acc)
          for (auto& v : a.v) v = A(0);
        if (p.A != nullptr) {
          for (int k0 = 0; k0 < p.K; k0 += Cfg::KC) {
            for (int tid : order(Cfg::THREADS)) {
              Tl::template load_a<false>(v, p, n0, k0, Cfg::KC, tid);
              Tl::load_w(v, p, j0, k0, Cfg::KC, tid);
            }
            for (int tid : order(Cfg::THREADS)) Tl::compute(v, 0, tid, acc[tid].v);
          }
        }
        if (Cfg::KS > 1)
          for (int tid : order(Cfg::THREADS)) Tl::stash(v, tid, acc[tid].v);
        for (int tid : order(Cfg::THREADS)) Tl::finish(v, p, epi, n0, j0, tid, acc[tid].v);
      }
    }
  }

  // persistent_kernel, emulated: one shared-memory image per block, kept across steps;
  // the grid is given half the row tiles it needs so each block walks several (as on
  // a GPU whose capacity is short), and the grid barrier is the end of each step.
  template <class Cfg, typename scalar_t, class Steps>
  bool run_persistent(const Steps& st) {
    return emulate_persistent<Cfg, scalar_t>(st, false);
  }

  // The cluster kind: every row tile has its own blocks (a cluster of gx), and the
  // cluster barrier is the end of each step. Refused, as on the GPU, above 16 unit tiles.
  template <class Cfg, typename scalar_t, class Steps>
  bool run_cluster(const Steps& st) {
    using Tl = fc::Tile<Cfg, scalar_t>;
    if (Tl::grid_x(st.mat(0)) > fc::kMaxClusterBlocks) return false;
    ++cluster_launches;
    return emulate_persistent<Cfg, scalar_t>(st, true);
  }

  template <class Cfg, typename scalar_t, class Steps>
  bool emulate_persistent(const Steps& st, bool every_row_tile) {
    using Tl = fc::Tile<Cfg, scalar_t>;
    using A = typename Tl::A;
    struct Acc {
      A v[Cfg::G];
    };
    ++launches;
    const fc::MatParams<scalar_t> p0 = st.mat(0);
    const int gx = Tl::grid_x(p0), gy_all = Tl::grid_y(p0);
    const int gy = every_row_tile ? gy_all : (gy_all + 1) / 2;
    const int kp = Tl::kpad(p0.K);
    const size_t elems = Tl::resident_elems(p0.K);
    std::vector<std::vector<A>> smem(size_t(gx) * gy,
                                     std::vector<A>(elems, std::numeric_limits<A>::quiet_NaN()));
    auto view = [&](int bx, int by) { return Tl::resident_view(smem[size_t(by) * gx + bx].data(), p0.K); };
    for (const auto& b : blocks(gx, gy))
      for (int tid : order(Cfg::THREADS))
        Tl::load_w(view(b.first, b.second), p0, b.first * Cfg::BJ, 0, kp, tid);
    std::vector<Acc> acc(Cfg::THREADS);
    for (int i = 0; i < st.count(); ++i) {
      const fc::MatParams<scalar_t> p = st.mat(i);
      const auto epi = st.epi(i);
      for (const auto& b : blocks(gx, gy)) {
        const int bx = b.first, bgy = b.second;
        {
          const auto v = view(bx, bgy);
          const int j0 = bx * Cfg::BJ;
          for (int by = bgy; by < Tl::grid_y(p); by += gy) {
            const int n0 = by * Cfg::BN;
            if (i + 1 < st.count())
              for (int tid : order(Cfg::THREADS)) Tl::prefetch(p, st.epi(i + 1), n0, j0, tid);
            for (auto& a : acc) Tl::zero(a.v);
            if (p.A != nullptr) {
              for (int tid : order(Cfg::THREADS)) Tl::template load_a<true>(v, p, n0, 0, kp, tid);
              for (int tid : order(Cfg::THREADS))
                Tl::compute_all(v, kp / Cfg::KC, tid, acc[tid].v);
            }
            if (Cfg::KS > 1)
              for (int tid : order(Cfg::THREADS)) Tl::stash(v, tid, acc[tid].v);
            for (int tid : order(Cfg::THREADS)) Tl::finish(v, p, epi, n0, j0, tid, acc[tid].v);
          }
        }
      }
    }
    return true;
  }
};

int64_t g_launches = 0;  // launches of the last call (one per step, or two with a projection)
int64_t g_cluster_launches = 0;  // of which cluster launches

template <class Args, class F>
void emu_dispatch(int dtype, const Args& a, F f) {
  EmuLauncher l;
  if (dtype == fc::kFloat32)
    f(float(), a, l);
  else if (dtype == fc::kFloat64)
    f(double(), a, l);
  else
    throw std::invalid_argument("fastrnn._cuda_emu supports float32 and float64 only");
  g_launches = l.launches;
  g_cluster_launches = l.cluster_launches;
}

struct EmuBackend {
  static void lstm_forward(int d, const fc::LstmForwardArgs& a, void*) {
    emu_dispatch(d, a, [](auto x, const auto& a, EmuLauncher& l) { fc::lstm_forward_steps<decltype(x)>(a, l); });
  }
  static void lstm_backward(int d, const fc::LstmBackwardArgs& a, void*) {
    emu_dispatch(d, a, [](auto x, const auto& a, EmuLauncher& l) { fc::lstm_backward_steps<decltype(x)>(a, l); });
  }
  static void gru_forward(int d, const fc::GruForwardArgs& a, void*) {
    emu_dispatch(d, a, [](auto x, const auto& a, EmuLauncher& l) { fc::gru_forward_steps<decltype(x)>(a, l); });
  }
  static void gru_backward(int d, const fc::GruBackwardArgs& a, void*) {
    emu_dispatch(d, a, [](auto x, const auto& a, EmuLauncher& l) { fc::gru_backward_steps<decltype(x)>(a, l); });
  }
  static void rnn_forward(int d, const fc::RnnForwardArgs& a, void*) {
    emu_dispatch(d, a, [](auto x, const auto& a, EmuLauncher& l) { fc::rnn_forward_steps<decltype(x)>(a, l); });
  }
  static void rnn_backward(int d, const fc::RnnBackwardArgs& a, void*) {
    emu_dispatch(d, a, [](auto x, const auto& a, EmuLauncher& l) { fc::rnn_backward_steps<decltype(x)>(a, l); });
  }
};

}  // namespace

PYBIND11_MODULE(_cuda_emu, m) {
  m.doc() = "fastrnn CUDA kernel code executed on the CPU (testing aid; float32/float64)";
  fc::def_rnn_api<EmuBackend>(m);
  m.def("last_cluster_launch_count", []() { return g_cluster_launches; },
        "how many of the last call's launches were cluster launches");
  m.def("last_launch_count", []() { return g_launches; },
        "kernel launches the last call would have made on a GPU");
  m.def(
      "set_shuffle",
      [](uint64_t seed) {
        g_seed = seed;
        g_rng.seed(seed);
      },
      pybind11::arg("seed"),
      "run blocks and threads in a random order from this seed (0: in order)");
}
