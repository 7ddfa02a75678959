// Fused LSTM recurrence, forward and backward (torch.nn semantics, gates i,f,g,o;
// optional projection h = W_hr (o * tanh(c)); optional diagonal peepholes w_ch: i and f
// see c_{t-1}, o sees c_t). Per step ONE fused GEMM over the
// gate-major W_hh panels whose epilogue applies the nonlinearities and the cell
// update; with a projection a second GEMM phase produces h.
#include "cpu/fused_gemm.h"
#include "cpu/gate_grads.h"
#include "cpu/kernels.h"

namespace fastrnn {
namespace cpu {
namespace FASTRNN_ISA {

template <typename scalar_t>
void lstm_forward(const LstmForwardParams<scalar_t>& a) {
  constexpr int W = Vec<scalar_t>::W;
  using V = vec_t<scalar_t>;
  const int64_t T = a.T, N = a.N, H = a.H, R = a.R, G4 = 4 * H;
  const bool proj = a.w_hr != nullptr;
  int64_t P1 = 0, P2 = 0;
  Packed<scalar_t> w_gates = pack_gate_major_cached<scalar_t, 4>(a.w_hh, H, R, &P1);        // h @ W_hh^T
  Packed<scalar_t> w_proj;
  if (proj) w_proj = pack_units_cached<scalar_t, 4>(a.w_hr, H, R, /*transposed=*/true, &P2);  // m @ W_hr^T
  Buffer<scalar_t> c = make_buffer<scalar_t>(N * H);
  std::copy(a.c0, a.c0 + N * H, c.get());
  Buffer<scalar_t> m;
  if (proj) m = make_buffer<scalar_t>(N * H);
  run_team(a.num_threads, [&](int tid, int nthr, TeamBarrier* bar) {
    const WorkSplit ws1(P1, N, tid, nthr, rows_per_tile<4>(), bar);
    const WorkSplit ws2(P2, N, tid, nthr, rows_per_tile<4>(), bar);
    for_each_step(ws1, T, a.reverse, /*backward=*/false, [&](int64_t s, int64_t t) {
      const scalar_t* hprev = s == 0 ? a.h0 : a.y + prev_time(t, a.reverse) * N * R;
      scalar_t* yt = a.y + t * N * R;
      const scalar_t* xgt = a.xg + t * N * G4;
      scalar_t* gt = a.gates ? a.gates + t * N * G4 : nullptr;
      scalar_t* ct = a.cs ? a.cs + t * N * H : nullptr;
      fused_gemm<scalar_t, 4>(ws1, hprev, R, R, w_gates.get(), [&](int64_t p, int64_t n, const V* acc) {
        const int64_t u = p * W;
        const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
        scalar_t* crow = c.get() + n * H + u;
        if (!step_valid(a.lengths, n, t)) {  // frozen state
          if (ct) vstore_n(ct + n * H + u, vload_n(crow, cnt), cnt);
          if (gt)
            for (int g = 0; g < 4; ++g) vstore_n(gt + n * G4 + g * H + u, vzero<scalar_t>(), cnt);
          if (!proj) vstore_n(yt + n * R + u, vload_n(hprev + n * R + u, cnt), cnt);
          return;
        }
        const scalar_t* x = xgt + n * G4 + u;
        const V cp = vload_n(crow, cnt);
        V pre_i = acc[0] + vload_n(x, cnt), pre_f = acc[1] + vload_n(x + H, cnt);
        V pre_o = acc[3] + vload_n(x + 3 * H, cnt);
        if (a.w_ch) {  // peepholes: i and f see c_{t-1}
          pre_i = pre_i + vload_n(a.w_ch + u, cnt) * cp;
          pre_f = pre_f + vload_n(a.w_ch + H + u, cnt) * cp;
        }
        const V i = vsigmoid<scalar_t>(pre_i);
        const V f = vsigmoid<scalar_t>(pre_f);
        const V g = vtanh<scalar_t>(acc[2] + vload_n(x + 2 * H, cnt));
        const V cnew = f * cp + i * g;
        if (a.w_ch) pre_o = pre_o + vload_n(a.w_ch + 2 * H + u, cnt) * cnew;  // o sees c_t
        const V o = vsigmoid<scalar_t>(pre_o);
        const V h = o * vtanh<scalar_t>(cnew);
        vstore_n(crow, cnew, cnt);
        if (ct) vstore_n(ct + n * H + u, cnew, cnt);
        if (gt) {
          scalar_t* gr = gt + n * G4 + u;
          vstore_n(gr, i, cnt);
          vstore_n(gr + H, f, cnt);
          vstore_n(gr + 2 * H, g, cnt);
          vstore_n(gr + 3 * H, o, cnt);
        }
        vstore_n(proj ? m.get() + n * H + u : yt + n * R + u, h, cnt);
      });
      if (proj) {
        FASTRNN_PHASE_BARRIER(ws1);
        fused_gemm<scalar_t, 4>(ws2, m.get(), H, H, w_proj.get(), [&](int64_t p, int64_t n, const V* acc) {
          const bool valid = step_valid(a.lengths, n, t);
          for (int b = 0; b < 4; ++b) {
            const int64_t col = (p * 4 + b) * W;
            if (col >= R) break;
            const int cnt = static_cast<int>(std::min<int64_t>(W, R - col));
            vstore_n(yt + n * R + col, valid ? acc[b] : vload_n(hprev + n * R + col, cnt), cnt);
          }
        });
      }
    });
  });
  std::copy(c.get(), c.get() + N * H, a.cn);
}

template <typename scalar_t>
void lstm_backward(const LstmBackwardParams<scalar_t>& a) {
  constexpr int W = Vec<scalar_t>::W;
  using V = vec_t<scalar_t>;
  const int64_t T = a.T, N = a.N, H = a.H, R = a.R, G4 = 4 * H;
  const bool proj = a.w_hr != nullptr;
  int64_t P1 = 0, P2 = 0;
  Packed<scalar_t> w_back = pack_units_cached<scalar_t, 4>(a.w_hh, G4, R, /*transposed=*/false, &P1);  // dgates @ W_hh
  Packed<scalar_t> w_proj;
  if (proj) w_proj = pack_units_cached<scalar_t, 4>(a.w_hr, R, H, /*transposed=*/false, &P2);  // dr @ W_hr
  Buffer<scalar_t> dc = make_buffer<scalar_t>(N * H);
  std::copy(a.dcn, a.dcn + N * H, dc.get());
  // Gradient carried past frozen (invalid) steps, per output column.
  Buffer<scalar_t> carry = make_buffer<scalar_t>(N * R);
  run_team(a.num_threads, [&](int tid, int nthr, TeamBarrier* bar) {
    const WorkSplit ws1(P1, N, tid, nthr, rows_per_tile<4>(), bar);
    const WorkSplit ws2(P2, N, tid, nthr, rows_per_tile<4>(), bar);
    for_each_step(ws1, T, a.reverse, /*backward=*/true, [&](int64_t s, int64_t t) {
      const scalar_t* dg_next = s == 0 ? nullptr : a.dgates + (a.reverse ? t - 1 : t + 1) * N * G4;
      const bool first_fwd = a.reverse ? t == T - 1 : t == 0;
      const scalar_t* cprev = first_fwd ? a.c0 : a.cs + prev_time(t, a.reverse) * N * H;
      const scalar_t* dyt = a.dy + t * N * R;
      const scalar_t* gt = a.gates + t * N * G4;
      const scalar_t* ct = a.cs + t * N * H;
      scalar_t* dgt = a.dgates + t * N * G4;

      // Gate gradients of units [u, u+cnt) of row n, given dm = d(o*tanh(c)).
      auto cell = [&](int64_t n, int64_t u, int cnt, V dm) {
        const scalar_t* g = gt + n * G4 + u;
        const V i = vload_n(g, cnt), f = vload_n(g + H, cnt);
        const V gg = vload_n(g + 2 * H, cnt), o = vload_n(g + 3 * H, cnt);
        const V tc = vtanh<scalar_t>(vload_n(ct + n * H + u, cnt));
        scalar_t* dcrow = dc.get() + n * H + u;
        const V cp = vload_n(cprev + n * H + u, cnt);
        const LstmGateGrads<scalar_t> gr =
            a.w_ch ? lstm_gate_grads<scalar_t>(i, f, gg, o, tc, cp, dm, vload_n(dcrow, cnt), vload_n(a.w_ch + u, cnt),
                                        vload_n(a.w_ch + H + u, cnt), vload_n(a.w_ch + 2 * H + u, cnt))
                   : lstm_gate_grads<scalar_t>(i, f, gg, o, tc, cp, dm, vload_n(dcrow, cnt));
        scalar_t* d = dgt + n * G4 + u;
        vstore_n(d, gr.di, cnt);
        vstore_n(d + H, gr.df, cnt);
        vstore_n(d + 2 * H, gr.dg, cnt);
        vstore_n(d + 3 * H, gr.dout, cnt);
        vstore_n(dcrow, gr.dc_prev, cnt);
      };
      auto zero_gates = [&](int64_t n, int64_t u, int cnt) {
        for (int g = 0; g < 4; ++g) vstore_n(dgt + n * G4 + g * H + u, vzero<scalar_t>(), cnt);
      };

      if (!proj) {
        fused_gemm<scalar_t, 4>(ws1, dg_next, G4, G4, w_back.get(), [&](int64_t p, int64_t n, const V* acc) {
          const bool valid = step_valid(a.lengths, n, t);
          for (int b = 0; b < 4; ++b) {
            const int64_t u = (p * 4 + b) * W;
            if (u >= H) break;
            const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
            scalar_t* cr = carry.get() + n * R + u;
            const V dh = acc[b] + vload_n(dyt + n * R + u, cnt) + vload_n(cr, cnt);
            if (valid) {
              cell(n, u, cnt, dh);
              vstore_n(cr, vzero<scalar_t>(), cnt);
            } else {
              zero_gates(n, u, cnt);
              vstore_n(cr, dh, cnt);
            }
          }
        });
      } else {
        scalar_t* drt = a.dr + t * N * R;
        fused_gemm<scalar_t, 4>(ws1, dg_next, G4, G4, w_back.get(), [&](int64_t p, int64_t n, const V* acc) {
          const bool valid = step_valid(a.lengths, n, t);
          for (int b = 0; b < 4; ++b) {
            const int64_t col = (p * 4 + b) * W;
            if (col >= R) break;
            const int cnt = static_cast<int>(std::min<int64_t>(W, R - col));
            scalar_t* cr = carry.get() + n * R + col;
            const V d = acc[b] + vload_n(dyt + n * R + col, cnt) + vload_n(cr, cnt);
            vstore_n(drt + n * R + col, valid ? d : vzero<scalar_t>(), cnt);
            vstore_n(cr, valid ? vzero<scalar_t>() : d, cnt);
          }
        });
        FASTRNN_PHASE_BARRIER(ws1);
        fused_gemm<scalar_t, 4>(ws2, drt, R, R, w_proj.get(), [&](int64_t p, int64_t n, const V* acc) {
          const bool valid = step_valid(a.lengths, n, t);
          for (int b = 0; b < 4; ++b) {
            const int64_t u = (p * 4 + b) * W;
            if (u >= H) break;
            const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
            if (valid)
              cell(n, u, cnt, acc[b]);
            else
              zero_gates(n, u, cnt);
          }
        });
      }
    });
    // dh0 = dgates(first forward step) @ W_hh + what was carried past frozen steps.
    const scalar_t* dg_first = a.dgates + (a.reverse ? T - 1 : 0) * N * G4;
    gemm_plus_carry<scalar_t>(ws1, dg_first, G4, w_back.get(), R, carry.get(), a.dh0);
  });
  std::copy(dc.get(), dc.get() + N * H, a.dc0);
}

FASTRNN_INSTANTIATE(lstm_forward, LstmForwardParams)
FASTRNN_INSTANTIATE(lstm_backward, LstmBackwardParams)

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
