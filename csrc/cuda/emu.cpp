// fastrnn._cuda_emu: the CUDA kernels' code run on the CPU, for testing without a GPU.
//
// The same tile phases and step epilogues that tile_kernel runs on a GPU (tile.cuh,
// lstm.cuh, gru.cuh, rnn.cuh) are executed here block by block and, between what
// would be barriers, thread by thread, on host pointers. This checks the indexing,
// tiling, padding, step order, frozen-state and gradient logic of the kernels; it
// cannot check anything GPU-specific (memory model, launch limits, half types).
// Float32 and float64 only. Shared memory is filled with NaN before each block so a
// read of a slot no thread staged shows up in the results.
#include <limits>
#include <memory>
#include <vector>

#include "bind_common.h"
#include "gru.cuh"
#include "lstm.cuh"
#include "rnn.cuh"

namespace fc = fastrnn::cuda;

namespace {

struct EmuLauncher {
  int64_t launches = 0;

  template <class Cfg, typename T, class Epi>
  void run(const fc::MatParams<T>& p, const Epi& epi) {
    using Tl = fc::Tile<Cfg, T>;
    using A = typename Tl::A;
    struct Acc {
      A v[Cfg::G];
    };
    ++launches;
    auto s = std::make_unique<typename Tl::Smem>();
    std::vector<Acc> acc(Cfg::THREADS);
    const int gx = Tl::grid_x(p), gy = Tl::grid_y(p);
    for (int by = 0; by < gy; ++by) {
      for (int bx = 0; bx < gx; ++bx) {
        A* raw = reinterpret_cast<A*>(s.get());
        for (size_t i = 0; i < sizeof(typename Tl::Smem) / sizeof(A); ++i)
          raw[i] = std::numeric_limits<A>::quiet_NaN();
        const int n0 = by * Cfg::BN, j0 = bx * Cfg::BJ;
        for (auto& a : acc)
          for (auto& v : a.v) v = A(0);
        if (p.A != nullptr) {
          for (int k0 = 0; k0 < p.K; k0 += Cfg::KC) {
            for (int tid = 0; tid < Cfg::THREADS; ++tid) Tl::load(*s, p, n0, j0, k0, tid);
            for (int tid = 0; tid < Cfg::THREADS; ++tid) Tl::compute(*s, tid, acc[tid].v);
          }
        }
        if (Cfg::KS > 1)
          for (int tid = 0; tid < Cfg::THREADS; ++tid) Tl::stash(*s, tid, acc[tid].v);
        for (int tid = 0; tid < Cfg::THREADS; ++tid) Tl::finish(*s, p, epi, n0, j0, tid, acc[tid].v);
      }
    }
  }
};

int64_t g_launches = 0;  // launches of the last call (one per step, or two with a projection)

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
  m.def("last_launch_count", []() { return g_launches; },
        "kernel launches the last call would have made on a GPU");
}
