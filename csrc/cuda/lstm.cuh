// LSTM (gates i, f, g, o) step epilogues and time-loop drivers. See api.h for shapes.
// With peepholes (w_ch set): i and f also see p_i*c_{t-1}, p_f*c_{t-1}, and o sees
// p_o*c_t; the backward adds their terms to dc (dW_ch is reduced by the caller).
//
// Forward, per step: one tile launch over (n, unit j) with G = 4, A = h_{t-1} [N, R],
// W = unit-major W_hh [H, 4, R]; the epilogue adds xg, applies the gate nonlinearities
// and updates c (kept in the acc type) and h. A projected LSTM adds a second launch
// h = m W_hr^T (G = 1).
// Backward, per step (in reverse processing order): one launch over (n, j) computing
//     dh_t = dy_t + carry + dgates_{t+1} W_hh      (A = dgates of the step after)
// fused with the gate derivatives of step t, so step t's launch both finishes the
// recurrent gradient of step t+1 and starts step t. `carry` is what passes through
// without the matmul: dh_t itself when step t is invalid (frozen), else 0. A final
// launch with no step writes dh0. With a projection the dh_t launch is over R and a
// second launch computes dm = dr_t W_hr fused with the gate derivatives.
#pragma once
#include "steps.cuh"

namespace fastrnn {
namespace cuda {

template <typename scalar_t>
struct LstmFwdEpi {
  using A = acc_t<scalar_t>;
  const scalar_t* xg;             // [N, 4H] this step
  const scalar_t* hprev;          // [N, R]
  scalar_t* y;                    // [N, R] this step (no projection)
  A* c;                    // [N, H]
  scalar_t* gates;                // [N, 4H] or nullptr
  scalar_t* cs;                   // [N, H] or nullptr
  scalar_t* m;                    // [N, H] projection workspace or nullptr
  const int64_t* lengths;
  int t, H, R;
  const scalar_t* w_ch;           // [3H] peepholes p_i, p_f, p_o, or nullptr (plain LSTM)

  // What operator()(n, j) will read from the big per-step streams.
  FASTRNN_HD void prefetch(int n, int j) const { prefetch_gates<4>(xg, n, j, H); }

  FASTRNN_HD void operator()(int n, int j, const A (&acc)[4]) const {
    const size_t nh = static_cast<size_t>(n) * H + j;
    scalar_t* gt = gates == nullptr ? nullptr : gates + static_cast<size_t>(n) * 4 * H;
    if (!step_valid(lengths, n, t)) {
      if (m == nullptr) y[static_cast<size_t>(n) * R + j] = load_cg(hprev + static_cast<size_t>(n) * R + j);
      if (cs != nullptr) cs[nh] = from_acc<scalar_t>(c[nh]);
      if (gt != nullptr)
        for (int g = 0; g < 4; ++g) gt[g * H + j] = from_acc<scalar_t>(A(0));
      return;
    }
    const scalar_t* x = xg + static_cast<size_t>(n) * 4 * H;
    const A cp = c[nh];
    A pre_i = to_acc(x[j]) + acc[0], pre_f = to_acc(x[H + j]) + acc[1];
    A pre_o = to_acc(x[3 * H + j]) + acc[3];
    if (w_ch != nullptr) {  // peepholes: i and f see c_{t-1}
      pre_i += to_acc(w_ch[j]) * cp;
      pre_f += to_acc(w_ch[H + j]) * cp;
    }
    const A i = act_sigmoid(pre_i);
    const A f = act_sigmoid(pre_f);
    const A g = act_tanh(to_acc(x[2 * H + j]) + acc[2]);
    const A cn = f * cp + i * g;
    if (w_ch != nullptr) pre_o += to_acc(w_ch[2 * H + j]) * cn;  // o sees c_t
    const A o = act_sigmoid(pre_o);
    c[nh] = cn;
    const A h = o * act_tanh(cn);
    if (m != nullptr)
      m[nh] = from_acc<scalar_t>(h);
    else
      y[static_cast<size_t>(n) * R + j] = from_acc<scalar_t>(h);
    if (cs != nullptr) cs[nh] = from_acc<scalar_t>(cn);
    if (gt != nullptr) {
      gt[j] = from_acc<scalar_t>(i);
      gt[H + j] = from_acc<scalar_t>(f);
      gt[2 * H + j] = from_acc<scalar_t>(g);
      gt[3 * H + j] = from_acc<scalar_t>(o);
    }
  }
};

// h = m W_hr^T (over r < R), frozen rows repeat h_{t-1}.
template <typename scalar_t>
struct LstmProjFwdEpi {
  using A = acc_t<scalar_t>;
  const scalar_t* hprev;          // [N, R]
  scalar_t* y;                    // [N, R] this step
  const int64_t* lengths;
  int t, R;

