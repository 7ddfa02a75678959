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

template <typename scalar_t>
struct RnnFwdEpi {
  using A = acc_t<scalar_t>;
  const scalar_t* xg;             // [N, H] this step
  const scalar_t* hprev;          // [N, H]
  scalar_t* y;                    // [N, H] this step
  const int64_t* lengths;
  int t, H;
  bool relu;

  FASTRNN_HD void prefetch(int n, int j) const { prefetch_l2(xg + static_cast<size_t>(n) * H + j); }

  FASTRNN_HD void operator()(int n, int j, const A (&acc)[1]) const {
    const size_t nh = static_cast<size_t>(n) * H + j;
    if (!step_valid(lengths, n, t)) {
      y[nh] = load_cg(hprev + nh);
      return;
    }
    const A pre = to_acc(xg[nh]) + acc[0];
    y[nh] = from_acc<scalar_t>(relu ? act_relu(pre) : act_tanh(pre));
  }
};

template <typename scalar_t>
struct RnnBwdEpi {
  using A = acc_t<scalar_t>;
  const scalar_t* dy;             // [N, H] this step, or nullptr (final launch)
  A* carry;                // [N, H]
  const scalar_t* y;              // [N, H] this step
  scalar_t* dxg;                  // [N, H] this step
  scalar_t* dh0;                  // [N, H] final launch only
  const int64_t* lengths;
  int t, H;
  bool relu;

  FASTRNN_HD void prefetch(int n, int j) const {
    if (y == nullptr) return;  // the final launch reads no step data
    const size_t nh = static_cast<size_t>(n) * H + j;
    prefetch_l2(y + nh);
    if (dy != nullptr) prefetch_l2(dy + nh);
  }

  FASTRNN_HD void operator()(int n, int j, const A (&acc)[1]) const {
    const size_t nh = static_cast<size_t>(n) * H + j;
    A dh = acc[0] + carry[nh];
    if (dy != nullptr) dh += to_acc(dy[nh]);
    if (dh0 != nullptr) {
      dh0[nh] = from_acc<scalar_t>(dh);
      return;
    }
    if (!step_valid(lengths, n, t)) {
      carry[nh] = dh;
      dxg[nh] = from_acc<scalar_t>(A(0));
      return;
    }
    carry[nh] = A(0);
    const A yv = to_acc(y[nh]);
    dxg[nh] = from_acc<scalar_t>(relu ? (yv > A(0) ? dh : A(0)) : dh * d_tanh(yv));
  }
};

template <typename scalar_t>
struct RnnFwdSteps {
  using value_type = scalar_t;
  using Epi = RnnFwdEpi<scalar_t>;
  static constexpr int G = 1;
  int T_, N, H;
  bool reverse, relu;
  const scalar_t* xg;
  const scalar_t* h0;
  const scalar_t* w_hh;           // [H, H]
  scalar_t* y;
  const int64_t* lengths;

  FASTRNN_HD int count() const { return T_; }
  FASTRNN_HD const scalar_t* hprev(int s) const {
    return s == 0 ? h0 : offset(y, time_of(s - 1, T_, reverse), size_t(N) * H);
  }
  FASTRNN_HD MatParams<scalar_t> mat(int s) const { return cuda::mat(hprev(s), H, w_hh, N, H, H); }
  FASTRNN_HD Epi epi(int s) const {
    const int t = time_of(s, T_, reverse);
    const size_t sh = size_t(N) * H;
    return Epi{offset(xg, t, sh), hprev(s), offset(y, t, sh), lengths, t, H, relu};
  }
};

// Backward launch i: i < T is step s = T-1-i (processing order); i == T completes dh0.
template <typename scalar_t>
struct RnnBwdSteps {
  using value_type = scalar_t;
  using Epi = RnnBwdEpi<scalar_t>;
  static constexpr int G = 1;
  int T_, N, H;
  bool reverse, relu;
  const scalar_t* dy;
  const scalar_t* w_hh_t;         // [H, H]
  const scalar_t* y;
  scalar_t* dxg;
  scalar_t* dh0;
  acc_t<scalar_t>* carry;
  const int64_t* lengths;

  FASTRNN_HD int count() const { return T_ + 1; }
  FASTRNN_HD int step(int i) const { return T_ - 1 - i; }
  FASTRNN_HD MatParams<scalar_t> mat(int i) const {
    const int s = step(i);
    const scalar_t* next =
        s + 1 < T_ ? offset(static_cast<const scalar_t*>(dxg), time_of(s + 1, T_, reverse), size_t(N) * H)
                   : nullptr;
    return cuda::mat(next, H, w_hh_t, N, H, H);
  }
  FASTRNN_HD Epi epi(int i) const {
    const int s = step(i);
    Epi e{};
    e.carry = carry;
    e.lengths = lengths;
    e.H = H;
    e.relu = relu;
    if (s < 0) {
      e.t = -1;
      e.dh0 = dh0;
      return e;
    }
    const int t = time_of(s, T_, reverse);
    const size_t sh = size_t(N) * H;
    e.t = t;
    e.dy = offset(dy, t, sh);
    e.y = offset(y, t, sh);
    e.dxg = offset(dxg, t, sh);
    return e;
  }
};

template <typename scalar_t, class Launcher>
void rnn_forward_steps(const RnnForwardArgs& a, Launcher& l) {
  RnnFwdSteps<scalar_t> st{a.T, a.N, a.H, a.reverse, a.relu, static_cast<const scalar_t*>(a.xg),
                    static_cast<const scalar_t*>(a.h0), static_cast<const scalar_t*>(a.w_hh),
                    static_cast<scalar_t*>(a.y), a.lengths};
  run_steps(l, st, a.tile, a.persistent);
}

template <typename scalar_t, class Launcher>
void rnn_backward_steps(const RnnBackwardArgs& a, Launcher& l) {
  RnnBwdSteps<scalar_t> st{a.T, a.N, a.H, a.reverse, a.relu, static_cast<const scalar_t*>(a.dy),
                    static_cast<const scalar_t*>(a.w_hh_t), static_cast<const scalar_t*>(a.y),
                    static_cast<scalar_t*>(a.dxg), static_cast<scalar_t*>(a.dh0),
                    static_cast<acc_t<scalar_t>*>(a.dh_carry), a.lengths};
  run_steps(l, st, a.tile, a.persistent);
}

}  // namespace cuda
}  // namespace fastrnn
