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

}  // namespace

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

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
