// The regularised recurrences (RegForwardParams in common/rnn_params.h): zoneout and
// variational recurrent dropout inside the fused kernels. The plain kernels' structure (one
// fused GEMM per step over packed W_hh panels, the gate epilogue on the hot accumulator
// tile); the options add, per step and unit:
//   forward   the GEMM operand h_{t-1} * rd (a second copy of h, written by the previous
//             step's epilogue, when recurrent dropout is on), and the zoneout mix
//             h_t = d h_{t-1} + (1 - d) h~_t (the LSTM's c likewise) after the gates;
//   backward  the recurrent gradient (dgates_{t+1} @ W_hh) times rd, the candidate's
//             gradient (1 - d) dH_t into the plain gate gradients, d dH_t carried straight
//             to h_{t-1} (and for c to c_{t-1}).
// The LSTM records c~ (its candidate before zoneout: h~ = o tanh(c~)) beside the mixed
// state c; the RNN records h~ (its activation's derivative).
// Also here: the layer-normalised LSTM/GRU (LnForwardParams, LnBackwardParams), whose
// per-row LayerNorm needs the whole row of the step's product: the GEMM epilogue stores the
// row, then each row's statistics, gates and state update follow (backward: the GEMM of the
// recurrent gradient, then each row's gate gradients and LayerNorm backward); the options
// as above (the GEMM operand h * rd, the zoneout mix after the state update; backward: the
// recurrent gradient times rd, (1 - d) dH to the candidate, d dH carried).
#include <cmath>
#include <vector>

#include "cpu/fused_gemm.h"
#include "cpu/gate_grads.h"
#include "cpu/kernels.h"