  FASTRNN_HD void operator()(int n, int r, const A (&acc)[1]) const {
    const size_t i = static_cast<size_t>(n) * R + r;
    y[i] = step_valid(lengths, n, t) ? from_acc<scalar_t>(acc[0]) : load_cg(hprev + i);
  }
};

// Gate derivatives of step t given dh_t (no projection: dh_t = acc + carry + dy_t;
// projection: dh_t is dm = acc, carry handled by LstmProjBwdEpi). With dh0 set this
// is the final launch: it only writes dh0.
template <typename scalar_t>
struct LstmBwdEpi {
  using A = acc_t<scalar_t>;
  const scalar_t* dy;             // [N, R] this step, or nullptr
  A* dh_carry;             // [N, R], or nullptr (projection)
  A* dc;                   // [N, H]
  const scalar_t* gates;          // [N, 4H] this step
  const scalar_t* cs;             // [N, H] this step
  const scalar_t* cprev;          // [N, H] c before this step
  scalar_t* dgates;               // [N, 4H] this step
  scalar_t* dh0;                  // [N, R] final launch only
  const int64_t* lengths;
  int t, H, R;
  const scalar_t* w_ch;           // [3H] peepholes p_i, p_f, p_o, or nullptr (plain LSTM)

  FASTRNN_HD void prefetch(int n, int j) const {
    if (gates == nullptr) return;  // the final launch reads no step data
    const size_t nh = static_cast<size_t>(n) * H + j;
    prefetch_gates<4>(gates, n, j, H);
    prefetch_l2(cs + nh);
    prefetch_l2(cprev + nh);
    if (dy != nullptr) prefetch_l2(dy + static_cast<size_t>(n) * R + j);
  }

  FASTRNN_HD void operator()(int n, int j, const A (&acc)[1]) const {
    const size_t nr = static_cast<size_t>(n) * R + j;
    A dh = acc[0];
    if (dh_carry != nullptr) {
      dh += dh_carry[nr];
      if (dy != nullptr) dh += to_acc(dy[nr]);
    }
    if (dh0 != nullptr) {
      dh0[nr] = from_acc<scalar_t>(dh);
      return;
    }
    const size_t nh = static_cast<size_t>(n) * H + j;
    scalar_t* dg = dgates + static_cast<size_t>(n) * 4 * H;
    if (!step_valid(lengths, n, t)) {
      if (dh_carry != nullptr) dh_carry[nr] = dh;
      for (int g = 0; g < 4; ++g) dg[g * H + j] = from_acc<scalar_t>(A(0));
      return;
    }
    if (dh_carry != nullptr) dh_carry[nr] = A(0);
    const scalar_t* gt = gates + static_cast<size_t>(n) * 4 * H;
    const A i = to_acc(gt[j]), f = to_acc(gt[H + j]), g = to_acc(gt[2 * H + j]),
            o = to_acc(gt[3 * H + j]);
    const A tc = act_tanh(to_acc(cs[nh]));
    const A d_o = dh * tc * d_sigmoid(o);
    A dct = dc[nh] + dh * o * d_tanh(tc);
    if (w_ch != nullptr) dct += d_o * to_acc(w_ch[2 * H + j]);  // c_t feeds o
    const A d_i = dct * g * d_sigmoid(i);
    const A d_f = dct * to_acc(cprev[nh]) * d_sigmoid(f);
    dg[j] = from_acc<scalar_t>(d_i);
    dg[H + j] = from_acc<scalar_t>(d_f);
    dg[2 * H + j] = from_acc<scalar_t>(dct * i * d_tanh(g));
    dg[3 * H + j] = from_acc<scalar_t>(d_o);
    A dcp = dct * f;
    if (w_ch != nullptr)  // c_{t-1} feeds i and f
      dcp += d_i * to_acc(w_ch[j]) + d_f * to_acc(w_ch[H + j]);
    dc[nh] = dcp;
  }
};

// Projection: dr_t = dy_t + carry + dgates_{t+1} W_hh over r < R (dr is zero on
// invalid steps, the carry holds the passed-through gradient). Final launch: dh0.
template <typename scalar_t>
struct LstmProjBwdEpi {
  using A = acc_t<scalar_t>;
  const scalar_t* dy;             // [N, R] this step, or nullptr (final launch)
  A* carry;                // [N, R]
  scalar_t* dr;                   // [N, R] this step (nullptr in the final launch)
  scalar_t* dh0;                  // [N, R] final launch only
  const int64_t* lengths;
  int t, R;

