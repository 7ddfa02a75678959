// GRU (gates r, z, n) step epilogues and time-loop drivers. See api.h for shapes.
//
// Forward, per step: one tile launch with G = 3, A = h_{t-1}, W = unit-major W_hh
// [H, 3, H]; the epilogue adds b_hh and xg, applies the gates and writes h and the
// saved r, z, n, hn (hn = h W_hn^T + b_hn, needed because r multiplies it).
// Backward, per step: one launch over (n, j)
//     dh_t = dy_t + carry + dhg_{t+1} W_hh
// where carry = dh_{t+1} z_{t+1} (or dh_{t+1} itself when step t+1 was frozen) and
// dhg = (dr_pre, dz_pre, dn_pre * r) is the gradient of h W_hh^T + b_hh, kept in a
// two-slot workspace so a step reads one slot while writing the other.
#pragma once
#include "steps.cuh"

namespace fastrnn {
namespace cuda {

template <typename scalar_t>
struct GruFwdEpi {
  using A = acc_t<scalar_t>;
  const scalar_t* xg;             // [N, 3H] this step
  const scalar_t* hprev;          // [N, H]
  const scalar_t* b_hh;           // [3H]
  scalar_t* y;                    // [N, H] this step
  scalar_t* saved;                // [N, 4H] this step, or nullptr
  const int64_t* lengths;
  int t, H;

  FASTRNN_HD void prefetch(int n, int j) const { prefetch_gates<3>(xg, n, j, H); }

  FASTRNN_HD void operator()(int n, int j, const A (&acc)[3]) const {
    const size_t nh = static_cast<size_t>(n) * H + j;
    scalar_t* sv = saved == nullptr ? nullptr : saved + static_cast<size_t>(n) * 4 * H;
    if (!step_valid(lengths, n, t)) {
      y[nh] = load_cg(hprev + nh);
      if (sv != nullptr)
        for (int g = 0; g < 4; ++g) sv[g * H + j] = from_acc<scalar_t>(A(0));
      return;
    }
    const scalar_t* x = xg + static_cast<size_t>(n) * 3 * H;
    const A hn = acc[2] + to_acc(b_hh[2 * H + j]);
    const A r = act_sigmoid(to_acc(x[j]) + acc[0] + to_acc(b_hh[j]));
    const A z = act_sigmoid(to_acc(x[H + j]) + acc[1] + to_acc(b_hh[H + j]));
    const A nn = act_tanh(to_acc(x[2 * H + j]) + r * hn);
    y[nh] = from_acc<scalar_t>((A(1) - z) * nn + z * to_acc(load_cg(hprev + nh)));
    if (sv != nullptr) {
      sv[j] = from_acc<scalar_t>(r);
      sv[H + j] = from_acc<scalar_t>(z);
      sv[2 * H + j] = from_acc<scalar_t>(nn);
      sv[3 * H + j] = from_acc<scalar_t>(hn);
    }
  }
};

template <typename scalar_t>
struct GruBwdEpi {
  using A = acc_t<scalar_t>;
  const scalar_t* dy;             // [N, H] this step, or nullptr (final launch)
  A* carry;                // [N, H]
  const scalar_t* saved;          // [N, 4H] this step
  const scalar_t* hprev;          // [N, H]
  scalar_t* dxg;                  // [N, 3H] this step
  scalar_t* dhg;                  // [N, 3H] workspace slot written by this step
  scalar_t* dh0;                  // [N, H] final launch only
  const int64_t* lengths;
  int t, H;

  FASTRNN_HD void prefetch(int n, int j) const {
    if (saved == nullptr) return;  // the final launch reads no step data
    const size_t nh = static_cast<size_t>(n) * H + j;
    prefetch_gates<4>(saved, n, j, H);
    prefetch_l2(dy + nh);
    prefetch_l2(hprev + nh);
  }

  FASTRNN_HD void operator()(int n, int j, const A (&acc)[1]) const {
    const size_t nh = static_cast<size_t>(n) * H + j;
    A dh = acc[0] + carry[nh];
    if (dy != nullptr) dh += to_acc(dy[nh]);
    if (dh0 != nullptr) {
      dh0[nh] = from_acc<scalar_t>(dh);
      return;
    }
    scalar_t* dx = dxg + static_cast<size_t>(n) * 3 * H;
    scalar_t* dhh = dhg + static_cast<size_t>(n) * 3 * H;
    if (!step_valid(lengths, n, t)) {
      carry[nh] = dh;
      for (int g = 0; g < 3; ++g) {
        dx[g * H + j] = from_acc<scalar_t>(A(0));
        dhh[g * H + j] = from_acc<scalar_t>(A(0));
      }
      return;
    }
    const scalar_t* sv = saved + static_cast<size_t>(n) * 4 * H;
    const A r = to_acc(sv[j]), z = to_acc(sv[H + j]), nn = to_acc(sv[2 * H + j]),
            hn = to_acc(sv[3 * H + j]);
    const A dn_pre = dh * (A(1) - z) * d_tanh(nn);
    const A dz_pre = dh * (to_acc(hprev[nh]) - nn) * d_sigmoid(z);
    const A dr_pre = dn_pre * hn * d_sigmoid(r);
    dx[j] = from_acc<scalar_t>(dr_pre);
    dx[H + j] = from_acc<scalar_t>(dz_pre);
    dx[2 * H + j] = from_acc<scalar_t>(dn_pre);
    dhh[j] = from_acc<scalar_t>(dr_pre);
    dhh[H + j] = from_acc<scalar_t>(dz_pre);
    dhh[2 * H + j] = from_acc<scalar_t>(dn_pre * r);
    carry[nh] = dh * z;
  }
};

template <typename scalar_t>
struct GruFwdSteps {
  using value_type = scalar_t;
  using Epi = GruFwdEpi<scalar_t>;
  static constexpr int G = 3;
  int T_, N, H;
  bool reverse;
  const scalar_t* xg;
  const scalar_t* h0;
  const scalar_t* w_hh;           // [H, 3, H]
  const scalar_t* b_hh;
  scalar_t* y;
  scalar_t* saved;
  const int64_t* lengths;

