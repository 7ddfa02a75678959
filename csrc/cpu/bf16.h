// The bfloat16 sequence kernels (csrc/cpu/bf16.cpp): the forward pass of a whole
// layer-direction (LSTM with optional peepholes, GRU, Elman RNN tanh/relu) with the recurrent
// GEMM on AVX512-BF16 dot products (vdpbf16ps: pairs of bf16 products summed into fp32
// lanes). Inference writes bf16 outputs; a training forward (autocast) also writes what the
// float32 backward kernels read, in their layout (fp32 h, activated gates, cell states).
//
// What is kept in which precision:
//   bfloat16: W_hh (packed once per weight), the previous h as the GEMM's operand, the
//             outputs y. These are what a bf16 layer stores; the products of bf16 values
//             are exact in fp32, so the rounding is only in the operands.
//   float32:  every accumulation (the input projection's too: the caller computes xg with
//             fp32 accumulation and hands it over in fp32 or rounded to bf16), the gate pre-activations, the
//             nonlinearities, the GRU's blend of h, the LSTM cell state c across all
//             steps, h_n and c_n. c carries information across the whole sequence: in
//             bf16 (8 significant bits) its small per-step increments would round away
//             and a long sequence would drift; in fp32 it does not.
#pragma once
#include <cstdint>
#include <cstring>

namespace fastrnn {
namespace cpu {

enum Bf16Kind : int { kBf16Lstm = 0, kBf16Gru = 1, kBf16RnnTanh = 2, kBf16RnnRelu = 3 };

struct Bf16SeqParams {
  int kind;
  int64_t T, N, H;
  const void* xg;           // [T, N, G*H] (LSTM, RNN: x W_ih^T + b_ih + b_hh; GRU: + b_ih)
  bool xg_bf16;             // xg's dtype: bfloat16 (true) or float32
  // Or (LSTM, RNN), with x given (xg unused), the input projection fused into each step's GEMM:
  // [x_t, h_{t-1}] @ [W_ih; W_hh]^T, one accumulation, the bias added in fp32.
  const uint16_t* x;        // [T, N, I] bf16, I even (pad a zero column otherwise), or nullptr
  int64_t I;
  const uint16_t* w_ih;     // [G*H, I] bf16
  const float* bias;        // [G*H] (LSTM, RNN: b_ih + b_hh; GRU: b_ih) or nullptr
  const float* h0;          // [N, H]
  const float* c0;          // [N, H] (LSTM)
  const uint16_t* w_hh;     // [G*H, H] bf16
  const float* b_hh;        // [3H] (GRU, inside the reset gate's product) or nullptr
  const float* w_ch;        // [3H] peepholes (LSTM) or nullptr
  const int64_t* lengths;   // [N] or nullptr: steps t >= lengths[n] keep the state
  bool reverse;
  uint16_t* y;              // [T, N, H] bf16: h after each step (frozen steps repeat it), or nullptr
  float* hn;                // [N, H] h after the last valid step, unrounded
  float* cn;                // [N, H] (LSTM)
  int num_threads;
  // Training (the float32 backward kernels read these; each nullable):
  float* y32;               // [T, N, H] h after each step in fp32
  float* gates;             // [T, N, 4H] LSTM: activated i, f, g, o; GRU: r, z, n and W_hn h + b_hn
  float* cs;                // [T, N, H] LSTM: c after each step
  // The recurrent GEMM on AMX-BF16 tiles (set by the dispatch for the 'amxbf16' build; calls
  // of fewer than 4 rows keep the dot products). Same products and fp32 sums.
  bool amx = false;
};

// The backward pass of a whole layer-direction for a training call under CPU autocast: per
// step ONE GEMM, the previous step's gate gradients (bf16) @ W_hh (bf16, packed per unit
// block), fp32 accumulation, fused with the fp32 gate-gradient epilogue of the float32
// kernels (gate_grads.h). As autocast's matmuls, the GEMM's operands are rounded to bf16
// (the gate gradients where they enter the product, W_hh); everything else is fp32: the
// incoming dy, the cell-state gradient dc carried across steps, the gate gradients written
// out (dxg), dh0 and dc0. Inputs are the training forward's fp32 records (bf16.h above).
struct Bf16BackParams {
  int kind;
  int64_t T, N, H;
  const float* dy;          // [T, N, H]
  const float* dcn;         // [N, H] (LSTM)
  const float* h0;          // [N, H] (GRU: h carried into the first step)
  const float* c0;          // [N, H] (LSTM)
  const uint16_t* w_hh;     // [G*H, H] bf16
  const float* w_ch;        // [3H] peepholes (LSTM) or nullptr
  const int64_t* lengths;   // [N] or nullptr
  bool reverse;
  const float* y;           // [T, N, H] fp32 h after each step (GRU: h_{t-1}; RNN: the activation)
  const float* gates;       // [T, N, 4H] LSTM: i, f, g, o; GRU: r, z, n, W_hn h + b_hn
  const float* cs;          // [T, N, H] LSTM
  float* dxg;               // [T, N, G*H] gradient of the pre-activations' input part
  uint16_t* dxg16;          // [T, N, G*H] the same rounded to bf16, or nullptr
  float* dh0;               // [N, H]
  float* dc0;               // [N, H] (LSTM)
  int num_threads;
  // The gate gradients summed over steps and rows (the biases' gradients; per thread and
  // step in fp32, over steps in double), each nullable:
  float* db = nullptr;      // [G*H] of dxg
  float* db_h = nullptr;    // [G*H] GRU: of the hidden part's (dr, dz, dn * r)
  bool amx = false;         // as Bf16SeqParams::amx
};

bool bf16_kernels_available();  // compiled in, this CPU has AVX512-BF16, and the build in use is
                                // 'avx512bf16' or 'amxbf16' (the same with AMX-BF16 tiles)
void bf16_seq_forward(const Bf16SeqParams& p);
void bf16_seq_backward(const Bf16BackParams& p);

// Scalar conversions with torch's bits: Tensor.to(torch.bfloat16) rounds to nearest even
// and turns every NaN into the quiet NaN 0x7FC0; a bf16 widens exactly (its upper half).
inline uint16_t bf16_round(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_widen(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace cpu
}  // namespace fastrnn
