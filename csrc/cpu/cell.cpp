// One step of a cell with its input projection fused in (LSTMCell, GRUCell, RNNCell and
// one-step layer calls): the pre-activations x W_ih^T + h W_hh^T are one product over the
// concatenated input [x, h], whose epilogue adds the biases, applies the gates and writes
// the new state, in ONE call. A decoder calling a cell per step otherwise pays a separate
// projection GEMM, the recurrence kernel and their dispatch around a few microseconds of
// arithmetic.
//
// Two ways to the pre-activations:
//  * few rows (N <= kDirectRows): dot products straight off the row-major weights. At
//    batch 1 every weight is read once either way; packing would add a pack-cache check
//    that reads the weights (and the copy they are checked against) again.
//  * more rows: the register-blocked GEMM over packed panels (fused_gemm.h), the packed
//    weights from the pack cache, the two sources accumulated into one tile.
// Backward (cell_backward) is the pointwise part: the pre-activation gradients and the
// state's direct gradient; the products with the weights are GEMMs the caller runs.
#include <type_traits>
#include <vector>

#include "cpu/fused_gemm.h"
#include "cpu/gate_grads.h"
#include "cpu/kernels.h"

namespace fastrnn {
namespace cpu {
namespace FASTRNN_ISA {

namespace {

constexpr int64_t kDirectRows = 4;
// Below this many multiply-adds a step runs on one thread: waking a second costs more
// than it saves (a 128-unit LSTM step at batch 1 is ~117k).
constexpr int64_t kParallelMacs = int64_t(1) << 18;

// out[n * ldo + j] = dot(w[j, :K], a[n * lda : n * lda + K]) for rows j in [j0, j1): four weight rows at a
// time, each row block kept in L1 across the batch rows. With Round, w's values are
// rounded to bfloat16 as they are loaded (vround_bf16); with wt_t = uint16_t w holds
// bfloat16 values, widened as they are loaded.
template <typename scalar_t, bool Round = false, typename wt_t = scalar_t>
void rowdots(const wt_t* __restrict w, int64_t K, const scalar_t* __restrict a, int64_t lda, int64_t N, int64_t j0,
             int64_t j1, scalar_t* __restrict out, int64_t ldo) {
  constexpr int W = Vec<scalar_t>::W;
  using V = vec_t<scalar_t>;
  const int64_t Kfull = K / W * W;
  const int tail = static_cast<int>(K - Kfull);
  auto wload = [](const wt_t* p) {
    if constexpr (std::is_same_v<wt_t, uint16_t>) return vwiden_bf16(p);
    else if constexpr (Round) return vround_bf16<scalar_t>(vload<scalar_t>(p));
    else return vload<scalar_t>(p);
  };
  auto wload_n = [](const wt_t* p, int cnt) {
    if constexpr (std::is_same_v<wt_t, uint16_t>) return vwiden_bf16(p, cnt);
    else if constexpr (Round) return vround_bf16<scalar_t>(vload_n(p, cnt));
    else return vload_n(p, cnt);
  };
  int64_t j = j0;
  for (; j + 4 <= j1; j += 4) {
    const wt_t* w0 = w + j * K;
    for (int64_t n = 0; n < N; ++n) {
      const scalar_t* an = a + n * lda;
      V acc0 = vzero<scalar_t>(), acc1 = vzero<scalar_t>(), acc2 = vzero<scalar_t>(), acc3 = vzero<scalar_t>();
      for (int64_t k = 0; k < Kfull; k += W) {
        const V av = vload<scalar_t>(an + k);
        acc0 += wload(w0 + k) * av;
        acc1 += wload(w0 + K + k) * av;
        acc2 += wload(w0 + 2 * K + k) * av;
        acc3 += wload(w0 + 3 * K + k) * av;
      }
      if (tail) {
        const V av = vload_n(an + Kfull, tail);
        acc0 += wload_n(w0 + Kfull, tail) * av;
        acc1 += wload_n(w0 + K + Kfull, tail) * av;
        acc2 += wload_n(w0 + 2 * K + Kfull, tail) * av;
        acc3 += wload_n(w0 + 3 * K + Kfull, tail) * av;
      }
      scalar_t* o = out + n * ldo + j;
      o[0] = vhsum<scalar_t>(acc0);
      o[1] = vhsum<scalar_t>(acc1);
      o[2] = vhsum<scalar_t>(acc2);
      o[3] = vhsum<scalar_t>(acc3);
    }
  }
  for (; j < j1; ++j)
    for (int64_t n = 0; n < N; ++n) {
      const scalar_t* an = a + n * lda;
      V acc = vzero<scalar_t>();
      for (int64_t k = 0; k < Kfull; k += W) acc += wload(w + j * K + k) * vload<scalar_t>(an + k);
      if (tail) acc += wload_n(w + j * K + Kfull, tail) * vload_n(an + Kfull, tail);
      out[n * ldo + j] = vhsum<scalar_t>(acc);
    }
}

// Packed panels of a bfloat16 weight W [G*H, K] (as pack_gate_major, or for G = 1 as the
// RNN's unit packing), widened to float32 as it is packed; cached on the bf16 bytes.
template <int G>
Packed<float> pack_bf16_weight(const uint16_t* w, int64_t H, int64_t K, int64_t* panels_out) {
  const int64_t layout[4] = {20000 + G, H, K, Vec<float>::W};
  return cached_pack_from<float>(w, G * H * K, layout, panels_out, [&](const uint16_t* src, int64_t* p) {
    std::vector<float> wide(static_cast<size_t>(G * H * K));
    for (size_t i = 0; i < wide.size(); ++i) wide[i] = bf16_widen(src[i]);
    if constexpr (G == 1)
      return pack_units<float, 4>(wide.data(), K, H, /*transposed=*/true, p);
    else
      return pack_gate_major<float, G>(wide.data(), H, K, p);
  });
}

template <int Cell>
constexpr int gates_of() {
  return Cell == kCellLstm ? 4 : Cell == kCellGru ? 3 : 1;
}

template <typename scalar_t, int Cell>
void cell_forward_impl(const CellForwardParams<scalar_t>& a) {
  constexpr int W = Vec<scalar_t>::W;
  constexpr int G = gates_of<Cell>();
  constexpr bool kGru = Cell == kCellGru;
  using V = vec_t<scalar_t>;
  const int64_t N = a.N, I = a.I, H = a.H, GH = G * H;

  // Biases: GRU keeps the two sides apart (b_hn sits inside the reset gate's product);
  // the others add both to one pre-activation.
  Buffer<scalar_t> bias = make_buffer<scalar_t>(2 * GH);
  scalar_t* bx = bias.get();
  scalar_t* bh = bias.get() + GH;
  // round_bf16 (float only): x, the weights, biases and peepholes rounded to bfloat16 as read
  const bool round_bf16 = sizeof(scalar_t) == 4 && a.round_bf16;
  for (int64_t j = 0; j < GH; ++j) {
    const scalar_t bi = a.b_ih ? packed_value(a.b_ih[j], round_bf16) : scalar_t(0);
    const scalar_t bb = a.b_hh ? packed_value(a.b_hh[j], round_bf16) : scalar_t(0);
    if (kGru) {
      bx[j] = bi;
      bh[j] = bb;
    } else {
      bx[j] = bi + bb;
    }
  }

  // x as the products read it: with round_bf16 (float only) a dense copy rounded to
  // bfloat16 (T*N*I values: small next to the weights), else in place at its strides.
  const scalar_t* x_base = a.x;
  int64_t x_row = a.x_row ? a.x_row : I, x_step = a.x_step ? a.x_step : N * I;
  Buffer<scalar_t> x_rounded;
  if constexpr (sizeof(scalar_t) == 4) {
    if (round_bf16) {
      x_rounded = make_buffer<scalar_t>(a.T * N * I);
      const int64_t Ifull = I / W * W;
      const int tail = static_cast<int>(I - Ifull);
      for (int64_t t = 0; t < a.T; ++t)
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* src = a.x + t * x_step + n * x_row;
          scalar_t* dst = x_rounded.get() + (t * N + n) * I;
          for (int64_t i = 0; i < Ifull; i += W) vstore(dst + i, vround_bf16<scalar_t>(vload(src + i)));
          if (tail) vstore_n(dst + Ifull, vround_bf16<scalar_t>(vload_n(src + Ifull, tail)), tail);
        }
      x_base = x_rounded.get();
      x_row = I;
      x_step = N * I;
    }
  }
  // the peepholes' weights rounded too (the biases are, above)
  const scalar_t* w_ch = a.w_ch;
  Buffer<scalar_t> w_ch_rounded;
  if (round_bf16 && w_ch) {
    w_ch_rounded = make_buffer<scalar_t>(3 * H);
    for (int64_t j = 0; j < 3 * H; ++j) w_ch_rounded.get()[j] = packed_value(w_ch[j], true);
    w_ch = w_ch_rounded.get();
  }

