// Fused Elman RNN recurrence (h' = act(x W_ih^T + b + h W_hh^T), act tanh or relu).
// Per step ONE fused GEMM whose epilogue adds the input projection and applies
// the nonlinearity; backward likewise.
#include "cpu/fused_gemm.h"
#include "cpu/kernels.h"

namespace fastrnn {
namespace cpu {
namespace FASTRNN_ISA {

template <typename scalar_t>
void rnn_forward(const RnnForwardParams<scalar_t>& a) {
  constexpr int W = Vec<scalar_t>::W;
  using V = vec_t<scalar_t>;
  const int64_t T = a.T, N = a.N, H = a.H;
  int64_t P = 0;
  Packed<scalar_t> w = pack_units_cached<scalar_t, 4>(a.w_hh, H, H, /*transposed=*/true, &P);  // h @ W_hh^T
  run_team(a.num_threads, [&](int tid, int nthr, TeamBarrier* bar) {
    const WorkSplit ws(P, N, tid, nthr, rows_per_tile<4>(), bar);
    for_each_step(ws, T, a.reverse, /*backward=*/false, [&](int64_t s, int64_t t) {
      const scalar_t* hprev = s == 0 ? a.h0 : a.y + prev_time(t, a.reverse) * N * H;
      scalar_t* yt = a.y + t * N * H;
      const scalar_t* xgt = a.xg + t * N * H;
      fused_gemm<scalar_t, 4>(ws, hprev, H, H, w.get(), [&](int64_t p, int64_t n, const V* acc) {
        const bool valid = step_valid(a.lengths, n, t);
        for (int b = 0; b < 4; ++b) {
          const int64_t u = (p * 4 + b) * W;
          if (u >= H) break;
          const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
          V h;
          if (!valid) {
            h = vload_n(hprev + n * H + u, cnt);
          } else {
            const V pre = acc[b] + vload_n(xgt + n * H + u, cnt);
            h = a.relu ? vrelu<scalar_t>(pre) : vtanh<scalar_t>(pre);
          }
          vstore_n(yt + n * H + u, h, cnt);
        }
      });
    });
  });
}

template <typename scalar_t>
void rnn_backward(const RnnBackwardParams<scalar_t>& a) {
  constexpr int W = Vec<scalar_t>::W;
  using V = vec_t<scalar_t>;
  const int64_t T = a.T, N = a.N, H = a.H;
  int64_t P = 0;
  Packed<scalar_t> w = pack_units_cached<scalar_t, 4>(a.w_hh, H, H, /*transposed=*/false, &P);  // dpre @ W_hh
  Buffer<scalar_t> carry = make_buffer<scalar_t>(N * H);  // dh carried past frozen steps
  run_team(a.num_threads, [&](int tid, int nthr, TeamBarrier* bar) {
    const WorkSplit ws(P, N, tid, nthr, rows_per_tile<4>(), bar);
    for_each_step(ws, T, a.reverse, /*backward=*/true, [&](int64_t s, int64_t t) {
      const scalar_t* d_next = s == 0 ? nullptr : a.dxg + (a.reverse ? t - 1 : t + 1) * N * H;
      const scalar_t* dyt = a.dy + t * N * H;
      const scalar_t* yt = a.y + t * N * H;
      scalar_t* dx = a.dxg + t * N * H;
      fused_gemm<scalar_t, 4>(ws, d_next, H, H, w.get(), [&](int64_t p, int64_t n, const V* acc) {
        const bool valid = step_valid(a.lengths, n, t);
        for (int b = 0; b < 4; ++b) {
          const int64_t u = (p * 4 + b) * W;
          if (u >= H) break;
          const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
          scalar_t* cr = carry.get() + n * H + u;
          const V dh = acc[b] + vload_n(dyt + n * H + u, cnt) + vload_n(cr, cnt);
          if (!valid) {
            vstore_n(dx + n * H + u, vzero<scalar_t>(), cnt);
            vstore_n(cr, dh, cnt);
            continue;
          }
          const V h = vload_n(yt + n * H + u, cnt);
          const V d = a.relu ? (h > vzero<scalar_t>() ? dh : vzero<scalar_t>()) : dh * ((scalar_t)1 - h * h);
          vstore_n(dx + n * H + u, d, cnt);
          vstore_n(cr, vzero<scalar_t>(), cnt);
        }
      });
    });
    const scalar_t* d_first = a.dxg + (a.reverse ? T - 1 : 0) * N * H;
    gemm_plus_carry<scalar_t>(ws, d_first, H, w.get(), H, carry.get(), a.dh0);
  });
}

FASTRNN_INSTANTIATE(rnn_forward, RnnForwardParams)
FASTRNN_INSTANTIATE(rnn_backward, RnnBackwardParams)

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
