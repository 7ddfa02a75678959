// pybind11 glue shared by fastrnn._cuda (bindings_cuda.cpp) and the host emulator
// fastrnn._cuda_emu (emu.cpp). Thin: pointers arrive as Python ints (tensor.data_ptr()),
// the stream as an int (torch.cuda.current_stream().cuda_stream); this checks sizes
// and required pointers, releases the GIL and calls the backend's time-loop function.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "api.h"

namespace fastrnn {
namespace cuda {
namespace py = pybind11;
using ptr_t = std::uintptr_t;

inline const void* cp(ptr_t p) { return reinterpret_cast<const void*>(p); }
inline void* mp(ptr_t p) { return reinterpret_cast<void*>(p); }
inline const int64_t* lp(ptr_t p) { return reinterpret_cast<const int64_t*>(p); }

inline void require(bool ok, const char* fn, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("fastrnn.") + fn + ": " + what);
}
inline void check_common(const char* fn, int dtype, int T, int N, int H, int tile,
                         int persistent) {
  require(persistent >= kPersistNone && persistent <= kPersistCluster, fn,
          "persistent must be 0 (per step), 1 (grid) or 2 (cluster)");
  require(dtype >= kFloat32 && dtype <= kBFloat16, fn, "dtype code must be 0..3");
  require(T >= 1 && N >= 1 && H >= 1, fn, "sizes T, N, H must be >= 1");
  require(tile == kTileSmall || tile == kTileLarge, fn, "tile must be 0 (small) or 1 (large)");
  // Offsets are size_t, but grid and loop counters are int.
  require(int64_t(N) * 4 * H < (int64_t(1) << 31), fn, "N * 4H must be below 2^31");
}
inline void require_ptrs(const char* fn, std::initializer_list<std::pair<const char*, ptr_t>> ps) {
  for (const auto& p : ps) require(p.second != 0, fn, std::string(p.first) + " must not be null");
}

// B provides: lstm_forward(int dtype, const LstmForwardArgs&, void* stream), ... for the six calls.
template <class B>
void def_rnn_api(py::module_& m) {
  using py::arg;
  m.def(
      "lstm_forward",
      [](int dtype, int T, int N, int H, int R, ptr_t xg, ptr_t h0, ptr_t w_hh, ptr_t w_hr,
         ptr_t lengths, bool reverse, ptr_t y, ptr_t c, ptr_t gates, ptr_t cs, ptr_t m_ws,
         int tile, ptr_t stream, int persistent, ptr_t w_ch) {
        const char* fn = "lstm_forward";
        check_common(fn, dtype, T, N, H, tile, persistent);
        require(R >= 1, fn, "R must be >= 1");
        require_ptrs(fn, {{"xg", xg}, {"h0", h0}, {"w_hh", w_hh}, {"y", y}, {"c", c}});
        require((gates == 0) == (cs == 0), fn, "gates and cs must both be given (training) or neither");
        require((w_hr == 0) == (m_ws == 0), fn, "w_hr and m must both be given (projection) or neither");
        require(w_hr != 0 || R == H, fn, "R must equal H without a projection");
        LstmForwardArgs a{T, N, H, R, cp(xg), cp(h0), cp(w_hh), cp(w_hr), cp(w_ch), lp(lengths), reverse,
                          mp(y), mp(c), mp(gates), mp(cs), mp(m_ws), tile, persistent};
        py::gil_scoped_release nogil;
        B::lstm_forward(dtype, a, mp(stream));
      },
      arg("dtype"), arg("T"), arg("N"), arg("H"), arg("R"), arg("xg"), arg("h0"), arg("w_hh"),
      arg("w_hr"), arg("lengths"), arg("reverse"), arg("y"), arg("c"), arg("gates"), arg("cs"),
      arg("m"), arg("tile"), arg("stream"), arg("persistent") = 0, arg("w_ch") = 0);
  m.def(
      "lstm_backward",
      [](int dtype, int T, int N, int H, int R, ptr_t dy, ptr_t c0, ptr_t w_hh_t, ptr_t w_hr_t,
         ptr_t lengths, bool reverse, ptr_t gates, ptr_t cs, ptr_t dgates, ptr_t dh0,
         ptr_t dh_carry, ptr_t dc, ptr_t dr, int tile, ptr_t stream, int persistent, ptr_t w_ch) {
        const char* fn = "lstm_backward";
        check_common(fn, dtype, T, N, H, tile, persistent);
        require(R >= 1, fn, "R must be >= 1");
        require_ptrs(fn, {{"dy", dy}, {"c0", c0}, {"w_hh_t", w_hh_t}, {"gates", gates}, {"cs", cs},
                          {"dgates", dgates}, {"dh0", dh0}, {"dh_carry", dh_carry}, {"dc", dc}});
        require((w_hr_t == 0) == (dr == 0), fn, "w_hr_t and dr must both be given (projection) or neither");
        require(w_hr_t != 0 || R == H, fn, "R must equal H without a projection");
        LstmBackwardArgs a{T, N, H, R, cp(dy), cp(c0), cp(w_hh_t), cp(w_hr_t), cp(w_ch), lp(lengths),
                           reverse, cp(gates), cp(cs), mp(dgates), mp(dh0), mp(dh_carry), mp(dc),
                           mp(dr), tile, persistent};
        py::gil_scoped_release nogil;
        B::lstm_backward(dtype, a, mp(stream));
      },
      arg("dtype"), arg("T"), arg("N"), arg("H"), arg("R"), arg("dy"), arg("c0"), arg("w_hh_t"),
      arg("w_hr_t"), arg("lengths"), arg("reverse"), arg("gates"), arg("cs"), arg("dgates"),
      arg("dh0"), arg("dh_carry"), arg("dc"), arg("dr"), arg("tile"), arg("stream"), arg("persistent") = 0,
      arg("w_ch") = 0);
  m.def(
      "gru_forward",
      [](int dtype, int T, int N, int H, ptr_t xg, ptr_t h0, ptr_t w_hh, ptr_t b_hh,
         ptr_t lengths, bool reverse, ptr_t y, ptr_t saved, int tile, ptr_t stream, int persistent) {
        const char* fn = "gru_forward";
        check_common(fn, dtype, T, N, H, tile, persistent);
        require_ptrs(fn, {{"xg", xg}, {"h0", h0}, {"w_hh", w_hh}, {"b_hh", b_hh}, {"y", y}});
        GruForwardArgs a{T, N, H, cp(xg), cp(h0), cp(w_hh), cp(b_hh), lp(lengths), reverse,
                         mp(y), mp(saved), tile, persistent};
        py::gil_scoped_release nogil;
        B::gru_forward(dtype, a, mp(stream));
      },
      arg("dtype"), arg("T"), arg("N"), arg("H"), arg("xg"), arg("h0"), arg("w_hh"), arg("b_hh"),
      arg("lengths"), arg("reverse"), arg("y"), arg("saved"), arg("tile"), arg("stream"), arg("persistent") = 0);
  m.def(
      "gru_backward",
      [](int dtype, int T, int N, int H, ptr_t dy, ptr_t h0, ptr_t w_hh_t, ptr_t lengths,
         bool reverse, ptr_t y, ptr_t saved, ptr_t dxg, ptr_t dh0, ptr_t dh_carry, ptr_t dhg,
         int tile, ptr_t stream, int persistent) {
        const char* fn = "gru_backward";
        check_common(fn, dtype, T, N, H, tile, persistent);
        require_ptrs(fn, {{"dy", dy}, {"h0", h0}, {"w_hh_t", w_hh_t}, {"y", y}, {"saved", saved},
                          {"dxg", dxg}, {"dh0", dh0}, {"dh_carry", dh_carry}, {"dhg", dhg}});
        GruBackwardArgs a{T, N, H, cp(dy), cp(h0), cp(w_hh_t), lp(lengths), reverse, cp(y),
                          cp(saved), mp(dxg), mp(dh0), mp(dh_carry), mp(dhg), tile, persistent};
        py::gil_scoped_release nogil;
        B::gru_backward(dtype, a, mp(stream));
      },
      arg("dtype"), arg("T"), arg("N"), arg("H"), arg("dy"), arg("h0"), arg("w_hh_t"),
      arg("lengths"), arg("reverse"), arg("y"), arg("saved"), arg("dxg"), arg("dh0"),
      arg("dh_carry"), arg("dhg"), arg("tile"), arg("stream"), arg("persistent") = 0);
  m.def(
      "rnn_forward",
      [](int dtype, int T, int N, int H, ptr_t xg, ptr_t h0, ptr_t w_hh, ptr_t lengths,
         bool reverse, bool relu, ptr_t y, int tile, ptr_t stream, int persistent) {
        const char* fn = "rnn_forward";
        check_common(fn, dtype, T, N, H, tile, persistent);
        require_ptrs(fn, {{"xg", xg}, {"h0", h0}, {"w_hh", w_hh}, {"y", y}});
        RnnForwardArgs a{T, N, H, cp(xg), cp(h0), cp(w_hh), lp(lengths), reverse, relu, mp(y), tile, persistent};
        py::gil_scoped_release nogil;
        B::rnn_forward(dtype, a, mp(stream));
      },
      arg("dtype"), arg("T"), arg("N"), arg("H"), arg("xg"), arg("h0"), arg("w_hh"),
      arg("lengths"), arg("reverse"), arg("relu"), arg("y"), arg("tile"), arg("stream"), arg("persistent") = 0);
  m.def(
      "rnn_backward",
      [](int dtype, int T, int N, int H, ptr_t dy, ptr_t w_hh_t, ptr_t lengths, bool reverse,
         bool relu, ptr_t y, ptr_t dxg, ptr_t dh0, ptr_t dh_carry, int tile, ptr_t stream, int persistent) {
        const char* fn = "rnn_backward";
        check_common(fn, dtype, T, N, H, tile, persistent);
        require_ptrs(fn, {{"dy", dy}, {"w_hh_t", w_hh_t}, {"y", y}, {"dxg", dxg}, {"dh0", dh0},
                          {"dh_carry", dh_carry}});
        RnnBackwardArgs a{T, N, H, cp(dy), cp(w_hh_t), lp(lengths), reverse, relu, cp(y),
                          mp(dxg), mp(dh0), mp(dh_carry), tile, persistent};
        py::gil_scoped_release nogil;
        B::rnn_backward(dtype, a, mp(stream));
      },
      arg("dtype"), arg("T"), arg("N"), arg("H"), arg("dy"), arg("w_hh_t"), arg("lengths"),
      arg("reverse"), arg("relu"), arg("y"), arg("dxg"), arg("dh0"), arg("dh_carry"), arg("tile"),
      arg("stream"), arg("persistent") = 0);
}

}  // namespace cuda
}  // namespace fastrnn