  // The step being computed (several with T > 1): its input, state in and out.
  struct Step {
    const scalar_t *x, *h, *c;
    scalar_t *h_out, *c_out, *saved;
    int64_t t;
  } st{x_base, a.h, a.c, a.h_out, a.c_out, a.saved, 0};

  // zoneout's eval expectation of h (CellForwardParams::zh_p; 0: the candidate itself)
  const scalar_t zh_p = a.zh_p, zc_p = a.zc_p;
  auto zoned = [&](int64_t n, int64_t u, int cnt, V cand) {
    return zh_p != 0 ? vset<scalar_t>(zh_p) * vload_n(st.h + n * H + u, cnt) + vset<scalar_t>(1 - zh_p) * cand : cand;
  };

  // px: G pre-activation vectors of the input side (with the hidden side added, except
  // for GRU); ph: GRU's hidden side.
  auto epilogue = [&](int64_t n, int64_t u, int cnt, const V* px, const V* ph) {
    if (a.lengths && st.t >= a.lengths[n]) {  // past this sequence's end: the state frozen
      vstore_n(st.h_out + n * H + u, vload_n(st.h + n * H + u, cnt), cnt);
      if constexpr (Cell == kCellLstm) vstore_n(st.c_out + n * H + u, vload_n(st.c + n * H + u, cnt), cnt);
      return;
    }
    const scalar_t* b = bx + u;
    if constexpr (Cell == kCellLstm) {
      const V cp = vload_n(st.c + n * H + u, cnt);
      V pre_i = px[0] + vload_n(b, cnt), pre_f = px[1] + vload_n(b + H, cnt);
      V pre_o = px[3] + vload_n(b + 3 * H, cnt);
      if (w_ch) {  // peepholes: i and f see c, o sees c'
        pre_i = pre_i + vload_n(w_ch + u, cnt) * cp;
        pre_f = pre_f + vload_n(w_ch + H + u, cnt) * cp;
      }
      const V i = vsigmoid<scalar_t>(pre_i);
      const V f = vsigmoid<scalar_t>(pre_f);
      const V g = vtanh<scalar_t>(px[2] + vload_n(b + 2 * H, cnt));
      const V cn = f * cp + i * g;
      if (w_ch) pre_o = pre_o + vload_n(w_ch + 2 * H + u, cnt) * cn;
      const V o = vsigmoid<scalar_t>(pre_o);
      const V hn = o * vtanh<scalar_t>(cn);
      vstore_n(st.c_out + n * H + u, zc_p != 0 ? vset<scalar_t>(zc_p) * cp + vset<scalar_t>(1 - zc_p) * cn : cn, cnt);
      vstore_n(st.h_out + n * H + u, zoned(n, u, cnt, hn), cnt);
      if (st.saved) {
        scalar_t* s = st.saved + n * 4 * H + u;
        vstore_n(s, i, cnt);
        vstore_n(s + H, f, cnt);
        vstore_n(s + 2 * H, g, cnt);
        vstore_n(s + 3 * H, o, cnt);
      }
    } else if constexpr (kGru) {
      const scalar_t* c = bh + u;
      const V hn = ph[2] + vload_n(c + 2 * H, cnt);
      const V r = vsigmoid<scalar_t>(px[0] + vload_n(b, cnt) + ph[0] + vload_n(c, cnt));
      const V z = vsigmoid<scalar_t>(px[1] + vload_n(b + H, cnt) + ph[1] + vload_n(c + H, cnt));
      const V nn = vtanh<scalar_t>(px[2] + vload_n(b + 2 * H, cnt) + r * hn);
      const V hp = vload_n(st.h + n * H + u, cnt);
      vstore_n(st.h_out + n * H + u, zoned(n, u, cnt, ((scalar_t)1 - z) * nn + z * hp), cnt);
      if (st.saved) {
        scalar_t* s = st.saved + n * 4 * H + u;
        vstore_n(s, r, cnt);
        vstore_n(s + H, z, cnt);
        vstore_n(s + 2 * H, nn, cnt);
        vstore_n(s + 3 * H, hn, cnt);
      }
    } else {
      const V pre = px[0] + vload_n(b, cnt);
      vstore_n(st.h_out + n * H + u, zoned(n, u, cnt, Cell == kCellRnnRelu ? vrelu<scalar_t>(pre) : vtanh<scalar_t>(pre)),
               cnt);
    }
  };

