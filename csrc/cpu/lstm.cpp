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

template <typename T>
void lstm_forward(const LstmForwardParams<T>& a) {
  constexpr int W = Vec<T>::W;
  using V = vec_t<T>;
  const int64_t TT = a.T_, N = a.N, H = a.H, R = a.R, G4 = 4 * H;
  const bool proj = a.w_hr != nullptr;
  int64_t P1 = 0, P2 = 0;
  Packed<T> w_gates = pack_gate_major_cached<T, 4>(a.w_hh, H, R, &P1);        // h @ W_hh^T
  Packed<T> w_proj;
  if (proj) w_proj = pack_units_cached<T, 4>(a.w_hr, H, R, /*transposed=*/true, &P2);  // m @ W_hr^T
  Buffer<T> c = make_buffer<T>(N * H);
  std::copy(a.c0, a.c0 + N * H, c.get());
  Buffer<T> m;
  if (proj) m = make_buffer<T>(N * H);
  const int nt = std::max(1, a.num_threads);

  TeamBarrier bar;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const FlushDenormals ftz;  // this thread: denormals flushed (vec.h)
    const int tid = omp_get_thread_num(), nthr = omp_get_num_threads();
    const WorkSplit ws1(P1, N, tid, nthr, rows_per_tile<4>(), &bar);
    const WorkSplit ws2(P2, N, tid, nthr, rows_per_tile<4>(), &bar);
    for (int64_t s = 0; s < TT; ++s) {
      const int64_t t = a.reverse ? TT - 1 - s : s;
      const T* hprev = s == 0 ? a.h0 : a.y + (a.reverse ? t + 1 : t - 1) * N * R;
      T* yt = a.y + t * N * R;
      const T* xgt = a.xg + t * N * G4;
      T* gt = a.gates ? a.gates + t * N * G4 : nullptr;
      T* ct = a.cs ? a.cs + t * N * H : nullptr;
      fused_gemm<T, 4>(ws1, hprev, R, R, w_gates.get(), [&](int64_t p, int64_t n, const V* acc) {
        const int64_t u = p * W;
        const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
        T* crow = c.get() + n * H + u;
        if (!step_valid(a.lengths, n, t)) {  // frozen state
          if (ct) vstore_n(ct + n * H + u, vload_n(crow, cnt), cnt);
          if (gt)
            for (int g = 0; g < 4; ++g) vstore_n(gt + n * G4 + g * H + u, vzero<T>(), cnt);
          if (!proj) vstore_n(yt + n * R + u, vload_n(hprev + n * R + u, cnt), cnt);
          return;
        }
        const T* x = xgt + n * G4 + u;
        const V cp = vload_n(crow, cnt);
        V pre_i = acc[0] + vload_n(x, cnt), pre_f = acc[1] + vload_n(x + H, cnt);
        V pre_o = acc[3] + vload_n(x + 3 * H, cnt);
        if (a.w_ch) {  // peepholes: i and f see c_{t-1}
          pre_i = pre_i + vload_n(a.w_ch + u, cnt) * cp;
          pre_f = pre_f + vload_n(a.w_ch + H + u, cnt) * cp;
        }
        const V i = vsigmoid<T>(pre_i);
        const V f = vsigmoid<T>(pre_f);
        const V g = vtanh<T>(acc[2] + vload_n(x + 2 * H, cnt));
        const V cnew = f * cp + i * g;
        if (a.w_ch) pre_o = pre_o + vload_n(a.w_ch + 2 * H + u, cnt) * cnew;  // o sees c_t
        const V o = vsigmoid<T>(pre_o);
        const V h = o * vtanh<T>(cnew);
        vstore_n(crow, cnew, cnt);
        if (ct) vstore_n(ct + n * H + u, cnew, cnt);
        if (gt) {
          T* gr = gt + n * G4 + u;
          vstore_n(gr, i, cnt);
          vstore_n(gr + H, f, cnt);
          vstore_n(gr + 2 * H, g, cnt);
          vstore_n(gr + 3 * H, o, cnt);
        }
        vstore_n(proj ? m.get() + n * H + u : yt + n * R + u, h, cnt);
      });
      if (proj) {
FASTRNN_PHASE_BARRIER(ws1);
        fused_gemm<T, 4>(ws2, m.get(), H, H, w_proj.get(), [&](int64_t p, int64_t n, const V* acc) {
          const bool valid = step_valid(a.lengths, n, t);
          for (int b = 0; b < 4; ++b) {
            const int64_t col = (p * 4 + b) * W;
            if (col >= R) break;
            const int cnt = static_cast<int>(std::min<int64_t>(W, R - col));
            vstore_n(yt + n * R + col, valid ? acc[b] : vload_n(hprev + n * R + col, cnt), cnt);
          }
        });
      }
FASTRNN_PHASE_BARRIER(ws1);
    }
  }
  std::copy(c.get(), c.get() + N * H, a.cn);
}

