// The pointwise backward of one LSTM and one GRU step, written once for the sequence
// kernels (lstm.cpp, gru.cpp) and the fused step (cell.cpp). Derivatives from the saved
// activations: d sigmoid(s) = s (1 - s), d tanh(t) = 1 - t^2.
#pragma once
#include "cpu/vec.h"

namespace fastrnn {
namespace cpu {
namespace FASTRNN_ISA {

// LSTM: from the saved gates i, f, g, o, the new cell state's tanh tc, the previous cell
// state cp, dm = the gradient of o * tanh(c') and dc_in = the gradient reaching c' from later
// steps: the pre-activation gradients (di, df, dg, do) and the gradient of c (dc_prev).
template <typename T>
struct LstmGateGrads {
  vec_t<T> di, df, dg, dout, dc_prev;
};

template <typename T>
FASTRNN_INLINE LstmGateGrads<T> lstm_gate_grads(vec_t<T> i, vec_t<T> f, vec_t<T> g, vec_t<T> o,
                                                vec_t<T> tc, vec_t<T> cp, vec_t<T> dm,
                                                vec_t<T> dc_in) {
  const vec_t<T> dc = dc_in + dm * o * ((T)1 - tc * tc);
  return {dc * g * i * ((T)1 - i), dc * cp * f * ((T)1 - f), dc * i * ((T)1 - g * g),
          dm * tc * o * ((T)1 - o), dc * f};
}

// The peephole LSTM (peephole weights pi, pf, po): c' also feeds o's pre-activation, and
// c (cp) feeds i's and f's, which adds to the gradients of c' and of c.
template <typename T>
FASTRNN_INLINE LstmGateGrads<T> lstm_gate_grads(vec_t<T> i, vec_t<T> f, vec_t<T> g, vec_t<T> o,
                                                vec_t<T> tc, vec_t<T> cp, vec_t<T> dm,
                                                vec_t<T> dc_in, vec_t<T> pi, vec_t<T> pf,
                                                vec_t<T> po) {
  const vec_t<T> dout = dm * tc * o * ((T)1 - o);
  const vec_t<T> dc = dc_in + dm * o * ((T)1 - tc * tc) + dout * po;
  const vec_t<T> di = dc * g * i * ((T)1 - i), df = dc * cp * f * ((T)1 - f);
  return {di, df, dc * i * ((T)1 - g * g), dout, dc * f + di * pi + df * pf};
}

// GRU: from dh (the gradient of h'), the saved r, z, n and hn = W_hn h + b_hn, and h: the
// pre-activation gradients of r, z and of n's input part (the hidden side's n gradient is
// dn * r; h's direct gradient is dh * z).
template <typename T>
struct GruGateGrads {
  vec_t<T> dr, dz, dn;
};

template <typename T>
FASTRNN_INLINE GruGateGrads<T> gru_gate_grads(vec_t<T> dh, vec_t<T> r, vec_t<T> z, vec_t<T> nn,
                                              vec_t<T> hn, vec_t<T> hp) {
  const vec_t<T> dn = dh * ((T)1 - z) * ((T)1 - nn * nn);
  return {dn * hn * r * ((T)1 - r), dh * (hp - nn) * z * ((T)1 - z), dn};
}

// Stores them: the input side's (dr, dz, dn) at dx and the hidden side's (dr, dz, dn * r)
// at dhg, the gates H apart.
template <typename T>
FASTRNN_INLINE void store_gru_gate_grads(T* dx, T* dhg, const GruGateGrads<T>& gr, vec_t<T> r,
                                         int64_t H, int cnt) {
  vstore_n(dx, gr.dr, cnt);
  vstore_n(dx + H, gr.dz, cnt);
  vstore_n(dx + 2 * H, gr.dn, cnt);
  vstore_n(dhg, gr.dr, cnt);
  vstore_n(dhg + H, gr.dz, cnt);
  vstore_n(dhg + 2 * H, gr.dn * r, cnt);
}

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