  const int64_t macs = N * GH * (I + H);
  const int nt = macs >= kParallelMacs ? std::max(1, a.num_threads) : 1;

  auto set_step = [&](int64_t s) {
    if (a.T == 1) return;
    const int64_t t = a.reverse ? a.T - 1 - s : s;
    st.t = t;
    st.x = x_base + t * x_step;
    st.h = s == 0 ? a.h : a.h_out + (a.reverse ? t + 1 : t - 1) * N * H;
    st.c = s == 0 ? a.c : a.c_out;  // read, then overwritten in place element by element
    st.h_out = a.h_out + t * N * H;
  };

  if (N <= kDirectRows) {
    Buffer<scalar_t> pre = make_buffer<scalar_t>(2 * N * GH);
    scalar_t* px = pre.get();
    scalar_t* ph = pre.get() + N * GH;
    for (int64_t s = 0; s < a.T; ++s) {
      set_step(s);
      auto dots = [&](int64_t j0, int64_t j1) {
        if constexpr (sizeof(scalar_t) == 4) {
          if (a.w_hh_bf16) {
            rowdots<scalar_t, false, uint16_t>(a.w_ih_bf16, I, st.x, x_row, N, j0, j1, px, GH);
            rowdots<scalar_t, false, uint16_t>(a.w_hh_bf16, H, st.h, H, N, j0, j1, ph, GH);
            return;
          }
          if (round_bf16) {
            rowdots<scalar_t, true>(a.w_ih, I, st.x, x_row, N, j0, j1, px, GH);
            rowdots<scalar_t, true>(a.w_hh, H, st.h, H, N, j0, j1, ph, GH);
            return;
          }
        }
        rowdots<scalar_t>(a.w_ih, I, st.x, x_row, N, j0, j1, px, GH);
        rowdots<scalar_t>(a.w_hh, H, st.h, H, N, j0, j1, ph, GH);
      };
      if (nt > 1) {
#pragma omp parallel num_threads(nt)
        {
          const FlushDenormals ftz;  // this thread: denormals flushed (vec.h)
          const int tid = omp_get_thread_num(), nthr = omp_get_num_threads();
          const int64_t blocks = (GH + 3) / 4;
          dots(std::min(GH, blocks * tid / nthr * 4), std::min(GH, blocks * (tid + 1) / nthr * 4));
        }
      } else {
        dots(0, GH);
      }
      for (int64_t n = 0; n < N; ++n)
        for (int64_t u = 0; u < H; u += W) {
          const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
          V vx[G], vh[G];
          for (int g = 0; g < G; ++g) {
            vx[g] = vload_n(px + n * GH + g * H + u, cnt);
            vh[g] = vload_n(ph + n * GH + g * H + u, cnt);
            if (!kGru) vx[g] += vh[g];
          }
          epilogue(n, u, cnt, vx, vh);
        }
    }
    return;
  }