  FASTRNN_HD int count() const { return T_; }
  FASTRNN_HD const scalar_t* hprev(int s) const {
    return s == 0 ? h0 : offset(y, time_of(s - 1, T_, reverse), size_t(N) * H);
  }
  FASTRNN_HD MatParams<scalar_t> mat(int s) const { return cuda::mat(hprev(s), H, w_hh, N, H, H); }
  FASTRNN_HD Epi epi(int s) const {
    const int t = time_of(s, T_, reverse);
    return Epi{offset(xg, t, size_t(N) * 3 * H), hprev(s), b_hh, offset(y, t, size_t(N) * H),
               offset(saved, t, size_t(N) * 4 * H), lengths, t, H};
  }
};

// Backward launch i: i < T is step s = T-1-i (processing order); i == T completes dh0.
template <typename scalar_t>
struct GruBwdSteps {
  using value_type = scalar_t;
  using Epi = GruBwdEpi<scalar_t>;
  static constexpr int G = 1;
  int T_, N, H;
  bool reverse;
  const scalar_t* dy;
  const scalar_t* h0;
  const scalar_t* w_hh_t;         // [H, 3H]
  const scalar_t* y;
  const scalar_t* saved;
  scalar_t* dxg;
  scalar_t* dh0;
  acc_t<scalar_t>* carry;
  scalar_t* dhg;                  // [2, N, 3H]: step s writes slot s & 1
  const int64_t* lengths;

  FASTRNN_HD int count() const { return T_ + 1; }
  FASTRNN_HD int step(int i) const { return T_ - 1 - i; }
  FASTRNN_HD MatParams<scalar_t> mat(int i) const {
    const int s = step(i);
    const scalar_t* next = s + 1 < T_ ? dhg + ((s + 1) & 1) * size_t(N) * 3 * H : nullptr;
    return cuda::mat(next, 3 * H, w_hh_t, N, H, 3 * H);
  }
  FASTRNN_HD Epi epi(int i) const {
    const int s = step(i);
    Epi e{};
    e.carry = carry;
    e.H = H;
    e.lengths = lengths;
    if (s < 0) {
      e.t = -1;
      e.dh0 = dh0;
      return e;
    }
    const int t = time_of(s, T_, reverse);
    const size_t sh = size_t(N) * H, s3 = size_t(N) * 3 * H;
    e.t = t;
    e.dy = offset(dy, t, sh);
    e.saved = offset(saved, t, size_t(N) * 4 * H);
    e.hprev = s == 0 ? h0 : offset(y, time_of(s - 1, T_, reverse), sh);
    e.dxg = offset(dxg, t, s3);
    e.dhg = dhg + (s & 1) * s3;
    return e;
  }
};

template <typename scalar_t, class Launcher>
void gru_forward_steps(const GruForwardArgs& a, Launcher& l) {
  GruFwdSteps<scalar_t> st{a.T, a.N, a.H, a.reverse, static_cast<const scalar_t*>(a.xg),
                    static_cast<const scalar_t*>(a.h0), static_cast<const scalar_t*>(a.w_hh),
                    static_cast<const scalar_t*>(a.b_hh), static_cast<scalar_t*>(a.y),
                    static_cast<scalar_t*>(a.saved), a.lengths};
  run_steps(l, st, a.tile, a.persistent);
}

template <typename scalar_t, class Launcher>
void gru_backward_steps(const GruBackwardArgs& a, Launcher& l) {
  GruBwdSteps<scalar_t> st{a.T, a.N, a.H, a.reverse, static_cast<const scalar_t*>(a.dy),
                    static_cast<const scalar_t*>(a.h0), static_cast<const scalar_t*>(a.w_hh_t),
                    static_cast<const scalar_t*>(a.y), static_cast<const scalar_t*>(a.saved),
                    static_cast<scalar_t*>(a.dxg), static_cast<scalar_t*>(a.dh0),
                    static_cast<acc_t<scalar_t>*>(a.dh_carry), static_cast<scalar_t*>(a.dhg), a.lengths};
  run_steps(l, st, a.tile, a.persistent);
}

}  // namespace cuda
}  // namespace fastrnn