namespace fastrnn {
namespace cpu {
namespace FASTRNN_ISA {
namespace {

template <typename scalar_t, int G>
void forward_g(const RegForwardParams<scalar_t>& a) {
  constexpr int W = Vec<scalar_t>::W;
  using V = vec_t<scalar_t>;
  const int64_t T = a.T, N = a.N, H = a.H, GH = G * H;
  const bool relu = a.kind == kCellRnnRelu;
  const bool zone_h = a.zh || a.zh_p != 0, zone_c = a.zc || a.zc_p != 0;
  int64_t P = 0;
  Packed<scalar_t> w = pack_gate_major_cached<scalar_t, G>(a.w_hh, H, H, &P);  // h @ W_hh^T
  Buffer<scalar_t> c;
  if (G == 4) {
    c = make_buffer<scalar_t>(N * H);
    std::copy(a.c0, a.c0 + N * H, c.get());
  }
  Buffer<scalar_t> hm;  // recurrent dropout: the GEMM operand h * rd of the last two steps
  if (a.rd) {
    hm = make_buffer<scalar_t>(2 * N * H);
    for (int64_t k = 0; k < N * H; ++k) hm[k] = a.h0[k] * a.rd[k];
  }
  run_team(a.num_threads, [&](int tid, int nthr, TeamBarrier* bar) {
    const WorkSplit ws(P, N, tid, nthr, rows_per_tile<G>(), bar);
    for_each_step(ws, T, a.reverse, /*backward=*/false, [&](int64_t s, int64_t t) {
      const scalar_t* hprev = s == 0 ? a.h0 : a.y + prev_time(t, a.reverse) * N * H;
      const scalar_t* A = a.rd ? hm.get() + (s & 1) * N * H : hprev;
      scalar_t* hm_next = a.rd ? hm.get() + ((s + 1) & 1) * N * H : nullptr;
      scalar_t* yt = a.y + t * N * H;
      const scalar_t* xgt = a.xg + t * N * GH;
      scalar_t* gt = a.gates ? a.gates + t * N * 4 * H : nullptr;
      scalar_t* ct = a.cs ? a.cs + t * N * H : nullptr;
      scalar_t* cdt = a.cand ? a.cand + t * N * H : nullptr;
      const scalar_t* zht = a.zh ? a.zh + t * N * H : nullptr;
      const scalar_t* zct = a.zc ? a.zc + t * N * H : nullptr;
      fused_gemm<scalar_t, G>(ws, A, H, H, w.get(), [&](int64_t p, int64_t n, const V* acc) {
        const int64_t u = p * W, o = n * H + u;
        const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
        const V hp = vload_n(hprev + o, cnt);
        V h = hp;
        if (!step_valid(a.lengths, n, t)) {  // frozen state; records zero (or the state)
          if (gt)
            for (int g = 0; g < 4; ++g) vstore_n(gt + n * 4 * H + g * H + u, vzero<scalar_t>(), cnt);
          if (G == 4) {
            const V cp = vload_n(c.get() + o, cnt);
            if (ct) vstore_n(ct + o, cp, cnt);
            if (cdt) vstore_n(cdt + o, cp, cnt);
          } else if (cdt) {
            vstore_n(cdt + o, hp, cnt);
          }
        } else {
          const scalar_t* x = xgt + n * GH + u;
          V cand;
          if constexpr (G == 4) {
            const V cp = vload_n(c.get() + o, cnt);
            const V i = vsigmoid<scalar_t>(acc[0] + vload_n(x, cnt));
            const V f = vsigmoid<scalar_t>(acc[1] + vload_n(x + H, cnt));
            const V g = vtanh<scalar_t>(acc[2] + vload_n(x + 2 * H, cnt));
            const V og = vsigmoid<scalar_t>(acc[3] + vload_n(x + 3 * H, cnt));
            const V ctil = f * cp + i * g;
            cand = og * vtanh<scalar_t>(ctil);
            V cnew = ctil;
            if (zone_c) {
              const V d = zct ? vload_n(zct + o, cnt) : vset<scalar_t>(a.zc_p);
              cnew = d * cp + ((scalar_t)1 - d) * ctil;
            }
            vstore_n(c.get() + o, cnew, cnt);
            if (ct) vstore_n(ct + o, cnew, cnt);
            if (cdt) vstore_n(cdt + o, ctil, cnt);
            if (gt) {
              scalar_t* gr = gt + n * 4 * H + u;
              vstore_n(gr, i, cnt);
              vstore_n(gr + H, f, cnt);
              vstore_n(gr + 2 * H, g, cnt);
              vstore_n(gr + 3 * H, og, cnt);
            }
          } else if constexpr (G == 3) {
            const scalar_t* b = a.b_hh;
            const V hr = b ? acc[0] + vload_n(b + u, cnt) : acc[0];
            const V hz = b ? acc[1] + vload_n(b + H + u, cnt) : acc[1];
            const V hn = b ? acc[2] + vload_n(b + 2 * H + u, cnt) : acc[2];
            const V r = vsigmoid<scalar_t>(vload_n(x, cnt) + hr);
            const V z = vsigmoid<scalar_t>(vload_n(x + H, cnt) + hz);
            const V nn = vtanh<scalar_t>(vload_n(x + 2 * H, cnt) + r * hn);
            cand = ((scalar_t)1 - z) * nn + z * hp;  // the state itself, unmasked
            if (gt) {
              scalar_t* gr = gt + n * 4 * H + u;
              vstore_n(gr, r, cnt);
              vstore_n(gr + H, z, cnt);
              vstore_n(gr + 2 * H, nn, cnt);
              vstore_n(gr + 3 * H, hn, cnt);
            }
          } else {
            const V pre = acc[0] + vload_n(x, cnt);
            cand = relu ? vrelu<scalar_t>(pre) : vtanh<scalar_t>(pre);
            if (cdt) vstore_n(cdt + o, cand, cnt);
          }
          h = cand;
          if (zone_h) {
            const V d = zht ? vload_n(zht + o, cnt) : vset<scalar_t>(a.zh_p);
            h = d * hp + ((scalar_t)1 - d) * cand;
          }
        }
        vstore_n(yt + o, h, cnt);
        if (hm_next) vstore_n(hm_next + o, h * vload_n(a.rd + o, cnt), cnt);
      });
    });
  });
  if (G == 4) std::copy(c.get(), c.get() + N * H, a.cn);
}

template <typename scalar_t, int G>
void backward_g(const RegBackwardParams<scalar_t>& a) {
  constexpr int W = Vec<scalar_t>::W;
  using V = vec_t<scalar_t>;
  const int64_t T = a.T, N = a.N, H = a.H, GH = G * H;
  const bool relu = a.kind == kCellRnnRelu;
  const bool zone_h = a.zh || a.zh_p != 0, zone_c = a.zc || a.zc_p != 0;
  int64_t P = 0;
  // d(operand of step t+1) @ W_hh: the LSTM's and RNN's gate gradients, the GRU's hidden part
  Packed<scalar_t> w_back = pack_units_cached<scalar_t, 4>(a.w_hh, GH, H, /*transposed=*/false, &P);
  const scalar_t* rec = G == 3 ? a.dhg : a.dxg;  // what the recurrent GEMM reads
  Buffer<scalar_t> dc;
  if (G == 4) {
    dc = make_buffer<scalar_t>(N * H);
    std::copy(a.dcn, a.dcn + N * H, dc.get());
  }
  Buffer<scalar_t> carry = make_buffer<scalar_t>(N * H);  // dH_t reaching h_{t-1} directly
  run_team(a.num_threads, [&](int tid, int nthr, TeamBarrier* bar) {
    const WorkSplit ws(P, N, tid, nthr, rows_per_tile<4>(), bar);
    for_each_step(ws, T, a.reverse, /*backward=*/true, [&](int64_t s, int64_t t) {
      const scalar_t* A = s == 0 ? nullptr : rec + (a.reverse ? t - 1 : t + 1) * N * GH;
      const bool first_fwd = a.reverse ? t == T - 1 : t == 0;
      const scalar_t* hprev = first_fwd ? a.h0 : a.y + prev_time(t, a.reverse) * N * H;
      const scalar_t* cprev = G == 4 ? (first_fwd ? a.c0 : a.cs + prev_time(t, a.reverse) * N * H) : nullptr;
      const scalar_t* dyt = a.dy + t * N * H;
      const scalar_t* gt = a.gates ? a.gates + t * N * 4 * H : nullptr;
      const scalar_t* cdt = a.cand ? a.cand + t * N * H : nullptr;
      const scalar_t* zht = a.zh ? a.zh + t * N * H : nullptr;
      const scalar_t* zct = a.zc ? a.zc + t * N * H : nullptr;
      scalar_t* dx = a.dxg + t * N * GH;
      scalar_t* dhgt = a.dhg ? a.dhg + t * N * GH : nullptr;
      fused_gemm<scalar_t, 4>(ws, A, GH, GH, w_back.get(), [&](int64_t p, int64_t n, const V* acc) {
        const bool valid = step_valid(a.lengths, n, t);
        for (int b = 0; b < 4; ++b) {
          const int64_t u = (p * 4 + b) * W, o = n * H + u;
          if (u >= H) break;
          const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
          const V recurrent = a.rd ? acc[b] * vload_n(a.rd + o, cnt) : acc[b];
          const V dH = recurrent + vload_n(dyt + o, cnt) + vload_n(carry.get() + o, cnt);
          scalar_t* dxr = dx + n * GH + u;
          if (!valid) {  // frozen: no gate gradients, dH passes to the step before
            for (int g = 0; g < G; ++g) {
              vstore_n(dxr + g * H, vzero<scalar_t>(), cnt);
              if (dhgt) vstore_n(dhgt + n * GH + g * H + u, vzero<scalar_t>(), cnt);
            }
            vstore_n(carry.get() + o, dH, cnt);
            continue;
          }
          V dcand = dH, direct = vzero<scalar_t>();
          if (zone_h) {
            const V d = zht ? vload_n(zht + o, cnt) : vset<scalar_t>(a.zh_p);
            dcand = ((scalar_t)1 - d) * dH;
            direct = d * dH;
          }
          if constexpr (G == 4) {
            const scalar_t* g = gt + n * 4 * H + u;
            const V i = vload_n(g, cnt), f = vload_n(g + H, cnt);
            const V gg = vload_n(g + 2 * H, cnt), og = vload_n(g + 3 * H, cnt);
            const V tc = vtanh<scalar_t>(vload_n(cdt + o, cnt));
            const V dC = vload_n(dc.get() + o, cnt);
            V dc_in = dC, dc_direct = vzero<scalar_t>();
            if (zone_c) {
              const V d = zct ? vload_n(zct + o, cnt) : vset<scalar_t>(a.zc_p);
              dc_in = ((scalar_t)1 - d) * dC;
              dc_direct = d * dC;
            }
            const LstmGateGrads<scalar_t> gr =
                lstm_gate_grads<scalar_t>(i, f, gg, og, tc, vload_n(cprev + o, cnt), dcand, dc_in);
            vstore_n(dxr, gr.di, cnt);
            vstore_n(dxr + H, gr.df, cnt);
            vstore_n(dxr + 2 * H, gr.dg, cnt);
            vstore_n(dxr + 3 * H, gr.dout, cnt);
            vstore_n(dc.get() + o, gr.dc_prev + dc_direct, cnt);
          } else if constexpr (G == 3) {
            const scalar_t* sv = gt + n * 4 * H + u;
            const V r = vload_n(sv, cnt), z = vload_n(sv + H, cnt);
            const V nn = vload_n(sv + 2 * H, cnt), hn = vload_n(sv + 3 * H, cnt);
            const GruGateGrads<scalar_t> gr =
                gru_gate_grads<scalar_t>(dcand, r, z, nn, hn, vload_n(hprev + o, cnt));
            store_gru_gate_grads<scalar_t>(dxr, dhgt + n * GH + u, gr, r, H, cnt);
            direct = direct + dcand * z;
          } else {
            const V hc = vload_n(cdt + o, cnt);
            vstore_n(dxr, relu ? (hc > vzero<scalar_t>() ? dcand : vzero<scalar_t>())
                               : dcand * ((scalar_t)1 - hc * hc),
                     cnt);
          }
          vstore_n(carry.get() + o, direct, cnt);
        }
      });
    });
    // dh0 = (the first forward step's operand gradient) @ W_hh * rd + the direct part.
    const scalar_t* first = rec + (a.reverse ? T - 1 : 0) * N * GH;
    fused_gemm<scalar_t, 4>(ws, first, GH, GH, w_back.get(), [&](int64_t p, int64_t n, const V* acc) {
      for (int b = 0; b < 4; ++b) {
        const int64_t u = (p * 4 + b) * W, o = n * H + u;
        if (u >= H) break;
        const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
        const V recurrent = a.rd ? acc[b] * vload_n(a.rd + o, cnt) : acc[b];
        vstore_n(a.dh0 + o, recurrent + vload_n(carry.get() + o, cnt), cnt);
      }
    });
  });
  if (G == 4) std::copy(dc.get(), dc.get() + N * H, a.dc0);
}

// Mean and 1/sqrt(var + eps) of a row of n values (torch.nn.LayerNorm's biased variance),
// two passes over it.
template <typename scalar_t>
FASTRNN_INLINE void row_stats(const scalar_t* row, int64_t n, scalar_t eps, scalar_t* mean, scalar_t* rstd) {
  constexpr int W = Vec<scalar_t>::W;
  using V = vec_t<scalar_t>;
  V acc = vzero<scalar_t>();
  for (int64_t k = 0; k < n; k += W) acc = acc + vload_n(row + k, static_cast<int>(std::min<int64_t>(W, n - k)));
  const scalar_t m = vhsum<scalar_t>(acc) / static_cast<scalar_t>(n);
  const V vm = vset<scalar_t>(m);
  V sq = vzero<scalar_t>();
  for (int64_t k = 0; k < n; k += W) {
    const int cnt = static_cast<int>(std::min<int64_t>(W, n - k));
    const V d = vload_n(row + k, cnt) - vm;
    sq = sq + d * d;
  }
  // the lanes past the row's end read 0: each added m^2
  const int64_t pad = (n + W - 1) / W * W - n;
  const scalar_t var = (vhsum<scalar_t>(sq) - static_cast<scalar_t>(pad) * m * m) / static_cast<scalar_t>(n);
  *mean = m;
  *rstd = static_cast<scalar_t>(1) / std::sqrt(std::max(var, static_cast<scalar_t>(0)) + eps);
}

template <typename scalar_t, int G>
void ln_forward_g(const LnForwardParams<scalar_t>& a) {
  constexpr int W = Vec<scalar_t>::W;
  using V = vec_t<scalar_t>;
  const int64_t T = a.T, N = a.N, H = a.H, GH = G * H;
  int64_t P = 0;
  Packed<scalar_t> w = pack_gate_major_cached<scalar_t, G>(a.w_hh, H, H, &P);  // h @ W_hh^T
  Buffer<scalar_t> hg = make_buffer<scalar_t>(N * GH);  // the step's recurrent product, per row
  const bool rec = a.gates != nullptr;                  // a training forward: write the records
  Buffer<scalar_t> c, cc;                               // LSTM: c, and c~ of the step
  if (G == 4) {
    c = make_buffer<scalar_t>(N * H);
    cc = make_buffer<scalar_t>(N * H);
    std::copy(a.c0, a.c0 + N * H, c.get());
  }
  Buffer<scalar_t> hm;  // recurrent dropout: the GEMM operand h * rd of the last two steps
  if (a.rd) {
    hm = make_buffer<scalar_t>(2 * N * H);
    for (int64_t k = 0; k < N * H; ++k) hm[k] = a.h0[k] * a.rd[k];
  }
  run_team(a.num_threads, [&](int tid, int nthr, TeamBarrier* bar) {
    const WorkSplit ws(P, N, tid, nthr, rows_per_tile<G>(), bar);
    // the rows whose LayerNorm and gates this thread computes: its GEMM rows when it owns
    // whole rows, else a share of them after the phase barrier
    const int64_t rb = ws.independent ? ws.r_begin : N * tid / nthr;
    const int64_t re = ws.independent ? ws.r_end : N * (tid + 1) / nthr;
    for_each_step(ws, T, a.reverse, /*backward=*/false, [&](int64_t s, int64_t t) {
      const scalar_t* hprev = s == 0 ? a.h0 : a.y + prev_time(t, a.reverse) * N * H;
      scalar_t* yt = a.y + t * N * H;
      const scalar_t* A = a.rd ? hm.get() + (s & 1) * N * H : hprev;
      scalar_t* hm_next = a.rd ? hm.get() + ((s + 1) & 1) * N * H : nullptr;
      auto masked = [&](int64_t n) {  // the next step's operand row: h_t * rd
        if (hm_next)
          for (int64_t k = n * H; k < (n + 1) * H; ++k) hm_next[k] = yt[k] * a.rd[k];
      };
      fused_gemm<scalar_t, G>(ws, A, H, H, w.get(), [&](int64_t p, int64_t n, const V* acc) {
        const int64_t u = p * W;
        const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
        for (int g = 0; g < G; ++g) vstore_n(hg.get() + n * GH + g * H + u, acc[g], cnt);
      });
      FASTRNN_PHASE_BARRIER(ws);
      for (int64_t n = rb; n < re; ++n) {
        const scalar_t* hp_row = hprev + n * H;
        const int64_t tn = t * N + n;
        if (!step_valid(a.lengths, n, t)) {  // frozen state
          std::copy(hp_row, hp_row + H, yt + n * H);
          masked(n);
          if (rec) {  // (records the backward sums over: zero)
            std::fill(a.zhat + tn * GH, a.zhat + (tn + 1) * GH, scalar_t(0));
            if (a.g_ih) std::fill(a.zhat_x + tn * GH, a.zhat_x + (tn + 1) * GH, scalar_t(0));
            std::fill(a.gates + tn * GH, a.gates + (tn + 1) * GH, scalar_t(0));
            if (G == 4) {
              std::fill(a.chat + tn * H, a.chat + (tn + 1) * H, scalar_t(0));
              std::copy(c.get() + n * H, c.get() + (n + 1) * H, a.cs + tn * H);
            }
          }
          continue;
        }
        scalar_t* row = hg.get() + n * GH;
        scalar_t mean, rstd;
        row_stats(row, GH, a.eps, &mean, &rstd);
        const V vm = vset<scalar_t>(mean), vr = vset<scalar_t>(rstd);
        const scalar_t* x = a.ax + tn * GH;
        scalar_t* gr = rec ? a.gates + tn * GH : nullptr;
        if (rec) {
          a.rstd_h[tn] = rstd;
          for (int64_t k = 0; k < GH; k += W) {
            const int cnt = static_cast<int>(std::min<int64_t>(W, GH - k));
            vstore_n(a.zhat + tn * GH + k, (vload_n(row + k, cnt) - vm) * vr, cnt);
          }
        }
        // the input part at [o, o+cnt): ax as given, or with g_ih LN(ax) g_ih + s_ih
        V xm = vzero<scalar_t>(), xr = vzero<scalar_t>();
        if (a.g_ih) {
          scalar_t m, r;
          row_stats(x, GH, a.eps, &m, &r);
          xm = vset<scalar_t>(m);
          xr = vset<scalar_t>(r);
          if (rec) {
            a.rstd_x[tn] = r;
            for (int64_t k = 0; k < GH; k += W) {
              const int cnt = static_cast<int>(std::min<int64_t>(W, GH - k));
              vstore_n(a.zhat_x + tn * GH + k, (vload_n(x + k, cnt) - xm) * xr, cnt);
            }
          }
        }
        auto xin = [&](int64_t o, int cnt) {
          const V v = vload_n(x + o, cnt);
          return a.g_ih ? (v - xm) * xr * vload_n(a.g_ih + o, cnt) + vload_n(a.s_ih + o, cnt) : v;
        };
        // gate k's pre-activation at units [u, u+cnt): the input part + LN(W_hh h) g_hh + s_hh
        auto pre = [&](int k, int64_t u, int cnt) {
          const int64_t o = k * H + u;
          return xin(o, cnt) + (vload_n(row + o, cnt) - vm) * vr * vload_n(a.g_hh + o, cnt) +
                 vload_n(a.s_hh + o, cnt);
        };
        // zoneout: d prev + (1 - d) cand, d the mask's (training) or p (eval: the expectation)
        auto mix = [&](const scalar_t* mask, scalar_t p_keep, int64_t u, int cnt, V prev, V cand) {
          if (mask) {
            const V d = vload_n(mask + tn * H + u, cnt);
            return d * prev + ((scalar_t)1 - d) * cand;
          }
          return p_keep != 0 ? vset<scalar_t>(p_keep) * prev + vset<scalar_t>(1 - p_keep) * cand : cand;
        };
        if constexpr (G == 4) {
          for (int64_t u = 0; u < H; u += W) {
            const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
            const V i = vsigmoid<scalar_t>(pre(0, u, cnt)), f = vsigmoid<scalar_t>(pre(1, u, cnt));
            const V g = vtanh<scalar_t>(pre(2, u, cnt));
            const V o = vsigmoid<scalar_t>(pre(3, u, cnt));
            vstore_n(row + 3 * H + u, o, cnt);  // kept in place
            vstore_n(cc.get() + n * H + u, f * vload_n(c.get() + n * H + u, cnt) + i * g, cnt);
            if (gr) {
              vstore_n(gr + u, i, cnt);
              vstore_n(gr + H + u, f, cnt);
              vstore_n(gr + 2 * H + u, g, cnt);
              vstore_n(gr + 3 * H + u, o, cnt);
            }
          }
          scalar_t cmean, crstd;
          row_stats(cc.get() + n * H, H, a.eps, &cmean, &crstd);
          const V cm = vset<scalar_t>(cmean), cr = vset<scalar_t>(crstd);
          if (rec) a.rstd_c[tn] = crstd;
          for (int64_t u = 0; u < H; u += W) {
            const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
            const int64_t o = n * H + u;
            const V ctil = vload_n(cc.get() + o, cnt);
            const V chat = (ctil - cm) * cr;
            const V cand = vload_n(row + 3 * H + u, cnt) *
                           vtanh<scalar_t>(chat * vload_n(a.g_c + u, cnt) + vload_n(a.s_c + u, cnt));
            vstore_n(yt + o, mix(a.zh, a.zh_p, u, cnt, vload_n(hp_row + u, cnt), cand), cnt);
            const V cnew = mix(a.zc, a.zc_p, u, cnt, vload_n(c.get() + o, cnt), ctil);
            vstore_n(c.get() + o, cnew, cnt);
            if (rec) {
              vstore_n(a.chat + tn * H + u, chat, cnt);
              vstore_n(a.cs + tn * H + u, cnew, cnt);
            }
          }
        } else {
          for (int64_t u = 0; u < H; u += W) {
            const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
            const V r = vsigmoid<scalar_t>(pre(0, u, cnt)), z = vsigmoid<scalar_t>(pre(1, u, cnt));
            const int64_t o = 2 * H + u;  // n = tanh(a_x^n + r a_h^n)
            const V ah_n = (vload_n(row + o, cnt) - vm) * vr * vload_n(a.g_hh + o, cnt) + vload_n(a.s_hh + o, cnt);
            const V nn = vtanh<scalar_t>(xin(o, cnt) + r * ah_n);
            const V hp = vload_n(hp_row + u, cnt);
            if (gr) {
              vstore_n(gr + u, r, cnt);
              vstore_n(gr + H + u, z, cnt);
              vstore_n(gr + 2 * H + u, nn, cnt);
            }
            vstore_n(yt + n * H + u, mix(a.zh, a.zh_p, u, cnt, hp, ((scalar_t)1 - z) * nn + z * hp), cnt);
          }
        }
        masked(n);
      }
    });
  });
  if (G == 4) std::copy(c.get(), c.get() + N * H, a.cn);
}


// The backward of ln_forward_g's training forward (LnBackwardParams). Per step: the GEMM
// dah_{t+1} @ W_hh into a row buffer; after the phase barrier each row's gradients:
//   LSTM  dh -> dcl = dh o (1 - tanh^2(l)), l = chat g_c + s_c; LN(c~)'s backward
//         dc~ = rstd_c (dchat - mean(dchat) - chat mean(dchat chat)), dchat = dcl g_c;
//         dc = dc~ + the carried dc; the gates' pre-activation gradients da;
//   GRU   dh -> (dr, dz, dn) pre-activation gradients da, z dh carried to h_{t-1};
// then the recurrent LayerNorm's backward over the row's G*H values with dl = da (GRU: its
// n part times r): dah = rstd_h (dzh - mean(dzh) - zhat mean(dzh zhat)), dzh = dl g_hh;
// with g_ih the input side's likewise from da (dax: the projection's gradient), else dax = da.
// The gains' and shifts' gradients: sums of dl zhat, dl, da zhat_x, da, dcl chat, dcl.
template <typename scalar_t, int G>
void ln_backward_g(const LnBackwardParams<scalar_t>& a) {
  constexpr int W = Vec<scalar_t>::W;
  using V = vec_t<scalar_t>;
  const int64_t T = a.T, N = a.N, H = a.H, GH = G * H;
  const bool lnx = a.g_ih != nullptr;
  int64_t P = 0;
  Packed<scalar_t> w_back = pack_units_cached<scalar_t, 4>(a.w_hh, GH, H, /*transposed=*/false, &P);  // dah @ W_hh
  Buffer<scalar_t> dhr = make_buffer<scalar_t>(N * H);    // the step's recurrent gradient
  Buffer<scalar_t> carry = make_buffer<scalar_t>(N * H);  // dh passed straight to h_{t-1}
  Buffer<scalar_t> dzh = make_buffer<scalar_t>(N * GH);   // per row: the gradient of a zhat
  Buffer<scalar_t> da = make_buffer<scalar_t>(N * GH);    // per row: the pre-activations' gradient
  std::fill(carry.get(), carry.get() + N * H, scalar_t(0));
  Buffer<scalar_t> dc;  // LSTM: the gradient of c carried to the step before
  if (G == 4) {
    dc = make_buffer<scalar_t>(N * H);
    std::copy(a.dcn, a.dcn + N * H, dc.get());
  }
  // the gains' and shifts' sums, in this order: g_ih, s_ih, g_hh, s_hh [G*H each], g_c, s_c [H]
  const int64_t S = 4 * GH + 2 * H;
  const int nt = std::max(1, a.num_threads);
  Buffer<scalar_t> step_sums = make_buffer<scalar_t>(nt * S);  // per thread, this step's rows
  std::vector<double> sums(size_t(nt * S), 0.0);                // per thread, every step
  const scalar_t one = 1;
  run_team(nt, [&](int tid, int nthr, TeamBarrier* bar) {
    const WorkSplit ws(P, N, tid, nthr, rows_per_tile<4>(), bar);
    const int64_t rb = ws.independent ? ws.r_begin : N * tid / nthr;
    const int64_t re = ws.independent ? ws.r_end : N * (tid + 1) / nthr;
    scalar_t* acc = step_sums.get() + tid * S;
    double* total = sums.data() + tid * S;
    scalar_t *acc_gih = acc, *acc_sih = acc + GH, *acc_ghh = acc + 2 * GH, *acc_shh = acc + 3 * GH;
    scalar_t *acc_gc = acc + 4 * GH, *acc_sc = acc + 4 * GH + H;
    auto add = [](scalar_t* p, V v, int cnt) { vstore_n(p, vload_n(p, cnt) + v, cnt); };
    for_each_step(ws, T, a.reverse, /*backward=*/true, [&](int64_t s, int64_t t) {
      const scalar_t* dah_next = s == 0 ? nullptr : a.dah + (a.reverse ? t - 1 : t + 1) * N * GH;
      fused_gemm<scalar_t, 4>(ws, dah_next, GH, GH, w_back.get(), [&](int64_t p, int64_t n, const V* acc4) {
        for (int b = 0; b < 4; ++b) {
          const int64_t u = (p * 4 + b) * W;
          if (u >= H) break;
          vstore_n(dhr.get() + n * H + u, acc4[b], static_cast<int>(std::min<int64_t>(W, H - u)));
        }
      });
      FASTRNN_PHASE_BARRIER(ws);
      std::fill(acc, acc + S, scalar_t(0));
      const bool first_fwd = a.reverse ? t == T - 1 : t == 0;
      const scalar_t* hprev = first_fwd ? a.h0 : a.y + prev_time(t, a.reverse) * N * H;
      const scalar_t* cprev = G == 4 ? (first_fwd ? a.c0 : a.cs + prev_time(t, a.reverse) * N * H) : nullptr;
      for (int64_t n = rb; n < re; ++n) {
        const int64_t tn = t * N + n;
        scalar_t* dx = a.dax + tn * GH;
        scalar_t* dah = a.dah + tn * GH;
        scalar_t* dg = lnx ? da.get() + n * GH : dx;  // the pre-activations' gradient
        scalar_t* cr = carry.get() + n * H;
        const scalar_t* hr = dhr.get() + n * H;
        const scalar_t* dyr = a.dy + tn * H;
        const scalar_t* rdr = a.rd ? a.rd + n * H : nullptr;
        auto dh_at = [&](int64_t u, int cnt) {  // the gradient of h_t (the state, after zoneout)
          const V r = rdr ? vload_n(hr + u, cnt) * vload_n(rdr + u, cnt) : vload_n(hr + u, cnt);
          return vload_n(dyr + u, cnt) + r + vload_n(cr + u, cnt);
        };
        // zoneout's mask at units [u, u+cnt) of h (or c): 0 without zoneout
        auto mask_at = [&](const scalar_t* m, int64_t u, int cnt) {
          return m ? vload_n(m + tn * H + u, cnt) : vzero<scalar_t>();
        };
        if (!step_valid(a.lengths, n, t)) {  // frozen: dh (and the LSTM's dc) pass through
          for (int64_t u = 0; u < H; u += W) {
            const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
            vstore_n(cr + u, dh_at(u, cnt), cnt);
          }
          std::fill(dx, dx + GH, scalar_t(0));
          std::fill(dah, dah + GH, scalar_t(0));
          continue;
        }
        const scalar_t* gt = a.gates + tn * GH;
        const scalar_t* zh = a.zhat + tn * GH;
        scalar_t* dz = dzh.get() + n * GH;
        if constexpr (G == 4) {
          const scalar_t* ch = a.chat + tn * H;
          scalar_t* dcr = dc.get() + n * H;
          V s1 = vzero<scalar_t>(), s2 = vzero<scalar_t>();
          for (int64_t u = 0; u < H; u += W) {  // dcl, dchat (in dz's first H), do
            const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
            const V dH = dh_at(u, cnt), d = mask_at(a.zh, u, cnt);
            const V dh = (one - d) * dH;  // the candidate's share; d dH goes to h_{t-1}
            const V o = vload_n(gt + 3 * H + u, cnt), chat = vload_n(ch + u, cnt);
            const V gc = vload_n(a.g_c + u, cnt);
            const V tl = vtanh<scalar_t>(chat * gc + vload_n(a.s_c + u, cnt));
            const V dcl = dh * o * (one - tl * tl);
            add(acc_gc + u, dcl * chat, cnt);
            add(acc_sc + u, dcl, cnt);
            const V dchat = dcl * gc;
            vstore_n(dz + u, dchat, cnt);
            s1 = s1 + dchat;
            s2 = s2 + dchat * chat;
            vstore_n(dg + 3 * H + u, dh * tl * o * (one - o), cnt);
            vstore_n(cr + u, d * dH, cnt);
          }
          const V m1 = vset<scalar_t>(vhsum<scalar_t>(s1) / static_cast<scalar_t>(H));
          const V m2 = vset<scalar_t>(vhsum<scalar_t>(s2) / static_cast<scalar_t>(H));
          const V rc = vset<scalar_t>(a.rstd_c[tn]);
          for (int64_t u = 0; u < H; u += W) {  // dc~, the i, f, g gradients, dc carried
            const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
            const V dC = vload_n(dcr + u, cnt), dzc = mask_at(a.zc, u, cnt);  // c_t = dzc c_{t-1} + (1 - dzc) c~_t
            const V dct = rc * (vload_n(dz + u, cnt) - m1 - vload_n(ch + u, cnt) * m2) + (one - dzc) * dC;
            const V i = vload_n(gt + u, cnt), f = vload_n(gt + H + u, cnt), g = vload_n(gt + 2 * H + u, cnt);
            vstore_n(dg + u, dct * g * i * (one - i), cnt);
            vstore_n(dg + H + u, dct * vload_n(cprev + n * H + u, cnt) * f * (one - f), cnt);
            vstore_n(dg + 2 * H + u, dct * i * (one - g * g), cnt);
            vstore_n(dcr + u, dct * f + dzc * dC, cnt);
          }
        } else {
          for (int64_t u = 0; u < H; u += W) {
            const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
            const V dH = dh_at(u, cnt), dm = mask_at(a.zh, u, cnt);
            const V dh = (one - dm) * dH;  // the candidate's share; dm dH goes to h_{t-1}
            const V r = vload_n(gt + u, cnt), z = vload_n(gt + H + u, cnt), nn = vload_n(gt + 2 * H + u, cnt);
            const V dn = dh * (one - z) * (one - nn * nn);
            const int64_t k = 2 * H + u;
            const V ah_n = vload_n(zh + k, cnt) * vload_n(a.g_hh + k, cnt) + vload_n(a.s_hh + k, cnt);
            vstore_n(dg + u, dn * ah_n * r * (one - r), cnt);
            vstore_n(dg + H + u, dh * (vload_n(hprev + n * H + u, cnt) - nn) * z * (one - z), cnt);
            vstore_n(dg + k, dn, cnt);
            vstore_n(cr + u, dh * z + dm * dH, cnt);
          }
        }
        // A LayerNorm's backward over the row's G*H values: out = rstd (dzv - mean(dzv) - zv
        // mean(dzv zv)), dzv = dl gain, with dl = dl_of(k, u, cnt); the gain's and shift's
        // sums added to acc_g, acc_s.
        auto ln_back = [&](const scalar_t* zv, const scalar_t* gain, scalar_t rstd, scalar_t* acc_g, scalar_t* acc_s,
                           scalar_t* out, auto&& dl_of) {
          V s1 = vzero<scalar_t>(), s2 = vzero<scalar_t>();
          for (int k = 0; k < G; ++k)
            for (int64_t u = 0; u < H; u += W) {
              const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
              const int64_t o = k * H + u;
              const V dl = dl_of(k, u, cnt), z = vload_n(zv + o, cnt);
              add(acc_g + o, dl * z, cnt);
              add(acc_s + o, dl, cnt);
              const V dv = dl * vload_n(gain + o, cnt);
              vstore_n(dz + o, dv, cnt);
              s1 = s1 + dv;
              s2 = s2 + dv * z;
            }
          const V m1 = vset<scalar_t>(vhsum<scalar_t>(s1) / static_cast<scalar_t>(GH));
          const V m2 = vset<scalar_t>(vhsum<scalar_t>(s2) / static_cast<scalar_t>(GH));
          const V vr = vset<scalar_t>(rstd);
          for (int64_t o = 0; o < GH; o += W) {
            const int cnt = static_cast<int>(std::min<int64_t>(W, GH - o));
            vstore_n(out + o, vr * (vload_n(dz + o, cnt) - m1 - vload_n(zv + o, cnt) * m2), cnt);
          }
        };
        ln_back(zh, a.g_hh, a.rstd_h[tn], acc_ghh, acc_shh, dah, [&](int k, int64_t u, int cnt) {
          const V dl = vload_n(dg + k * H + u, cnt);
          return G == 3 && k == 2 ? dl * vload_n(gt + u, cnt) : dl;  // GRU: r (W_hn h) enters n
        });
        if (lnx)
          ln_back(a.zhat_x + tn * GH, a.g_ih, a.rstd_x[tn], acc_gih, acc_sih, dx,
                  [&](int k, int64_t u, int cnt) { return vload_n(dg + k * H + u, cnt); });
      }
      for (int64_t k = 0; k < S; ++k) total[k] += static_cast<double>(acc[k]);
    });
    // dh0 = dah(the first forward step) @ W_hh (times rd) + what was carried
    const scalar_t* first = a.dah + (a.reverse ? T - 1 : 0) * N * GH;
    fused_gemm<scalar_t, 4>(ws, first, GH, GH, w_back.get(), [&](int64_t p, int64_t n, const V* acc4) {
      for (int b = 0; b < 4; ++b) {
        const int64_t u = (p * 4 + b) * W, o = n * H + u;
        if (u >= H) break;
        const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
        const V r = a.rd ? acc4[b] * vload_n(a.rd + o, cnt) : acc4[b];
        vstore_n(a.dh0 + o, r + vload_n(carry.get() + o, cnt), cnt);
      }
    });
  });
  if (G == 4) std::copy(dc.get(), dc.get() + N * H, a.dc0);
  scalar_t* outs[6] = {a.dg_ih, a.ds_ih, a.dg_hh, a.ds_hh, a.dg_c, a.ds_c};
  const int64_t offs[6] = {0, GH, 2 * GH, 3 * GH, 4 * GH, 4 * GH + H};
  const int64_t lens[6] = {GH, GH, GH, GH, H, H};
  for (int j = 0; j < 6; ++j) {
    if (!outs[j]) continue;
    for (int64_t k = 0; k < lens[j]; ++k) {
      double v = 0;
      for (int th = 0; th < nt; ++th) v += sums[size_t(th * S + offs[j] + k)];
      outs[j][k] = static_cast<scalar_t>(v);
    }
  }
}

}  // namespace

template <typename scalar_t>
void ln_forward(const LnForwardParams<scalar_t>& a) {
  if (a.kind == kCellLstm) return ln_forward_g<scalar_t, 4>(a);
  return ln_forward_g<scalar_t, 3>(a);
}

template <typename scalar_t>
void ln_backward(const LnBackwardParams<scalar_t>& a) {
  if (a.kind == kCellLstm) return ln_backward_g<scalar_t, 4>(a);
  return ln_backward_g<scalar_t, 3>(a);
}

template <typename scalar_t>
void reg_forward(const RegForwardParams<scalar_t>& a) {
  switch (a.kind) {
    case kCellLstm: return forward_g<scalar_t, 4>(a);
    case kCellGru: return forward_g<scalar_t, 3>(a);
    default: return forward_g<scalar_t, 1>(a);
  }
}

template <typename scalar_t>
void reg_backward(const RegBackwardParams<scalar_t>& a) {
  switch (a.kind) {
    case kCellLstm: return backward_g<scalar_t, 4>(a);
    case kCellGru: return backward_g<scalar_t, 3>(a);
    default: return backward_g<scalar_t, 1>(a);
  }
}

FASTRNN_INSTANTIATE(reg_forward, RegForwardParams)
FASTRNN_INSTANTIATE(reg_backward, RegBackwardParams)
FASTRNN_INSTANTIATE(ln_forward, LnForwardParams)
FASTRNN_INSTANTIATE(ln_backward, LnBackwardParams)

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