  // Packed: gate-major panels (the G gates of W units together) for LSTM and GRU, four
  // column blocks per panel for the Elman RNN.
  constexpr int NB = G == 1 ? 4 : G;
  int64_t P = 0, P2 = 0;
  Packed<scalar_t> wx, wh;
  bool from_bf16 = false;
  if constexpr (sizeof(scalar_t) == 4) {
    if (a.w_hh_bf16) {
      wx = pack_bf16_weight<G>(a.w_ih_bf16, H, I, &P);
      wh = pack_bf16_weight<G>(a.w_hh_bf16, H, H, &P2);
      from_bf16 = true;
    }
  }
  if (from_bf16) {
  } else if constexpr (G == 1) {
    wx = pack_units_cached<scalar_t, 4>(a.w_ih, I, H, /*transposed=*/true, &P, round_bf16);
    wh = pack_units_cached<scalar_t, 4>(a.w_hh, H, H, /*transposed=*/true, &P2, round_bf16);
  } else {
    wx = pack_gate_major_cached<scalar_t, G>(a.w_ih, H, I, &P, round_bf16);
    wh = pack_gate_major_cached<scalar_t, G>(a.w_hh, H, H, &P2, round_bf16);
  }
  TeamBarrier bar;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const FlushDenormals ftz;  // this thread: denormals flushed (vec.h)
    constexpr int MR = rows_per_tile<NB>();
    const WorkSplit ws(P, N, omp_get_thread_num(), omp_get_num_threads(), MR, &bar);
    alignas(64) V accx[MR * NB];
    alignas(64) V acch[MR * NB];
    for (int64_t s = 0; s < a.T; ++s) {
      if (a.T > 1) {  // every thread takes the same branch
#pragma omp barrier
#pragma omp single
        set_step(s);  // the previous step complete; the single's implied barrier publishes it
      }
      for (int64_t p = ws.p_begin; p < ws.p_end; ++p) {
        const scalar_t* Bx = wx.get() + p * I * NB * W;
        const scalar_t* Bh = wh.get() + p * H * NB * W;
        for (int64_t n = ws.r_begin; n < ws.r_end; n += MR) {
          const int mr = static_cast<int>(std::min<int64_t>(MR, ws.r_end - n));
          micro_tile_rows<scalar_t, NB>(mr, st.x + n * x_row, x_row, I, Bx, accx);
          if constexpr (kGru)
            micro_tile_rows<scalar_t, NB>(mr, st.h + n * H, H, H, Bh, acch);
          else
            micro_tile_rows<scalar_t, NB, /*Accumulate=*/true>(mr, st.h + n * H, H, H, Bh, accx);
          for (int r = 0; r < mr; ++r) {
            const V* ax = accx + r * NB;
            if constexpr (G == 1) {
              for (int b = 0; b < NB; ++b) {
                const int64_t u = (p * NB + b) * W;
                if (u >= H) break;
                epilogue(n + r, u, static_cast<int>(std::min<int64_t>(W, H - u)), ax + b, nullptr);
              }
            } else {
              const int64_t u = p * W;
              epilogue(n + r, u, static_cast<int>(std::min<int64_t>(W, H - u)), ax, acch + r * NB);
            }
          }
        }
      }
    }
  }
}

// out[n, :K] += sum_j d[n, j] * w[j, :K] and dw[j, :K] = sum_n d[n, j] * a[n, :K], for every
// row j of w [rows, K]: the two weight products of a step's backward in one pass over w.
template <typename scalar_t>
void weight_products(const scalar_t* __restrict w, int64_t rows, int64_t K, const scalar_t* __restrict d,
                     int64_t ldd, const scalar_t* __restrict a, int64_t N, scalar_t* __restrict out,
                     scalar_t* __restrict dw) {
  constexpr int W = Vec<scalar_t>::W;
  using V = vec_t<scalar_t>;
  for (int64_t j = 0; j < rows; ++j) {
    const scalar_t* wr = w + j * K;
    scalar_t* dwr = dw + j * K;
    for (int64_t k = 0; k < K; k += W) {
      const int cnt = static_cast<int>(std::min<int64_t>(W, K - k));
      const V wv = vload_n(wr + k, cnt);
      V acc = vzero<scalar_t>();
      for (int64_t n = 0; n < N; ++n) {
        const V dv = vset<scalar_t>(d[n * ldd + j]);
        scalar_t* o = out ? out + n * K + k : nullptr;
        if (o) vstore_n(o, vload_n(o, cnt) + dv * wv, cnt);
        acc += dv * vload_n(a + n * K + k, cnt);
      }
      vstore_n(dwr + k, acc, cnt);
    }
  }
}

template <typename scalar_t, int Cell>
void cell_backward_impl(const CellBackwardParams<scalar_t>& a) {
  constexpr int W = Vec<scalar_t>::W;
  constexpr int G = gates_of<Cell>();
  using V = vec_t<scalar_t>;
  const int64_t N = a.N, H = a.H, GH = G * H;
  if (a.dw_ch) std::fill(a.dw_ch, a.dw_ch + 3 * H, scalar_t(0));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t u = 0; u < H; u += W) {
      const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
      const int64_t o = n * H + u;
      const V dh = vload_n(a.dh_out + o, cnt);
      scalar_t* dx = a.dpre_x + n * GH + u;
      if constexpr (Cell == kCellLstm) {
        const scalar_t* s = a.saved + n * 4 * H + u;
        const V i = vload_n(s, cnt), f = vload_n(s + H, cnt);
        const V g = vload_n(s + 2 * H, cnt), og = vload_n(s + 3 * H, cnt);
        const V cn = vload_n(a.c_out + o, cnt), cp = vload_n(a.c + o, cnt);
        const V dcn = a.dc_out ? vload_n(a.dc_out + o, cnt) : vzero<scalar_t>();
        const LstmGateGrads<scalar_t> gr =
            a.w_ch ? lstm_gate_grads<scalar_t>(i, f, g, og, vtanh<scalar_t>(cn), cp, dh, dcn, vload_n(a.w_ch + u, cnt),
                                        vload_n(a.w_ch + H + u, cnt), vload_n(a.w_ch + 2 * H + u, cnt))
                   : lstm_gate_grads<scalar_t>(i, f, g, og, vtanh<scalar_t>(cn), cp, dh, dcn);
        if (a.dw_ch) {  // the peepholes' gradients: i's and f's read c, o's c'
          scalar_t* d = a.dw_ch + u;
          vstore_n(d, vload_n(d, cnt) + gr.di * cp, cnt);
          vstore_n(d + H, vload_n(d + H, cnt) + gr.df * cp, cnt);
          vstore_n(d + 2 * H, vload_n(d + 2 * H, cnt) + gr.dout * cn, cnt);
        }
        vstore_n(dx, gr.di, cnt);
        vstore_n(dx + H, gr.df, cnt);
        vstore_n(dx + 2 * H, gr.dg, cnt);
        vstore_n(dx + 3 * H, gr.dout, cnt);
        vstore_n(a.dc + o, gr.dc_prev, cnt);
      } else if constexpr (Cell == kCellGru) {
        const scalar_t* s = a.saved + n * 4 * H + u;
        const V r = vload_n(s, cnt), z = vload_n(s + H, cnt);
        const V nn = vload_n(s + 2 * H, cnt), hn = vload_n(s + 3 * H, cnt);
        const GruGateGrads<scalar_t> gr = gru_gate_grads<scalar_t>(dh, r, z, nn, hn, vload_n(a.h + o, cnt));
        store_gru_gate_grads<scalar_t>(dx, a.dpre_h + n * GH + u, gr, r, H, cnt);
        vstore_n(a.dh_direct + o, dh * z, cnt);
      } else {
        const V y = vload_n(a.h_out + o, cnt);
        const V d = Cell == kCellRnnRelu ? (y > vzero<scalar_t>() ? dh : vzero<scalar_t>()) : dh * ((scalar_t)1 - y * y);
        vstore_n(dx, d, cnt);
      }
    }
  if (!a.dw_ih) return;
  const scalar_t* dph = Cell == kCellGru ? a.dpre_h : a.dpre_x;
  if (a.dx) std::fill(a.dx, a.dx + N * a.I, scalar_t(0));
  if (Cell == kCellGru)
    std::copy(a.dh_direct, a.dh_direct + N * H, a.dh);
  else
    std::fill(a.dh, a.dh + N * H, scalar_t(0));
  weight_products<scalar_t>(a.w_ih, GH, a.I, a.dpre_x, GH, a.x, N, a.dx, a.dw_ih);
  weight_products<scalar_t>(a.w_hh, GH, H, dph, GH, a.h, N, a.dh, a.dw_hh);
  if (a.db_ih)
    for (int64_t j = 0; j < GH; ++j) {
      scalar_t sx = scalar_t(0), sh = scalar_t(0);
      for (int64_t n = 0; n < N; ++n) {
        sx += a.dpre_x[n * GH + j];
        sh += dph[n * GH + j];
      }
      a.db_ih[j] = sx;
      a.db_hh[j] = sh;  // (LSTM, RNN: sx again, and db_hh may be db_ih itself)
    }
}

}  // namespace

template <typename scalar_t>
void cell_forward(const CellForwardParams<scalar_t>& a) {
  const FlushDenormals ftz;  // the calling thread (its parallel regions hold their own)
  switch (a.cell) {
    case kCellLstm: return cell_forward_impl<scalar_t, kCellLstm>(a);
    case kCellGru: return cell_forward_impl<scalar_t, kCellGru>(a);
    case kCellRnnTanh: return cell_forward_impl<scalar_t, kCellRnnTanh>(a);
    default: return cell_forward_impl<scalar_t, kCellRnnRelu>(a);
  }
}

template <typename scalar_t>
void cell_backward(const CellBackwardParams<scalar_t>& a) {
  const FlushDenormals ftz;
  switch (a.cell) {
    case kCellLstm: return cell_backward_impl<scalar_t, kCellLstm>(a);
    case kCellGru: return cell_backward_impl<scalar_t, kCellGru>(a);
    case kCellRnnTanh: return cell_backward_impl<scalar_t, kCellRnnTanh>(a);
    default: return cell_backward_impl<scalar_t, kCellRnnRelu>(a);
  }
}

FASTRNN_INSTANTIATE(cell_forward, CellForwardParams)
FASTRNN_INSTANTIATE(cell_backward, CellBackwardParams)

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
