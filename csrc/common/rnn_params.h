// Framework-free descriptions of one recurrent layer-direction pass.
//
// Sizes: T steps, N batch, H hidden, R recurrent width (R = proj_size for a
// projected LSTM, else R = H). Every pointer is dense row-major with the shape in
// its comment. `lengths` (nullable) gives each sequence's length in [1, T]; step t
// of sequence n is valid when t < lengths[n]; on invalid steps the state is frozen
// (outputs repeat the state carried in) and gradients pass through unchanged.
// `reverse` processes t = T-1 .. 0. These are the CPU kernels' parameters (the CUDA
// kernels take theirs from csrc/cuda/api.h); they know nothing of torch.
#pragma once
#include <cstdint>

namespace fastrnn {

template <typename scalar_t>
struct LstmForwardParams {
  int64_t T, N, H, R;
  const scalar_t* xg;              // [T, N, 4H]  x W_ih^T + b_ih + b_hh, gates i,f,g,o
  const scalar_t* h0;              // [N, R]
  const scalar_t* c0;              // [N, H]
  const scalar_t* w_hh;            // [4H, R]
  const scalar_t* w_hr;            // [R, H] or nullptr (no projection)
  const scalar_t* w_ch;            // [3H] peephole weights p_i, p_f, p_o, or nullptr (plain LSTM)
  const int64_t* lengths;   // [N] or nullptr
  bool reverse;
  scalar_t* y;                     // [T, N, R]  h after each step
  scalar_t* cn;                    // [N, H]     final cell state
  scalar_t* gates;                 // [T, N, 4H] activated gates, nullptr in inference
  scalar_t* cs;                    // [T, N, H]  cell state after each step, nullptr in inference
  int num_threads;
};

template <typename scalar_t>
struct LstmBackwardParams {
  int64_t T, N, H, R;
  const scalar_t* dy;              // [T, N, R]  gradient of y (dhn already folded in)
  const scalar_t* dcn;             // [N, H]
  const scalar_t* h0;              // [N, R]
  const scalar_t* c0;              // [N, H]
  const scalar_t* w_hh;            // [4H, R]
  const scalar_t* w_hr;            // [R, H] or nullptr
  const scalar_t* w_ch;            // [3H] or nullptr, as in LstmForwardParams
  const int64_t* lengths;   // [N] or nullptr
  bool reverse;
  const scalar_t* y;               // [T, N, R]
  const scalar_t* gates;           // [T, N, 4H]
  const scalar_t* cs;              // [T, N, H]
  scalar_t* dgates;                // [T, N, 4H] gradient of the gate pre-activations
  scalar_t* dh0;                   // [N, R]
  scalar_t* dc0;                   // [N, H]
  scalar_t* dr;                    // [T, N, R]  total gradient of h_t (projection only), else nullptr
  int num_threads;
};

template <typename scalar_t>
struct GruForwardParams {
  int64_t T, N, H;
  const scalar_t* xg;              // [T, N, 3H]  x W_ih^T + b_ih, gates r,z,n
  const scalar_t* h0;              // [N, H]
  const scalar_t* w_hh;            // [3H, H]
  const scalar_t* b_hh;            // [3H]
  const int64_t* lengths;   // [N] or nullptr
  bool reverse;
  scalar_t* y;                     // [T, N, H]
  scalar_t* saved;                 // [T, N, 4H]  r, z, n, W_hn h + b_hn; nullptr in inference
  int num_threads;
};

template <typename scalar_t>
struct GruBackwardParams {
  int64_t T, N, H;
  const scalar_t* dy;              // [T, N, H]
  const scalar_t* h0;              // [N, H]
  const scalar_t* w_hh;            // [3H, H]
  const int64_t* lengths;   // [N] or nullptr
  bool reverse;
  const scalar_t* y;               // [T, N, H]
  const scalar_t* saved;           // [T, N, 4H]
  scalar_t* dxg;                   // [T, N, 3H]
  scalar_t* dh0;                   // [N, H]
  int num_threads;
};

template <typename scalar_t>
struct RnnForwardParams {
  int64_t T, N, H;
  const scalar_t* xg;              // [T, N, H]  x W_ih^T + b_ih + b_hh
  const scalar_t* h0;              // [N, H]
  const scalar_t* w_hh;            // [H, H]
  const int64_t* lengths;   // [N] or nullptr
  bool reverse, relu;
  scalar_t* y;                     // [T, N, H]
  int num_threads;
};

template <typename scalar_t>
struct RnnBackwardParams {
  int64_t T, N, H;
  const scalar_t* dy;              // [T, N, H]
  const scalar_t* h0;              // [N, H]
  const scalar_t* w_hh;            // [H, H]
  const int64_t* lengths;   // [N] or nullptr
  bool reverse, relu;
  const scalar_t* y;               // [T, N, H]
  scalar_t* dxg;                   // [T, N, H]
  scalar_t* dh0;                   // [N, H]
  int num_threads;
};

// One step of a cell with its input projection fused in: what a *Cell module or a
// one-step (T = 1) layer call computes. G = 4 (LSTM), 3 (GRU), 1 (RNN).
enum CellKind : int { kCellLstm = 0, kCellGru = 1, kCellRnnTanh = 2, kCellRnnRelu = 3 };

// With T > 1 (inference only, saved == nullptr): T such steps, the state carried from
// one to the next, x and h_out holding every step ([T, N, I], [T, N, H]), c_out the last
// cell state; `reverse` runs t = T-1 .. 0.
template <typename scalar_t>
struct CellForwardParams {
  int64_t N, I, H;
  int cell;                 // CellKind
  const scalar_t* x;               // [N, I]
  const scalar_t* h;               // [N, H]
  const scalar_t* c;               // [N, H] (LSTM), else nullptr
  const scalar_t* w_ih;            // [G*H, I]
  const scalar_t* w_hh;            // [G*H, H]
  const scalar_t* b_ih;            // [G*H] or nullptr
  const scalar_t* b_hh;            // [G*H] or nullptr
  scalar_t* h_out;                 // [N, H]
  scalar_t* c_out;                 // [N, H] (LSTM), else nullptr
  scalar_t* saved;                 // [N, 4H] for backward, or nullptr: LSTM activated i,f,g,o;
                            //   GRU r, z, n and W_hn h + b_hn (RNN: nullptr, h_out suffices)
  int num_threads;
  int64_t T = 1;
  bool reverse = false;
  // x's element strides between steps and between rows (its last dimension dense); 0 means
  // dense [T, N, I]: N*I and I. A batch-first input [N, T, I] passes I and T*I.
  int64_t x_step = 0, x_row = 0;
  const scalar_t* w_ch = nullptr;  // [3H] LSTM peephole weights p_i, p_f, p_o, or nullptr
  // With T > 1: [N] per-sequence lengths (state frozen from step lengths[n] on, as in the
  // sequence kernels), or nullptr (every sequence T long).
  const int64_t* lengths = nullptr;
  // float only: the products' operands x, W_ih and W_hh rounded to bfloat16 first (what
  // autocast does to a matmul's operands), read as float32; h, c, the biases, the
  // accumulation and the epilogue stay float32. The weights are rounded as they are read
  // (the dot products at few rows) or packed (the pack cache keys the rounded panels apart).
  bool round_bf16 = false;
  // float only: the weights as bfloat16 (a bfloat16 module's parameters, their bits), read
  // widened to float32 (the dot products) or widened as they are packed; w_ih and w_hh are
  // then unused. Biases and peepholes stay float32 (the caller widens those few values).
  const uint16_t* w_ih_bf16 = nullptr;  // [G*H, I]
  const uint16_t* w_hh_bf16 = nullptr;  // [G*H, H]
  // Inference only (no saved): zoneout's eval expectation, h' = zh_p h + (1 - zh_p) h~ and
  // (LSTM) c' = zc_p c + (1 - zc_p) c~, h~ computed from c~ (0: no zoneout).
  scalar_t zh_p = 0, zc_p = 0;
};

template <typename scalar_t>
struct CellBackwardParams {
  int64_t N, H;
  int cell;                 // CellKind
  const scalar_t* dh_out;          // [N, H] gradient of h_out
  const scalar_t* dc_out;          // [N, H] gradient of c_out (LSTM) or nullptr (zero)
  const scalar_t* h;               // [N, H] (GRU)
  const scalar_t* c;               // [N, H] (LSTM)
  const scalar_t* h_out;           // [N, H] (RNN)
  const scalar_t* c_out;           // [N, H] (LSTM)
  const scalar_t* saved;           // as CellForwardParams::saved
  scalar_t* dpre_x;                // [N, G*H] gradient of x W_ih^T + b_ih
  scalar_t* dpre_h;                // [N, G*H] GRU: gradient of h W_hh^T + b_hh; else nullptr (== dpre_x)
  scalar_t* dc;                    // [N, H] LSTM: gradient of c; else nullptr
  scalar_t* dh_direct;             // [N, H] GRU: z * dh (h's direct path into h_out); else nullptr
  // The products with the weights, computed here when dw_ih is given (few rows: one pass
  // over the weights); otherwise left to the caller's GEMMs and these are unused.
  int64_t I;
  const scalar_t* x;               // [N, I]
  const scalar_t* w_ih;            // [G*H, I]
  const scalar_t* w_hh;            // [G*H, H]
  scalar_t* dx;                    // [N, I] or nullptr (not needed)
  scalar_t* dh;                    // [N, H] gradient of h (dh_direct included)
  scalar_t* dw_ih;                 // [G*H, I]
  scalar_t* dw_hh;                 // [G*H, H]
  scalar_t* db_ih;                 // [G*H] or nullptr (no bias)
  scalar_t* db_hh;                 // [G*H] or nullptr (no bias)
  const scalar_t* w_ch = nullptr;  // [3H] LSTM peepholes (as CellForwardParams), or nullptr
  scalar_t* dw_ch = nullptr;       // [3H] their gradient (with w_ch)
};

// A Bernoulli mask from a counter-based hash of (seed, element index): out[k] = on where
// bits(seed, offset + k) < threshold, else 0, for k in [0, n). bits: three rounds of a
// 32-bit mixer (fastrnn/regularized.py ``_mask_bits`` is the same function in torch ops,
// and its docstring the definition); threshold = round(q 2^32) for probability q of `on`.
template <typename scalar_t>
struct MaskParams {
  uint64_t seed;        // < 2^63 (drawn from torch's generator)
  int64_t offset, n;
  uint64_t threshold;   // in [0, 2^32]
  scalar_t on;
  scalar_t* out;        // [n]
  int num_threads;
};

// The regularised recurrences (zoneout, variational recurrent dropout; fastrnn/regularized.py
// has the equations): LSTM (no projection, no peepholes), GRU, RNN tanh/relu, one fused GEMM
// per step as the plain kernels, the options in its epilogue. kind: CellKind.
//   recurrent dropout: the GEMM reads h_{t-1} * rd (rd [N, H], the keep mask / (1 - p));
//   zoneout: h_t = d_h h_{t-1} + (1 - d_h) h~_t (the LSTM's c likewise with d_c), d the
//   masks zh/zc [T, N, H] (0 or 1, training) or, where a mask is nullptr, the constants
//   zh_p/zc_p (eval: the expectation; 0: no zoneout).
template <typename scalar_t>
struct RegForwardParams {
  int kind;
  int64_t T, N, H;
  const scalar_t* xg;              // [T, N, G*H] (LSTM, RNN: + b_ih + b_hh; GRU: + b_ih)
  const scalar_t* h0;              // [N, H]
  const scalar_t* c0;              // [N, H] (LSTM)
  const scalar_t* w_hh;            // [G*H, H]
  const scalar_t* b_hh;            // [3H] (GRU) or nullptr
  const scalar_t* rd;              // [N, H] or nullptr
  const scalar_t* zh;              // [T, N, H] or nullptr
  const scalar_t* zc;              // [T, N, H] (LSTM) or nullptr
  scalar_t zh_p, zc_p;
  const int64_t* lengths;          // [N] or nullptr
  bool reverse;
  scalar_t* y;                     // [T, N, H]  h after each step
  scalar_t* cn;                    // [N, H] (LSTM)
  // training records, nullptr in inference:
  scalar_t* gates;                 // [T, N, 4H] LSTM: i, f, g, o; GRU: r, z, n, W_hn (h rd) + b_hn
  scalar_t* cs;                    // [T, N, H]  LSTM: c after each step (after zoneout)
  scalar_t* cand;                  // [T, N, H]  LSTM: c~ (before zoneout); RNN: h~
  int num_threads;
};

template <typename scalar_t>
struct RegBackwardParams {
  int kind;
  int64_t T, N, H;
  const scalar_t* dy;              // [T, N, H]  gradient of y (dhn folded in)
  const scalar_t* dcn;             // [N, H] (LSTM)
  const scalar_t* h0;              // [N, H]
  const scalar_t* c0;              // [N, H] (LSTM)
  const scalar_t* w_hh;            // [G*H, H]
  const scalar_t* rd;              // as in RegForwardParams
  const scalar_t* zh;
  const scalar_t* zc;
  scalar_t zh_p, zc_p;
  const int64_t* lengths;
  bool reverse;
  const scalar_t* y;               // [T, N, H]
  const scalar_t* gates;           // [T, N, 4H]
  const scalar_t* cs;              // [T, N, H] (LSTM)
  const scalar_t* cand;            // [T, N, H] (LSTM, RNN)
  scalar_t* dxg;                   // [T, N, G*H] gradient of the input part (GRU: r, z, n)
  scalar_t* dhg;                   // [T, N, 3H]  GRU: the hidden part's (r, z, n * r), else nullptr
  scalar_t* dh0;                   // [N, H]
  scalar_t* dc0;                   // [N, H] (LSTM)
  int num_threads;
};

// The layer-normalised LSTM / GRU (fastrnn/layer_norm.py has the equations): per step one
// fused GEMM h_{t-1} @ W_hh^T into a row buffer, then per row LayerNorm over all G*H
// recurrent pre-activations, the gates, and (LSTM) LayerNorm over c~_t. kind: kCellLstm or
// kCellGru. zh_p/zc_p: zoneout's eval expectation (0: off). A training forward (zh_p =
// zc_p = 0) also writes the records LnBackwardParams reads (all of them, or none).
template <typename scalar_t>
struct LnForwardParams {
  int kind;
  int64_t T, N, H;
  const scalar_t* ax;              // [T, N, G*H] LN(W_ih x_t) g_ih + s_ih
  const scalar_t* h0;              // [N, H]
  const scalar_t* c0;              // [N, H] (LSTM)
  const scalar_t* w_hh;            // [G*H, H]
  const scalar_t* g_hh;            // [G*H] gain of LN(W_hh h)
  const scalar_t* s_hh;            // [G*H] its shift
  const scalar_t* g_c;             // [H] (LSTM) gain of LN(c)
  const scalar_t* s_c;             // [H] (LSTM) its shift
  scalar_t zh_p, zc_p, eps;
  const int64_t* lengths;          // [N] or nullptr
  bool reverse;
  scalar_t* y;                     // [T, N, H]
  scalar_t* cn;                    // [N, H] (LSTM)
  int num_threads;
  // training records (frozen steps: zhat, gates and chat zero, cs the state carried):
  scalar_t* zhat = nullptr;        // [T, N, G*H] the recurrent product, normalised (before g_hh, s_hh)
  scalar_t* rstd_h = nullptr;      // [T, N] its 1 / sqrt(var + eps)
  scalar_t* gates = nullptr;       // [T, N, G*H] LSTM: i, f, g, o; GRU: r, z, n (activated)
  scalar_t* chat = nullptr;        // [T, N, H] LSTM: c~ normalised (before g_c, s_c)
  scalar_t* rstd_c = nullptr;      // [T, N] LSTM
  scalar_t* cs = nullptr;          // [T, N, H] LSTM: c after each step
  // The input side's LayerNorm in the kernel: with g_ih, ax is the projection W_ih x_t
  // itself and each row's input part is LN(ax) g_ih + s_ih (records: zhat_x, rstd_x).
  const scalar_t* g_ih = nullptr;  // [G*H]
  const scalar_t* s_ih = nullptr;  // [G*H]
  scalar_t* zhat_x = nullptr;      // [T, N, G*H] ax normalised
  scalar_t* rstd_x = nullptr;      // [T, N]
  // Training masks (RegForwardParams' meaning; with them zh_p = zc_p = 0): recurrent dropout
  // (the recurrent product reads h_{t-1} * rd) and zoneout's 0/1 masks of h and (LSTM) c.
  const scalar_t* rd = nullptr;    // [N, H] scaled keep mask
  const scalar_t* zh = nullptr;    // [T, N, H]
  const scalar_t* zc = nullptr;    // [T, N, H] (LSTM)
};

// The backward of a layer-normalised LSTM / GRU layer-direction (the forward's training
// masks, if any) from its forward's records. Per step (reverse order): the recurrent
// gradient dah_{next} @ W_hh (one fused GEMM, times rd with recurrent dropout), then per
// row the gates' gradients, the backward of LN(c) (LSTM), of the recurrent LayerNorm and
// (with g_ih) of the input side's, two row reductions each; the gains' and shifts'
// gradients summed on the way (per thread and step in scalar_t, over steps in double).
// dW_hh = sum_t dah_t^T (h_{t-1} rd) is left to the caller's GEMM.
template <typename scalar_t>
struct LnBackwardParams {
  int kind;
  int64_t T, N, H;
  const scalar_t* dy;              // [T, N, H]  gradient of y (dhn folded in)
  const scalar_t* dcn;             // [N, H] (LSTM)
  const scalar_t* h0;              // [N, H]
  const scalar_t* c0;              // [N, H] (LSTM)
  const scalar_t* w_hh;            // [G*H, H]
  const scalar_t* g_ih;            // [G*H] or nullptr (as in the forward)
  const scalar_t* g_hh;            // [G*H]
  const scalar_t* s_hh;            // [G*H]
  const scalar_t* g_c;             // [H] (LSTM)
  const scalar_t* s_c;             // [H] (LSTM)
  const int64_t* lengths;          // [N] or nullptr
  bool reverse;
  const scalar_t* y;               // [T, N, H]
  const scalar_t* zhat;            // the forward's records (LnForwardParams)
  const scalar_t* rstd_h;
  const scalar_t* gates;
  const scalar_t* chat;
  const scalar_t* rstd_c;
  const scalar_t* cs;
  const scalar_t* zhat_x;          // with g_ih
  const scalar_t* rstd_x;          // with g_ih
  scalar_t* dax;                   // [T, N, G*H] gradient of ax (with g_ih: of the projection)
  scalar_t* dah;                   // [T, N, G*H] gradient of the recurrent product W_hh h_{t-1}
  scalar_t* dh0;                   // [N, H]
  scalar_t* dc0;                   // [N, H] (LSTM)
  scalar_t* dg_ih;                 // [G*H] (with g_ih) gradients of the gains and shifts
  scalar_t* ds_ih;                 // [G*H] (with g_ih)
  scalar_t* dg_hh;                 // [G*H]
  scalar_t* ds_hh;                 // [G*H]
  scalar_t* dg_c;                  // [H] (LSTM)
  scalar_t* ds_c;                  // [H] (LSTM)
  int num_threads;
  const scalar_t* rd = nullptr;    // the forward's training masks (LnForwardParams)
  const scalar_t* zh = nullptr;
  const scalar_t* zc = nullptr;
};

}  // namespace fastrnn