  FASTRNN_HD void operator()(int n, int r, const A (&acc)[1]) const {
    const size_t i = static_cast<size_t>(n) * R + r;
    A d = acc[0] + carry[i];
    if (dy != nullptr) d += to_acc(dy[i]);
    if (dh0 != nullptr) {
      dh0[i] = from_acc<scalar_t>(d);
      return;
    }
    const bool valid = step_valid(lengths, n, t);
    carry[i] = valid ? A(0) : d;
    dr[i] = from_acc<scalar_t>(valid ? d : A(0));
  }
};

// Forward launch s (processing order): gates + state update of step time_of(s).
template <typename scalar_t>
struct LstmFwdSteps {
  using value_type = scalar_t;
  using Epi = LstmFwdEpi<scalar_t>;
  static constexpr int G = 4;
  int T_, N, H, R;
  bool reverse;
  const scalar_t* xg;
  const scalar_t* h0;
  const scalar_t* w_hh;           // [H, 4, R]
  scalar_t* y;
  acc_t<scalar_t>* c;
  scalar_t* gates;
  scalar_t* cs;
  scalar_t* m;                    // projection workspace or nullptr
  const int64_t* lengths;
  const scalar_t* w_ch;           // peepholes or nullptr

  FASTRNN_HD int count() const { return T_; }
  FASTRNN_HD const scalar_t* hprev(int s) const {
    return s == 0 ? h0 : offset(y, time_of(s - 1, T_, reverse), size_t(N) * R);
  }
  FASTRNN_HD MatParams<scalar_t> mat(int s) const { return cuda::mat(hprev(s), R, w_hh, N, H, R); }
  FASTRNN_HD Epi epi(int s) const {
    const int t = time_of(s, T_, reverse);
    return Epi{offset(xg, t, size_t(N) * 4 * H), hprev(s), offset(y, t, size_t(N) * R), c,
               offset(gates, t, size_t(N) * 4 * H), offset(cs, t, size_t(N) * H), m, lengths,
               t, H, R, w_ch};
  }
};

// Backward launch i: i < T is step s = T-1-i in processing order (reverse time), whose
// matmul finishes dh of step s from the gate gradients of step s+1; i == T completes dh0.
template <typename scalar_t>
struct LstmBwdSteps {
  using value_type = scalar_t;
  using Epi = LstmBwdEpi<scalar_t>;
  static constexpr int G = 1;
  int T_, N, H, R;
  bool reverse;
  const scalar_t* dy;
  const scalar_t* c0;
  const scalar_t* w_hh_t;         // [R, 4H]
  const scalar_t* gates;
  const scalar_t* cs;
  scalar_t* dgates;
  scalar_t* dh0;
  acc_t<scalar_t>* carry;         // nullptr with a projection (LstmProjBwdEpi owns it)
  acc_t<scalar_t>* dc;
  const int64_t* lengths;
  const scalar_t* w_ch;           // peepholes or nullptr

