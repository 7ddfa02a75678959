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
template <typename scalar_t>
struct LstmGateGrads {
  vec_t<scalar_t> di, df, dg, dout, dc_prev;
};

template <typename scalar_t>
FASTRNN_INLINE LstmGateGrads<scalar_t> lstm_gate_grads(vec_t<scalar_t> i, vec_t<scalar_t> f, vec_t<scalar_t> g, vec_t<scalar_t> o,
                                                vec_t<scalar_t> tc, vec_t<scalar_t> cp, vec_t<scalar_t> dm,
                                                vec_t<scalar_t> dc_in) {
  const vec_t<scalar_t> dc = dc_in + dm * o * ((scalar_t)1 - tc * tc);
  return {dc * g * i * ((scalar_t)1 - i), dc * cp * f * ((scalar_t)1 - f), dc * i * ((scalar_t)1 - g * g),
          dm * tc * o * ((scalar_t)1 - o), dc * f};
}

// The peephole LSTM (peephole weights pi, pf, po): c' also feeds o's pre-activation, and
// c (cp) feeds i's and f's, which adds to the gradients of c' and of c.
template <typename scalar_t>
FASTRNN_INLINE LstmGateGrads<scalar_t> lstm_gate_grads(vec_t<scalar_t> i, vec_t<scalar_t> f, vec_t<scalar_t> g, vec_t<scalar_t> o,
                                                vec_t<scalar_t> tc, vec_t<scalar_t> cp, vec_t<scalar_t> dm,
                                                vec_t<scalar_t> dc_in, vec_t<scalar_t> pi, vec_t<scalar_t> pf,
                                                vec_t<scalar_t> po) {
  const vec_t<scalar_t> dout = dm * tc * o * ((scalar_t)1 - o);
  const vec_t<scalar_t> dc = dc_in + dm * o * ((scalar_t)1 - tc * tc) + dout * po;
  const vec_t<scalar_t> di = dc * g * i * ((scalar_t)1 - i), df = dc * cp * f * ((scalar_t)1 - f);
  return {di, df, dc * i * ((scalar_t)1 - g * g), dout, dc * f + di * pi + df * pf};
}

// GRU: from dh (the gradient of h'), the saved r, z, n and hn = W_hn h + b_hn, and h: the
// pre-activation gradients of r, z and of n's input part (the hidden side's n gradient is
// dn * r; h's direct gradient is dh * z).
template <typename scalar_t>
struct GruGateGrads {
  vec_t<scalar_t> dr, dz, dn;
};

template <typename scalar_t>
FASTRNN_INLINE GruGateGrads<scalar_t> gru_gate_grads(vec_t<scalar_t> dh, vec_t<scalar_t> r, vec_t<scalar_t> z, vec_t<scalar_t> nn,
                                              vec_t<scalar_t> hn, vec_t<scalar_t> hp) {
  const vec_t<scalar_t> dn = dh * ((scalar_t)1 - z) * ((scalar_t)1 - nn * nn);
  return {dn * hn * r * ((scalar_t)1 - r), dh * (hp - nn) * z * ((scalar_t)1 - z), dn};
}

// Stores them: the input side's (dr, dz, dn) at dx and the hidden side's (dr, dz, dn * r)
// at dhg, the gates H apart.
template <typename scalar_t>
FASTRNN_INLINE void store_gru_gate_grads(scalar_t* dx, scalar_t* dhg, const GruGateGrads<scalar_t>& gr, vec_t<scalar_t> r,
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