template <typename T>
void lstm_backward(const LstmBackwardParams<T>& a) {
  constexpr int W = Vec<T>::W;
  using V = vec_t<T>;
  const int64_t TT = a.T_, N = a.N, H = a.H, R = a.R, G4 = 4 * H;
  const bool proj = a.w_hr != nullptr;
  int64_t P1 = 0, P2 = 0;
  Packed<T> w_back = pack_units_cached<T, 4>(a.w_hh, G4, R, /*transposed=*/false, &P1);  // dgates @ W_hh
  Packed<T> w_proj;
  if (proj) w_proj = pack_units_cached<T, 4>(a.w_hr, R, H, /*transposed=*/false, &P2);  // dr @ W_hr
  Buffer<T> dc = make_buffer<T>(N * H);
  std::copy(a.dcn, a.dcn + N * H, dc.get());
  // Gradient carried past frozen (invalid) steps, per output column.
  Buffer<T> carry = make_buffer<T>(N * R);
  const int nt = std::max(1, a.num_threads);

  TeamBarrier bar;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const FlushDenormals ftz;  // this thread: denormals flushed (vec.h)
    const int tid = omp_get_thread_num(), nthr = omp_get_num_threads();
    const WorkSplit ws1(P1, N, tid, nthr, rows_per_tile<4>(), &bar);
    const WorkSplit ws2(P2, N, tid, nthr, rows_per_tile<4>(), &bar);
    for (int64_t s = 0; s < TT; ++s) {
      const int64_t t = a.reverse ? s : TT - 1 - s;
      const T* dg_next = s == 0 ? nullptr : a.dgates + (a.reverse ? t - 1 : t + 1) * N * G4;
      const bool first_fwd = a.reverse ? t == TT - 1 : t == 0;
      const T* cprev = first_fwd ? a.c0 : a.cs + (a.reverse ? t + 1 : t - 1) * N * H;
      const T* dyt = a.dy + t * N * R;
      const T* gt = a.gates + t * N * G4;
      const T* ct = a.cs + t * N * H;
      T* dgt = a.dgates + t * N * G4;

      // Gate gradients of units [u, u+cnt) of row n, given dm = d(o*tanh(c)).
      auto cell = [&](int64_t n, int64_t u, int cnt, V dm) {
        const T* g = gt + n * G4 + u;
        const V i = vload_n(g, cnt), f = vload_n(g + H, cnt);
        const V gg = vload_n(g + 2 * H, cnt), o = vload_n(g + 3 * H, cnt);
        const V tc = vtanh<T>(vload_n(ct + n * H + u, cnt));
        T* dcrow = dc.get() + n * H + u;
        const V cp = vload_n(cprev + n * H + u, cnt);
        const LstmGateGrads<T> gr =
            a.w_ch ? lstm_gate_grads<T>(i, f, gg, o, tc, cp, dm, vload_n(dcrow, cnt), vload_n(a.w_ch + u, cnt),
                                        vload_n(a.w_ch + H + u, cnt), vload_n(a.w_ch + 2 * H + u, cnt))
                   : lstm_gate_grads<T>(i, f, gg, o, tc, cp, dm, vload_n(dcrow, cnt));
        T* d = dgt + n * G4 + u;
        vstore_n(d, gr.di, cnt);
        vstore_n(d + H, gr.df, cnt);
        vstore_n(d + 2 * H, gr.dg, cnt);
        vstore_n(d + 3 * H, gr.dout, cnt);
        vstore_n(dcrow, gr.dc_prev, cnt);
      };
      auto zero_gates = [&](int64_t n, int64_t u, int cnt) {
        for (int g = 0; g < 4; ++g) vstore_n(dgt + n * G4 + g * H + u, vzero<T>(), cnt);
      };

      if (!proj) {
        fused_gemm<T, 4>(ws1, dg_next, G4, G4, w_back.get(), [&](int64_t p, int64_t n, const V* acc) {
          const bool valid = step_valid(a.lengths, n, t);
          for (int b = 0; b < 4; ++b) {
            const int64_t u = (p * 4 + b) * W;
            if (u >= H) break;
            const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
            T* cr = carry.get() + n * R + u;
            const V dh = acc[b] + vload_n(dyt + n * R + u, cnt) + vload_n(cr, cnt);
            if (valid) {
              cell(n, u, cnt, dh);
              vstore_n(cr, vzero<T>(), cnt);
            } else {
              zero_gates(n, u, cnt);
              vstore_n(cr, dh, cnt);
            }
          }
        });
      } else {
        T* drt = a.dr + t * N * R;
        fused_gemm<T, 4>(ws1, dg_next, G4, G4, w_back.get(), [&](int64_t p, int64_t n, const V* acc) {
          const bool valid = step_valid(a.lengths, n, t);
          for (int b = 0; b < 4; ++b) {
            const int64_t col = (p * 4 + b) * W;
            if (col >= R) break;
            const int cnt = static_cast<int>(std::min<int64_t>(W, R - col));
            T* cr = carry.get() + n * R + col;
            const V d = acc[b] + vload_n(dyt + n * R + col, cnt) + vload_n(cr, cnt);
            vstore_n(drt + n * R + col, valid ? d : vzero<T>(), cnt);
            vstore_n(cr, valid ? vzero<T>() : d, cnt);
          }
        });
FASTRNN_PHASE_BARRIER(ws1);
        fused_gemm<T, 4>(ws2, drt, R, R, w_proj.get(), [&](int64_t p, int64_t n, const V* acc) {
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
FASTRNN_PHASE_BARRIER(ws1);
    }
    // dh0 = dgates(first forward step) @ W_hh + what was carried past frozen steps.
    const T* dg_first = a.dgates + (a.reverse ? TT - 1 : 0) * N * G4;
    gemm_plus_carry<T>(ws1, dg_first, G4, w_back.get(), R, carry.get(), a.dh0);
  }
  std::copy(dc.get(), dc.get() + N * H, a.dc0);
}

FASTRNN_INSTANTIATE(lstm_forward, LstmForwardParams)
FASTRNN_INSTANTIATE(lstm_backward, LstmBackwardParams)

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
