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

template <typename T>
struct LstmForwardParams {
  int64_t T_, N, H, R;
  const T* xg;              // [T, N, 4H]  x W_ih^T + b_ih + b_hh, gates i,f,g,o
  const T* h0;              // [N, R]
  const T* c0;              // [N, H]
  const T* w_hh;            // [4H, R]
  const T* w_hr;            // [R, H] or nullptr (no projection)
  const T* w_ch;            // [3H] peephole weights p_i, p_f, p_o, or nullptr (plain LSTM)
  const int64_t* lengths;   // [N] or nullptr
  bool reverse;
  T* y;                     // [T, N, R]  h after each step
  T* cn;                    // [N, H]     final cell state
  T* gates;                 // [T, N, 4H] activated gates, nullptr in inference
  T* cs;                    // [T, N, H]  cell state after each step, nullptr in inference
  int num_threads;
};

template <typename T>
struct LstmBackwardParams {
  int64_t T_, N, H, R;
  const T* dy;              // [T, N, R]  gradient of y (dhn already folded in)
  const T* dcn;             // [N, H]
  const T* h0;              // [N, R]
  const T* c0;              // [N, H]
  const T* w_hh;            // [4H, R]
  const T* w_hr;            // [R, H] or nullptr
  const T* w_ch;            // [3H] or nullptr, as in LstmForwardParams
  const int64_t* lengths;   // [N] or nullptr
  bool reverse;
  const T* y;               // [T, N, R]
  const T* gates;           // [T, N, 4H]
  const T* cs;              // [T, N, H]
  T* dgates;                // [T, N, 4H] gradient of the gate pre-activations
  T* dh0;                   // [N, R]
  T* dc0;                   // [N, H]
  T* dr;                    // [T, N, R]  total gradient of h_t (projection only), else nullptr
  int num_threads;
};

template <typename T>
struct GruForwardParams {
  int64_t T_, N, H;
  const T* xg;              // [T, N, 3H]  x W_ih^T + b_ih, gates r,z,n
  const T* h0;              // [N, H]
  const T* w_hh;            // [3H, H]
  const T* b_hh;            // [3H]
  const int64_t* lengths;   // [N] or nullptr
  bool reverse;
  T* y;                     // [T, N, H]
  T* saved;                 // [T, N, 4H]  r, z, n, W_hn h + b_hn; nullptr in inference
  int num_threads;
};

template <typename T>
struct GruBackwardParams {
  int64_t T_, N, H;
  const T* dy;              // [T, N, H]
  const T* h0;              // [N, H]
  const T* w_hh;            // [3H, H]
  const int64_t* lengths;   // [N] or nullptr
  bool reverse;
  const T* y;               // [T, N, H]
  const T* saved;           // [T, N, 4H]
  T* dxg;                   // [T, N, 3H]
  T* dh0;                   // [N, H]
  int num_threads;
};

template <typename T>
struct RnnForwardParams {
  int64_t T_, N, H;
  const T* xg;              // [T, N, H]  x W_ih^T + b_ih + b_hh
  const T* h0;              // [N, H]
  const T* w_hh;            // [H, H]
  const int64_t* lengths;   // [N] or nullptr
  bool reverse, relu;
  T* y;                     // [T, N, H]
  int num_threads;
};

template <typename T>
struct RnnBackwardParams {
  int64_t T_, N, H;
  const T* dy;              // [T, N, H]
  const T* h0;              // [N, H]
  const T* w_hh;            // [H, H]
  const int64_t* lengths;   // [N] or nullptr
  bool reverse, relu;
  const T* y;               // [T, N, H]
  T* dxg;                   // [T, N, H]
  T* dh0;                   // [N, H]
  int num_threads;
};

// One step of a cell with its input projection fused in: what a *Cell module or a
// one-step (T = 1) layer call computes. G = 4 (LSTM), 3 (GRU), 1 (RNN).
enum CellKind : int { kCellLstm = 0, kCellGru = 1, kCellRnnTanh = 2, kCellRnnRelu = 3 };

// With T_ > 1 (inference only, saved == nullptr): T_ such steps, the state carried from
// one to the next, x and h_out holding every step ([T, N, I], [T, N, H]), c_out the last
// cell state; `reverse` runs t = T-1 .. 0.
template <typename T>
struct CellForwardParams {
  int64_t N, I, H;
  int cell;                 // CellKind
  const T* x;               // [N, I]
  const T* h;               // [N, H]
  const T* c;               // [N, H] (LSTM), else nullptr
  const T* w_ih;            // [G*H, I]
  const T* w_hh;            // [G*H, H]
  const T* b_ih;            // [G*H] or nullptr
  const T* b_hh;            // [G*H] or nullptr
  T* h_out;                 // [N, H]
  T* c_out;                 // [N, H] (LSTM), else nullptr
  T* saved;                 // [N, 4H] for backward, or nullptr: LSTM activated i,f,g,o;
                            //   GRU r, z, n and W_hn h + b_hn (RNN: nullptr, h_out suffices)
  int num_threads;
  int64_t T_ = 1;
  bool reverse = false;
  // x's element strides between steps and between rows (its last dimension dense); 0 means
  // dense [T, N, I]: N*I and I. A batch-first input [N, T, I] passes I and T*I.
  int64_t x_step = 0, x_row = 0;
  const T* w_ch = nullptr;  // [3H] LSTM peephole weights p_i, p_f, p_o, or nullptr
  // With T_ > 1: [N] per-sequence lengths (state frozen from step lengths[n] on, as in the
  // sequence kernels), or nullptr (every sequence T_ long).
  const int64_t* lengths = nullptr;
};

template <typename T>
struct CellBackwardParams {
  int64_t N, H;
  int cell;                 // CellKind
  const T* dh_out;          // [N, H] gradient of h_out
  const T* dc_out;          // [N, H] gradient of c_out (LSTM) or nullptr (zero)
  const T* h;               // [N, H] (GRU)
  const T* c;               // [N, H] (LSTM)
  const T* h_out;           // [N, H] (RNN)
  const T* c_out;           // [N, H] (LSTM)
  const T* saved;           // as CellForwardParams::saved
  T* dpre_x;                // [N, G*H] gradient of x W_ih^T + b_ih
  T* dpre_h;                // [N, G*H] GRU: gradient of h W_hh^T + b_hh; else nullptr (== dpre_x)
  T* dc;                    // [N, H] LSTM: gradient of c; else nullptr
  T* dh_direct;             // [N, H] GRU: z * dh (h's direct path into h_out); else nullptr
  // The products with the weights, computed here when dw_ih is given (few rows: one pass
  // over the weights); otherwise left to the caller's GEMMs and these are unused.
  int64_t I;
  const T* x;               // [N, I]
  const T* w_ih;            // [G*H, I]
  const T* w_hh;            // [G*H, H]
  T* dx;                    // [N, I] or nullptr (not needed)
  T* dh;                    // [N, H] gradient of h (dh_direct included)
  T* dw_ih;                 // [G*H, I]
  T* dw_hh;                 // [G*H, H]
  T* db_ih;                 // [G*H] or nullptr (no bias)
  T* db_hh;                 // [G*H] or nullptr (no bias)
  const T* w_ch = nullptr;  // [3H] LSTM peepholes (as CellForwardParams), or nullptr
  T* dw_ch = nullptr;       // [3H] their gradient (with w_ch)
};

}  // namespace fastrnn
