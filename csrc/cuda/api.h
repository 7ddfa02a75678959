// The framework-free interface of the recurrent CUDA kernels: one call runs the whole
// time loop of ONE layer in ONE direction (one fused launch per step, two for a
// projected LSTM), on the given stream, allocating nothing.
//
// Sizes: T steps, N batch, H hidden, R recurrent width (proj_size or H). Pointers are
// dense row-major; "acc" buffers are float32 (float64 when the data are float64) and
// hold state carried between steps; the others have the data type `dtype`.
// Step t of sequence n is valid when t < lengths[n] (lengths may be nullptr); invalid
// steps freeze the state (outputs repeat it, gate rows are zero, gradients pass through).
// Weight layouts are prepared by fastrnn/backends/cuda.py:
//   unit-major  [H, G, K]: W_hh.view(G, H, K).transpose(0, 1) (the G gate rows of a
//               unit adjacent, so one thread computes all gates of its unit)
//   transposed  [K, GH]:   W_hh.t()
#pragma once
#include <cstdint>

namespace fastrnn {
namespace cuda {

enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };
// Tile shape of the per-step kernels (tile.cuh): small = many blocks, dot products split
// over 8 threads (small batches); large = 16x16 (n, unit) per block (large N*H).
enum TileKind : int { kTileSmall = 0, kTileLarge = 1 };
// How a pass's steps are scheduled (steps.cuh): one launch per step, or the whole
// sequence in one launch synchronised per step across the grid or per thread-block
// cluster (each falls back to the next simpler kind where it does not fit).
enum PersistKind : int { kPersistNone = 0, kPersistGrid = 1, kPersistCluster = 2 };

struct LstmForwardArgs {
  int T, N, H, R;
  const void* xg;          // [T, N, 4H]  x W_ih^T + b_ih + b_hh (gates i, f, g, o)
  const void* h0;          // [N, R]
  const void* w_hh;        // [H, 4, R]   unit-major W_hh
  const void* w_hr;        // [R, H]      W_hr as in torch, or nullptr (no projection)
  const void* w_ch;        // [3H]        peepholes p_i, p_f, p_o, or nullptr (plain LSTM)
  const int64_t* lengths;  // [N] or nullptr
  bool reverse;
  void* y;                 // [T, N, R]   h after each step
  void* c;                 // [N, H] acc  c0 on entry, cn on exit
  void* gates;             // [T, N, 4H]  activated gates, or nullptr (inference)
  void* cs;                // [T, N, H]   c after each step, or nullptr (inference)
  void* m;                 // [N, H]      workspace o*tanh(c) (projection only), else nullptr
  int tile;                // TileKind
  int persistent;          // PersistKind: 0 per step, 1 grid, 2 cluster (when possible)
};

struct LstmBackwardArgs {
  int T, N, H, R;
  const void* dy;          // [T, N, R]   gradient of y (dhn folded in)
  const void* c0;          // [N, H]
  const void* w_hh_t;      // [R, 4H]     W_hh transposed
  const void* w_hr_t;      // [H, R]      W_hr transposed, or nullptr
  const void* w_ch;        // [3H]        peepholes, or nullptr
  const int64_t* lengths;  // [N] or nullptr
  bool reverse;
  const void* gates;       // [T, N, 4H]  from the forward
  const void* cs;          // [T, N, H]   from the forward
  void* dgates;            // [T, N, 4H]  gradient of the gate pre-activations
  void* dh0;               // [N, R]
  void* dh_carry;          // [N, R] acc  zeros on entry (workspace)
  void* dc;                // [N, H] acc  dcn on entry, dc0 on exit
  void* dr;                // [T, N, R]   total gradient of h_t (projection only), else nullptr
  int tile;
  int persistent;          // ignored with a projection (always per-step)
};

struct GruForwardArgs {
  int T, N, H;
  const void* xg;          // [T, N, 3H]  x W_ih^T + b_ih (gates r, z, n)
  const void* h0;          // [N, H]
  const void* w_hh;        // [H, 3, H]   unit-major W_hh
  const void* b_hh;        // [3H]
  const int64_t* lengths;  // [N] or nullptr
  bool reverse;
  void* y;                 // [T, N, H]
  void* saved;             // [T, N, 4H]  r, z, n, h W_hn^T + b_hn; or nullptr (inference)
  int tile;
  int persistent;
};

struct GruBackwardArgs {
  int T, N, H;
  const void* dy;          // [T, N, H]
  const void* h0;          // [N, H]
  const void* w_hh_t;      // [H, 3H]     W_hh transposed
  const int64_t* lengths;  // [N] or nullptr
  bool reverse;
  const void* y;           // [T, N, H]
  const void* saved;       // [T, N, 4H]
  void* dxg;               // [T, N, 3H]
  void* dh0;               // [N, H]
  void* dh_carry;          // [N, H] acc  zeros on entry (workspace)
  void* dhg;               // [2, N, 3H]  workspace: gradient of h W_hh^T, ping-pong by step
  int tile;
  int persistent;
};

struct RnnForwardArgs {
  int T, N, H;
  const void* xg;          // [T, N, H]   x W_ih^T + b_ih + b_hh
  const void* h0;          // [N, H]
  const void* w_hh;        // [H, H]      as in torch
  const int64_t* lengths;  // [N] or nullptr
  bool reverse, relu;
  void* y;                 // [T, N, H]
  int tile;
  int persistent;
};

struct RnnBackwardArgs {
  int T, N, H;
  const void* dy;          // [T, N, H]
  const void* w_hh_t;      // [H, H]      W_hh transposed
  const int64_t* lengths;  // [N] or nullptr
  bool reverse, relu;
  const void* y;           // [T, N, H]
  void* dxg;               // [T, N, H]
  void* dh0;               // [N, H]
  void* dh_carry;          // [N, H] acc  zeros on entry (workspace)
  int tile;
  int persistent;
};

// Implemented by the CUDA translation units (lstm.cu, gru.cu, rnn.cu); `stream` is a
// cudaStream_t. Throw std::runtime_error carrying the CUDA error string on failure.
void lstm_forward_cuda(int dtype, const LstmForwardArgs& a, void* stream);
void lstm_backward_cuda(int dtype, const LstmBackwardArgs& a, void* stream);
void gru_forward_cuda(int dtype, const GruForwardArgs& a, void* stream);
void gru_backward_cuda(int dtype, const GruBackwardArgs& a, void* stream);
void rnn_forward_cuda(int dtype, const RnnForwardArgs& a, void* stream);
void rnn_backward_cuda(int dtype, const RnnBackwardArgs& a, void* stream);

}  // namespace cuda
}  // namespace fastrnn
