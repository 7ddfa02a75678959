// Fused GRU recurrence (torch.nn semantics, gates r,z,n; n = tanh(x_n + r*(W_hn h + b_hn)),
// h' = (1-z) n + z h). Per step ONE fused GEMM over gate-major W_hh panels; the
// epilogue adds b_hh, applies the gates and updates h. Backward: one fused GEMM
// (dhg_{t+1} @ W_hh) per step whose epilogue produces this step's gate gradients.
#include "cpu/fused_gemm.h"
#include "cpu/gate_grads.h"
#include "cpu/kernels.h"

namespace fastrnn {
namespace cpu {
namespace FASTRNN_ISA {

template <typename scalar_t>
void gru_forward(const GruForwardParams<scalar_t>& a) {
  constexpr int W = Vec<scalar_t>::W;
  using V = vec_t<scalar_t>;
  const int64_t T = a.T, N = a.N, H = a.H, G3 = 3 * H;
  int64_t P = 0;
  Packed<scalar_t> w_gates = pack_gate_major_cached<scalar_t, 3>(a.w_hh, H, H, &P);  // h @ W_hh^T
  run_team(a.num_threads, [&](int tid, int nthr, TeamBarrier* bar) {
    const WorkSplit ws(P, N, tid, nthr, rows_per_tile<3>(), bar);
    for_each_step(ws, T, a.reverse, /*backward=*/false, [&](int64_t s, int64_t t) {
      const scalar_t* hprev = s == 0 ? a.h0 : a.y + prev_time(t, a.reverse) * N * H;
      scalar_t* yt = a.y + t * N * H;
      const scalar_t* xgt = a.xg + t * N * G3;
      scalar_t* sv = a.saved ? a.saved + t * N * 4 * H : nullptr;
      fused_gemm<scalar_t, 3>(ws, hprev, H, H, w_gates.get(), [&](int64_t p, int64_t n, const V* acc) {
        const int64_t u = p * W;
        const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
        const V hp = vload_n(hprev + n * H + u, cnt);
        scalar_t* svr = sv ? sv + n * 4 * H + u : nullptr;
        if (!step_valid(a.lengths, n, t)) {  // frozen state
          vstore_n(yt + n * H + u, hp, cnt);
          if (svr)
            for (int g = 0; g < 4; ++g) vstore_n(svr + g * H, vzero<scalar_t>(), cnt);
          return;
        }
        const scalar_t* x = xgt + n * G3 + u;
        const scalar_t* b = a.b_hh + u;
        const V hr = acc[0] + vload_n(b, cnt);
        const V hz = acc[1] + vload_n(b + H, cnt);
        const V hn = acc[2] + vload_n(b + 2 * H, cnt);
        const V r = vsigmoid<scalar_t>(vload_n(x, cnt) + hr);
        const V z = vsigmoid<scalar_t>(vload_n(x + H, cnt) + hz);
        const V nn = vtanh<scalar_t>(vload_n(x + 2 * H, cnt) + r * hn);
        vstore_n(yt + n * H + u, ((scalar_t)1 - z) * nn + z * hp, cnt);
        if (svr) {
          vstore_n(svr, r, cnt);
          vstore_n(svr + H, z, cnt);
          vstore_n(svr + 2 * H, nn, cnt);
          vstore_n(svr + 3 * H, hn, cnt);
        }
      });
    });
  });
}

template <typename scalar_t>
void gru_backward(const GruBackwardParams<scalar_t>& a) {
  constexpr int W = Vec<scalar_t>::W;
  using V = vec_t<scalar_t>;
  const int64_t T = a.T, N = a.N, H = a.H, G3 = 3 * H;
  int64_t P = 0;
  Packed<scalar_t> w_back = pack_units_cached<scalar_t, 4>(a.w_hh, G3, H, /*transposed=*/false, &P);  // dhg @ W_hh
  // Gradient w.r.t. hg = h W_hh^T + b_hh of the last two steps (double buffer),
  // and dh carried directly to the previous step (z * dh, or all of dh past a
  // frozen step).
  Buffer<scalar_t> dhg = make_buffer<scalar_t>(2 * N * G3);
  Buffer<scalar_t> carry = make_buffer<scalar_t>(N * H);
  run_team(a.num_threads, [&](int tid, int nthr, TeamBarrier* bar) {
    const WorkSplit ws(P, N, tid, nthr, rows_per_tile<4>(), bar);
    for_each_step(ws, T, a.reverse, /*backward=*/true, [&](int64_t s, int64_t t) {
      const scalar_t* dhg_next = s == 0 ? nullptr : dhg.get() + ((s - 1) & 1) * N * G3;
      scalar_t* dhg_cur = dhg.get() + (s & 1) * N * G3;
      const bool first_fwd = a.reverse ? t == T - 1 : t == 0;
      const scalar_t* hprev = first_fwd ? a.h0 : a.y + prev_time(t, a.reverse) * N * H;
      const scalar_t* dyt = a.dy + t * N * H;
      const scalar_t* sv = a.saved + t * N * 4 * H;
      scalar_t* dx = a.dxg + t * N * G3;
      fused_gemm<scalar_t, 4>(ws, dhg_next, G3, G3, w_back.get(), [&](int64_t p, int64_t n, const V* acc) {
        const bool valid = step_valid(a.lengths, n, t);
        for (int b = 0; b < 4; ++b) {
          const int64_t u = (p * 4 + b) * W;
          if (u >= H) break;
          const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
          scalar_t* cr = carry.get() + n * H + u;
          const V dh = acc[b] + vload_n(dyt + n * H + u, cnt) + vload_n(cr, cnt);
          scalar_t* dxr = dx + n * G3 + u;
          scalar_t* dhr = dhg_cur + n * G3 + u;
          if (!valid) {
            for (int g = 0; g < 3; ++g) {
              vstore_n(dxr + g * H, vzero<scalar_t>(), cnt);
              vstore_n(dhr + g * H, vzero<scalar_t>(), cnt);
            }
            vstore_n(cr, dh, cnt);
            continue;
          }
          const scalar_t* svr = sv + n * 4 * H + u;
          const V r = vload_n(svr, cnt), z = vload_n(svr + H, cnt);
          const V nn = vload_n(svr + 2 * H, cnt), hn = vload_n(svr + 3 * H, cnt);
          const GruGateGrads<scalar_t> gr = gru_gate_grads<scalar_t>(dh, r, z, nn, hn, vload_n(hprev + n * H + u, cnt));
          store_gru_gate_grads<scalar_t>(dxr, dhr, gr, r, H, cnt);
          vstore_n(cr, dh * z, cnt);
        }
      });
    });
    const scalar_t* dhg_first = dhg.get() + ((T - 1) & 1) * N * G3;
    gemm_plus_carry<scalar_t>(ws, dhg_first, G3, w_back.get(), H, carry.get(), a.dh0);
  });
}

FASTRNN_INSTANTIATE(gru_forward, GruForwardParams)
FASTRNN_INSTANTIATE(gru_backward, GruBackwardParams)

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