  FASTRNN_HD int count() const { return T_ + 1; }
  FASTRNN_HD int step(int i) const { return T_ - 1 - i; }
  FASTRNN_HD const scalar_t* dg_next(int s) const {
    return s + 1 < T_ ? offset(dgates, time_of(s + 1, T_, reverse), size_t(N) * 4 * H)
                      : nullptr;
  }
  FASTRNN_HD MatParams<scalar_t> mat(int i) const {
    return cuda::mat(dg_next(step(i)), 4 * H, w_hh_t, N, H, 4 * H);
  }
  FASTRNN_HD Epi epi(int i) const {
    const int s = step(i);
    Epi e{};
    e.dh_carry = carry;
    e.dc = dc;
    e.lengths = lengths;
    e.H = H;
    e.R = R;
    e.w_ch = w_ch;
    if (s < 0) {
      e.t = -1;
      e.dh0 = dh0;
      return e;
    }
    const int t = time_of(s, T_, reverse);
    const size_t sh = size_t(N) * H, sg = size_t(N) * 4 * H;
    e.t = t;
    e.dy = carry == nullptr ? nullptr : offset(dy, t, size_t(N) * R);
    e.gates = offset(gates, t, sg);
    e.cs = offset(cs, t, sh);
    e.cprev = s == 0 ? c0 : offset(cs, time_of(s - 1, T_, reverse), sh);
    e.dgates = offset(dgates, t, sg);
    return e;
  }
};

template <typename scalar_t, class Launcher>
void lstm_forward_steps(const LstmForwardArgs& a, Launcher& l) {
  using A = acc_t<scalar_t>;
  const bool proj = a.w_hr != nullptr;
  LstmFwdSteps<scalar_t> st{a.T, a.N, a.H, a.R, a.reverse, static_cast<const scalar_t*>(a.xg),
                     static_cast<const scalar_t*>(a.h0), static_cast<const scalar_t*>(a.w_hh),
                     static_cast<scalar_t*>(a.y), static_cast<A*>(a.c), static_cast<scalar_t*>(a.gates),
                     static_cast<scalar_t*>(a.cs), proj ? static_cast<scalar_t*>(a.m) : nullptr, a.lengths,
                     static_cast<const scalar_t*>(a.w_ch)};
  if (!proj) {
    run_steps(l, st, a.tile, a.persistent);
    return;
  }
  // Projection: per step the gates launch writes m, then h = m W_hr^T.
  const scalar_t* w_hr = static_cast<const scalar_t*>(a.w_hr);
  for (int s = 0; s < a.T; ++s) {
    const LstmFwdEpi<scalar_t> e = st.epi(s);
    launch_tile<4>(l, a.tile, st.mat(s), e);
    LstmProjFwdEpi<scalar_t> pe{e.hprev, e.y, a.lengths, e.t, a.R};
    launch_tile<1>(l, a.tile, mat(static_cast<const scalar_t*>(st.m), a.H, w_hr, a.N, a.R, a.H), pe);
  }
}

template <typename scalar_t, class Launcher>
void lstm_backward_steps(const LstmBackwardArgs& a, Launcher& l) {
  using A = acc_t<scalar_t>;
  const bool proj = a.w_hr_t != nullptr;
  LstmBwdSteps<scalar_t> st{a.T, a.N, a.H, a.R, a.reverse, static_cast<const scalar_t*>(a.dy),
                     static_cast<const scalar_t*>(a.c0), static_cast<const scalar_t*>(a.w_hh_t),
                     static_cast<const scalar_t*>(a.gates), static_cast<const scalar_t*>(a.cs),
                     static_cast<scalar_t*>(a.dgates), static_cast<scalar_t*>(a.dh0),
                     proj ? nullptr : static_cast<A*>(a.dh_carry), static_cast<A*>(a.dc),
                     a.lengths, static_cast<const scalar_t*>(a.w_ch)};
  if (!proj) {
    run_steps(l, st, a.tile, a.persistent);
    return;
  }
  // Projection, per step: dr_t = dy_t + carry + dgates_{t+1} W_hh (over R), then
  // dm = dr_t W_hr fused with the gate derivatives (LstmBwdEpi with dh = dm).
  const int N = a.N, H = a.H, R = a.R;
  const scalar_t* dy = static_cast<const scalar_t*>(a.dy);
  const scalar_t* w_hr_t = static_cast<const scalar_t*>(a.w_hr_t);
  scalar_t* dr = static_cast<scalar_t*>(a.dr);
  for (int i = 0; i < st.count(); ++i) {
    const int s = st.step(i);
    const bool final_launch = s < 0;
    const int t = final_launch ? -1 : time_of(s, a.T, a.reverse);
    scalar_t* dr_t = final_launch ? nullptr : offset(dr, t, size_t(N) * R);
    LstmProjBwdEpi<scalar_t> pe{final_launch ? nullptr : offset(dy, t, size_t(N) * R),
                         static_cast<A*>(a.dh_carry), dr_t,
                         final_launch ? static_cast<scalar_t*>(a.dh0) : nullptr, a.lengths, t, R};
    launch_tile<1>(l, a.tile, mat(st.dg_next(s), 4 * H, st.w_hh_t, N, R, 4 * H), pe);
    if (!final_launch)
      launch_tile<1>(l, a.tile, mat(static_cast<const scalar_t*>(dr_t), R, w_hr_t, N, H, R), st.epi(i));
  }
}

}  // namespace cuda
}  // namespace fastrnn
