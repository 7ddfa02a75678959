// Elman RNN (tanh or relu) step epilogues and time-loop drivers. See api.h for shapes.
//
// Forward, per step: one tile launch with G = 1, A = h_{t-1}, W = W_hh [H, H] (already
// unit-major); h = act(xg + acc). Backward, per step: one launch
//     dh_t = dy_t + carry + dpre_{t+1} W_hh ,  dpre_t = dh_t * act'(y_t)
// with dpre written straight into dxg (it is the gradient of xg).
#pragma once
#include "steps.cuh"

namespace fastrnn {
namespace cuda {

template <typename T>
struct RnnFwdEpi {
  using A = acc_t<T>;
  const T* xg;             // [N, H] this step
  const T* hprev;          // [N, H]
  T* y;                    // [N, H] this step
  const int64_t* lengths;
  int t, H;
  bool relu;

  FASTRNN_HD void operator()(int n, int j, const A (&acc)[1]) const {
    const size_t nh = static_cast<size_t>(n) * H + j;
    if (!step_valid(lengths, n, t)) {
      y[nh] = hprev[nh];
      return;
    }
    const A pre = to_acc(xg[nh]) + acc[0];
    y[nh] = from_acc<T>(relu ? act_relu(pre) : act_tanh(pre));
  }
};

template <typename T>
struct RnnBwdEpi {
  using A = acc_t<T>;
  const T* dy;             // [N, H] this step, or nullptr (final launch)
  A* carry;                // [N, H]
  const T* y;              // [N, H] this step
  T* dxg;                  // [N, H] this step
  T* dh0;                  // [N, H] final launch only
  const int64_t* lengths;
  int t, H;
  bool relu;

  FASTRNN_HD void operator()(int n, int j, const A (&acc)[1]) const {
    const size_t nh = static_cast<size_t>(n) * H + j;
    A dh = acc[0] + carry[nh];
    if (dy != nullptr) dh += to_acc(dy[nh]);
    if (dh0 != nullptr) {
      dh0[nh] = from_acc<T>(dh);
      return;
    }
    if (!step_valid(lengths, n, t)) {
      carry[nh] = dh;
      dxg[nh] = from_acc<T>(A(0));
      return;
    }
    carry[nh] = A(0);
    const A yv = to_acc(y[nh]);
    dxg[nh] = from_acc<T>(relu ? (yv > A(0) ? dh : A(0)) : dh * d_tanh(yv));
  }
};

template <typename T, class Launcher>
void rnn_forward_steps(const RnnForwardArgs& a, Launcher& l) {
  const int T_ = a.T, N = a.N, H = a.H;
  const size_t sh = size_t(N) * H;
  const T* xg = static_cast<const T*>(a.xg);
  const T* h0 = static_cast<const T*>(a.h0);
  const T* w_hh = static_cast<const T*>(a.w_hh);
  T* y = static_cast<T*>(a.y);
  for (int s = 0; s < T_; ++s) {
    const int t = time_of(s, T_, a.reverse);
    const T* hprev = s == 0 ? h0 : offset(y, time_of(s - 1, T_, a.reverse), sh);
    RnnFwdEpi<T> e{offset(xg, t, sh), hprev, offset(y, t, sh), a.lengths, t, H, a.relu};
    launch_tile<1>(l, a.tile, mat(hprev, H, w_hh, N, H, H), e);
  }
}

template <typename T, class Launcher>
void rnn_backward_steps(const RnnBackwardArgs& a, Launcher& l) {
  using A = acc_t<T>;
  const int T_ = a.T, N = a.N, H = a.H;
  const size_t sh = size_t(N) * H;
  const T* dy = static_cast<const T*>(a.dy);
  const T* w_hh_t = static_cast<const T*>(a.w_hh_t);
  const T* y = static_cast<const T*>(a.y);
  T* dxg = static_cast<T*>(a.dxg);
  A* carry = static_cast<A*>(a.dh_carry);
  // s = T-1 .. 0: steps in reverse processing order; s = -1: final launch for dh0.
  for (int s = T_ - 1; s >= -1; --s) {
    const T* dpre_next = s + 1 < T_ ? offset(dxg, time_of(s + 1, T_, a.reverse), sh) : nullptr;
    RnnBwdEpi<T> e{};
    e.carry = carry;
    e.lengths = a.lengths;
    e.H = H;
    e.relu = a.relu;
    if (s < 0) {
      e.t = -1;
      e.dh0 = static_cast<T*>(a.dh0);
    } else {
      const int t = time_of(s, T_, a.reverse);
      e.t = t;
      e.dy = offset(dy, t, sh);
      e.y = offset(y, t, sh);
      e.dxg = offset(dxg, t, sh);
    }
    launch_tile<1>(l, a.tile, mat(static_cast<const T*>(dpre_next), H, w_hh_t, N, H, H), e);
  }
}

}  // namespace cuda
}  // namespace fastrnn
