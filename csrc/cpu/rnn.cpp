// Fused Elman RNN recurrence (h' = act(x W_ih^T + b + h W_hh^T), act tanh or relu).
// Per step ONE fused GEMM whose epilogue adds the input projection and applies
// the nonlinearity; backward likewise.
#include "cpu/fused_gemm.h"
#include "cpu/kernels.h"

namespace fastrnn {
namespace cpu {
namespace FASTRNN_ISA {

template <typename T>
void rnn_forward(const RnnForwardParams<T>& a) {
  constexpr int W = Vec<T>::W;
  using V = vec_t<T>;
  const int64_t TT = a.T_, N = a.N, H = a.H;
  int64_t P = 0;
  Packed<T> w = pack_units_cached<T, 4>(a.w_hh, H, H, /*transposed=*/true, &P);  // h @ W_hh^T
  const int nt = std::max(1, a.num_threads);

  TeamBarrier bar;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const FlushDenormals ftz;  // this thread: denormals flushed (vec.h)
    const WorkSplit ws(P, N, omp_get_thread_num(), omp_get_num_threads(), rows_per_tile<4>(), &bar);
    for (int64_t s = 0; s < TT; ++s) {
      const int64_t t = a.reverse ? TT - 1 - s : s;
      const T* hprev = s == 0 ? a.h0 : a.y + (a.reverse ? t + 1 : t - 1) * N * H;
      T* yt = a.y + t * N * H;
      const T* xgt = a.xg + t * N * H;
      fused_gemm<T, 4>(ws, hprev, H, H, w.get(), [&](int64_t p, int64_t n, const V* acc) {
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
            h = a.relu ? vrelu<T>(pre) : vtanh<T>(pre);
          }
          vstore_n(yt + n * H + u, h, cnt);
        }
      });
FASTRNN_PHASE_BARRIER(ws);
    }
  }
}

template <typename T>
void rnn_backward(const RnnBackwardParams<T>& a) {
  constexpr int W = Vec<T>::W;
  using V = vec_t<T>;
  const int64_t TT = a.T_, N = a.N, H = a.H;
  int64_t P = 0;
  Packed<T> w = pack_units_cached<T, 4>(a.w_hh, H, H, /*transposed=*/false, &P);  // dpre @ W_hh
  Buffer<T> carry = make_buffer<T>(N * H);  // dh carried past frozen steps
  const int nt = std::max(1, a.num_threads);

  TeamBarrier bar;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const FlushDenormals ftz;  // this thread: denormals flushed (vec.h)
    const WorkSplit ws(P, N, omp_get_thread_num(), omp_get_num_threads(), rows_per_tile<4>(), &bar);
    for (int64_t s = 0; s < TT; ++s) {
      const int64_t t = a.reverse ? s : TT - 1 - s;
      const T* d_next = s == 0 ? nullptr : a.dxg + (a.reverse ? t - 1 : t + 1) * N * H;
      const T* dyt = a.dy + t * N * H;
      const T* yt = a.y + t * N * H;
      T* dx = a.dxg + t * N * H;
      fused_gemm<T, 4>(ws, d_next, H, H, w.get(), [&](int64_t p, int64_t n, const V* acc) {
        const bool valid = step_valid(a.lengths, n, t);
        for (int b = 0; b < 4; ++b) {
          const int64_t u = (p * 4 + b) * W;
          if (u >= H) break;
          const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
          T* cr = carry.get() + n * H + u;
          const V dh = acc[b] + vload_n(dyt + n * H + u, cnt) + vload_n(cr, cnt);
          if (!valid) {
            vstore_n(dx + n * H + u, vzero<T>(), cnt);
            vstore_n(cr, dh, cnt);
            continue;
          }
          const V h = vload_n(yt + n * H + u, cnt);
          const V d = a.relu ? (h > vzero<T>() ? dh : vzero<T>()) : dh * ((T)1 - h * h);
          vstore_n(dx + n * H + u, d, cnt);
          vstore_n(cr, vzero<T>(), cnt);
        }
      });
FASTRNN_PHASE_BARRIER(ws);
    }
    const T* d_first = a.dxg + (a.reverse ? TT - 1 : 0) * N * H;
    gemm_plus_carry<T>(ws, d_first, H, w.get(), H, carry.get(), a.dh0);
  }
}

FASTRNN_INSTANTIATE(rnn_forward, RnnForwardParams)
FASTRNN_INSTANTIATE(rnn_backward, RnnBackwardParams)

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
