// bfloat16 inference of a whole layer-direction (bf16.h says what is kept in which
// precision). Compiled only for AVX512-BF16 (FASTRNN_ISA=avx512bf16 with the AVX-512
// vector width); dispatch.cpp calls it when that build is in use.
//
// Per step ONE fused GEMM, h_{t-1} (bf16) @ W_hh^T (bf16, gate-major panels), with vdpbf16ps:
// each 32-bit lane of the packed panel holds the weights of one hidden unit for two
// consecutive k, the broadcast operand the matching two values of h, and the instruction
// adds both products to the unit's fp32 accumulator. Half the instructions of the fp32
// kernel's FMAs and half the bytes of W_hh streamed per step. The epilogue is the fp32
// kernels' (gate nonlinearities and state update on the accumulator tile), then h is
// rounded once (round to nearest even, as Tensor.to(torch.bfloat16)) into the output and
// into the next step's operand buffer.
#include "cpu/bf16.h"

#include <array>
#include <cstring>
#include <typeinfo>
#include <utility>
#include <vector>

#include "cpu/fused_gemm.h"
#include "cpu/gate_grads.h"
#include "cpu/pack_cache.h"

namespace fastrnn {
namespace cpu {
namespace FASTRNN_ISA {
namespace {

constexpr int W = 16;  // fp32 lanes of a zmm register: hidden units per panel
using V = vec_t<float>;
static_assert(Vec<float>::W == W, "the bf16 kernels are built with the AVX-512 vector width");

FASTRNN_INLINE __mmask16 lanes(int cnt) { return static_cast<__mmask16>((1u << cnt) - 1); }

// cnt (<= 16) bf16 values as fp32 lanes (a bf16 is the upper half of an fp32).
FASTRNN_INLINE V load_bf16(const uint16_t* p, int cnt) {
  const __m256i b = cnt == W ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                             : _mm256_maskz_loadu_epi16(lanes(cnt), p);
  return (V)_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

// fp32 lanes rounded to bf16 (nearest even; NaN stays NaN) and stored.
FASTRNN_INLINE void store_bf16(uint16_t* p, V v, int cnt) {
  const __m256i b = (__m256i)_mm512_cvtneps_pbh((__m512)v);
  if (cnt == W)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), b);
  else
    _mm256_mask_storeu_epi16(p, lanes(cnt), b);
}

// The epilogue's nonlinearities with 1/d as rcp14 and one Newton step (relative error
// about 2^-23: far below the bf16 rounding of the outputs and of the next step's operand)
// instead of a division: a 512-bit vdivps occupies the divider 16 cycles on Intel cores,
// and an LSTM step divides five times per 16 units.
FASTRNN_INLINE V recip(V d) {
  const __m512 r = _mm512_rcp14_ps((__m512)d);
  return (V)_mm512_mul_ps(r, _mm512_fnmadd_ps((__m512)d, r, _mm512_set1_ps(2.0f)));
}
FASTRNN_INLINE V sigm(V x) { return recip(1.0f + vexp<float>(-x)); }
FASTRNN_INLINE V tanh_(V x) {  // vec.h's vtanh with recip: odd, tanh(0) = 0, NaN stays NaN
  const __m512i sign = _mm512_set1_epi32(int(0x80000000u));
  const __m512i xi = _mm512_castps_si512((__m512)x);
  const V a = (V)_mm512_castsi512_ps(_mm512_andnot_si512(sign, xi));
  const V e = vexp<float>(a * -2.0f);
  const V t = (1.0f - e) * recip(1.0f + e);
  return (V)_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512((__m512)t), _mm512_and_si512(xi, sign)));
}

FASTRNN_INLINE V load_xg(const void* xg, bool bf16, int64_t off, int cnt) {
  return bf16 ? load_bf16(static_cast<const uint16_t*>(xg) + off, cnt)
              : vload_n(static_cast<const float*>(xg) + off, cnt);
}

// The projection's term of gate g at units [u, u+cnt) of row n, step t: read from xg, or,
// when the projection is fused into the step's GEMM (already in the accumulator), the bias.
struct XTerm {
  const Bf16SeqParams& a;
  int64_t GH;
  inline __attribute__((always_inline)) V operator()(int64_t t, int64_t n, int g, int64_t H, int64_t u,
                                                     int cnt) const {
    if (a.x) return a.bias ? vload_n(a.bias + g * H + u, cnt) : vzero<float>();
    return load_xg(a.xg, a.xg_bf16, (t * a.N + n) * GH + g * H + u, cnt);
  }
};

// ceil(K/2) pairs, rounded up to whole AMX tiles (16 pairs) where `amx`.
inline int64_t pairs(int64_t K, bool amx) {
  const int64_t kp = (K + 1) / 2;
  return amx ? (kp + 15) / 16 * 16 : kp;
}

// The rows of an operand buffer: N, rounded up to whole 16-row tiles where `amx`.
inline int64_t operand_rows(int64_t N, bool amx) { return amx ? (N + 15) / 16 * 16 : N; }

// Gate-major bf16 panels of W [G*H, K] used as B = W^T: panel p holds units p*16 .. p*16+15,
// laid out [Kp pairs][G][16 units][2], Kp = pairs(K, amx); units >= H and k >= K are zero.
// (Each gate's 16 pair-rows of a panel are an AMX B tile as it stands, G*64 bytes apart.)
Buffer<uint16_t> pack_pairs(const uint16_t* w, int G, int64_t H, int64_t K, int64_t* panels, bool amx) {
  const int64_t P = (H + W - 1) / W, Kp = pairs(K, amx);
  Buffer<uint16_t> buf = make_buffer<uint16_t>(P * Kp * G * 2 * W);
  uint16_t* out = buf.get();
  for (int64_t p = 0; p < P; ++p)
    for (int g = 0; g < G; ++g)
      for (int l = 0; l < W; ++l) {
        const int64_t u = p * W + l;
        if (u >= H) break;
        const uint16_t* src = w + (g * H + u) * K;
        uint16_t* dst = out + ((p * Kp) * G + g) * 2 * W + 2 * l;
        for (int64_t k = 0; k < K; ++k) dst[(k / 2) * G * 2 * W + (k & 1)] = src[k];
      }
  *panels = P;
  return buf;
}

// Unit-block bf16 panels of W [K, C] (row-major) used as B = W itself: panel p holds columns
// p*NB*16 .. +NB*16, laid out [Kp pairs][NB][16 columns][2], Kp = ceil(K/2); columns >= C and
// k >= K are zero (Kp = pairs(K, amx)). The backward's dgates @ W_hh reads W_hh so (K = G*H, C = H).
template <int NB>
Buffer<uint16_t> pack_pairs_units(const uint16_t* w, int64_t K, int64_t C, int64_t* panels, bool amx) {
  const int64_t P = (C + NB * W - 1) / (NB * W), Kp = pairs(K, amx);
  Buffer<uint16_t> buf = make_buffer<uint16_t>(P * Kp * NB * 2 * W);
  uint16_t* out = buf.get();
  for (int64_t p = 0; p < P; ++p)
    for (int64_t k = 0; k < K; ++k) {
      uint16_t* dst = out + (p * Kp + k / 2) * NB * 2 * W + (k & 1);
      for (int64_t j = 0; j < NB * W; ++j) {
        const int64_t c = p * NB * W + j;
        if (c >= C) break;
        dst[2 * j] = w[k * C + c];
      }
    }
  *panels = P;
  return buf;
}

// A packing of a bf16 weight through the pack cache (packing.h's cached_pack_from: a hit
// is checked against the source bytes); `layout` tells packings of the same bytes apart.
template <class Pack>
std::shared_ptr<const uint16_t> pack_bf16_cached(const uint16_t* w, int64_t src_elems, std::array<int64_t, 4> layout,
                                                 int64_t* panels, Pack&& pack) {
  const int64_t l[4] = {layout[0], layout[1], layout[2], layout[3]};
  return cached_pack_from<uint16_t>(w, src_elems, l, panels, std::forward<Pack>(pack));
}

std::shared_ptr<const uint16_t> pack_pairs_cached(const uint16_t* w, int G, int64_t H, int64_t K,
                                                  int64_t* panels, bool amx) {
  return pack_bf16_cached(w, G * H * K, {3000 + G + (amx ? 100 : 0), H, K, 2 * W}, panels,
                          [&](const uint16_t* src, int64_t* P) { return pack_pairs(src, G, H, K, P, amx); });
}

// acc[MR][G] = A[MR rows, 2*Kp] @ Bp (bf16 pairs, fp32 accumulation); Accumulate: acc +=.
template <int MR, int G, bool Accumulate>
FASTRNN_INLINE void tile(const uint16_t* __restrict A, int64_t lda, int64_t Kp, const uint16_t* __restrict Bp,
                         V* __restrict out) {
  __m512 acc[MR][G];
  for (int r = 0; r < MR; ++r)
    for (int g = 0; g < G; ++g) acc[r][g] = Accumulate ? (__m512)out[r * G + g] : _mm512_setzero_ps();
  for (int64_t k = 0; k < Kp; ++k) {
    const uint16_t* bk = Bp + k * G * 2 * W;
    __m512i bv[G];
    for (int g = 0; g < G; ++g) bv[g] = _mm512_loadu_si512(bk + g * 2 * W);
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, A + r * lda + 2 * k, 4);
      const __m512i a = _mm512_set1_epi32(pair);
      for (int g = 0; g < G; ++g) acc[r][g] = _mm512_dpbf16_ps(acc[r][g], (__m512bh)a, (__m512bh)bv[g]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int g = 0; g < G; ++g) out[r * G + g] = (V)acc[r][g];
}

template <int G, bool Accumulate, int M = rows_per_tile<G>()>
FASTRNN_INLINE void tile_rows(int mr, const uint16_t* A, int64_t lda, int64_t Kp, const uint16_t* Bp, V* acc) {
  if constexpr (M >= 1) {
    if (mr == M) return tile<M, G, Accumulate>(A, lda, Kp, Bp, acc);
    tile_rows<G, Accumulate, M - 1>(mr, A, lda, Kp, Bp, acc);
  }
}

// One operand of a step's GEMM: rows of A (bf16, lda apart) times packed panels of Kp pairs.
struct Operand {
  const uint16_t* A;
  int64_t lda, Kp;
  const uint16_t* packed;
};

#if defined(FASTRNN_HAVE_AMX)
// AMX-BF16 (Intel Sapphire Rapids and later): a tile is 16 rows of 64 bytes; TDPBF16PS adds
// C[16x16 fp32] += A[16 rows x 32 bf16] @ B[16 pair-rows x 16 columns x 2 bf16], the same
// pair arithmetic as vdpbf16ps (products exact in fp32, fp32 sums), 16x32x16 per instruction.
// Tiles 0..G-1 hold the accumulators, 4 the A block, 5..7 the B tiles.
struct alignas(64) TileConfig {
  uint8_t palette_id, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

void amx_configure() {  // per thread: the tile state is the thread's own
  TileConfig c{};
  c.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = 16;
    c.colsb[t] = 64;
  }
  _tile_loadconfig(&c);
}

// Tiles 0..G-1 += A (16 rows, lda elements apart, 32*chunks bf16 columns) @ B (pack_pairs'
// panel of one operand: [chunks*16 pairs][G][16][2]).
template <int G>
FASTRNN_INLINE void amx_accumulate(const uint16_t* A, int64_t lda, int64_t chunks, const uint16_t* B) {
  for (int64_t c = 0; c < chunks; ++c) {
    const uint16_t* b = B + c * 16 * G * 2 * W;
    _tile_loadd(4, A + c * 32, lda * 2);
    _tile_loadd(5, b, G * 64);
    _tile_dpbf16ps(0, 4, 5);
    if constexpr (G > 1) {
      _tile_loadd(6, b + 2 * W, G * 64);
      _tile_dpbf16ps(1, 4, 6);
    }
    if constexpr (G > 2) {
      _tile_loadd(7, b + 4 * W, G * 64);
      _tile_dpbf16ps(2, 4, 7);
    }
    if constexpr (G > 3) {
      _tile_loadd(5, b + 6 * W, G * 64);
      _tile_dpbf16ps(3, 4, 5);
    }
  }
}

template <int G>
FASTRNN_INLINE void amx_zero() {
  _tile_zero(0);
  if constexpr (G > 1) _tile_zero(1);
  if constexpr (G > 2) _tile_zero(2);
  if constexpr (G > 3) _tile_zero(3);
}

// The accumulators into C [16 rows][G][16] fp32: row r's G vectors at C + r*G*16, the
// layout the epilogues read (acc + r*G).
template <int G>
FASTRNN_INLINE void amx_store(float* C) {
  _tile_stored(0, C, G * 64);
  if constexpr (G > 1) _tile_stored(1, C + 16, G * 64);
  if constexpr (G > 2) _tile_stored(2, C + 32, G * 64);
  if constexpr (G > 3) _tile_stored(3, C + 48, G * 64);
}
#endif

// Rows per block of the AMX path, and the fewest rows that take it: below that the tiles'
// fixed 16-row cost is more than the dot products' (the bf16 kernels' benchmarks).
constexpr int kAmxRows = 16;
constexpr int64_t kAmxMinRows = 4;

inline bool use_amx(bool asked, int64_t rows) {
#if defined(FASTRNN_HAVE_AMX)
  return asked && rows >= kAmxMinRows;
#else
  (void)asked;
  (void)rows;
  return false;
#endif
}

// The tile configuration of this thread for one kernel call (released at its end: a thread
// holding tile state costs every context switch the 8 KiB of tile data).
struct AmxScope {
  bool on;
  explicit AmxScope(bool amx) : on(amx) {
#if defined(FASTRNN_HAVE_AMX)
    if (on) amx_configure();
#endif
  }
  ~AmxScope() {
#if defined(FASTRNN_HAVE_AMX)
    if (on) _tile_release();
#endif
  }
};

// This thread's items of one step's GEMM (the sum over the operands given: h's, and x's when
// the projection is fused in), epi(panel, row, acc[G]) on each row of each tile.
// `stage` (AMX): this thread's [16][2 * x->Kp] buffer, zero-padded, into which x's rows (the
// caller's x_t, not padded to whole tiles) are copied per 16-row block.
template <int G, class Epi>
FASTRNN_INLINE void fused_gemm_bf16(const WorkSplit& ws, const Operand& h, const Operand* x, Epi&& epi,
                                    bool amx = false, uint16_t* stage = nullptr) {
#if defined(FASTRNN_HAVE_AMX)
  if (amx) {  // rows outer: a block's A tiles (and x's staging) serve every panel
    alignas(64) float C[kAmxRows * G * W];
    for (int64_t n = ws.r_begin; n < ws.r_end; n += kAmxRows) {
      const int mr = static_cast<int>(std::min<int64_t>(kAmxRows, ws.r_end - n));
      if (x) {
        const int64_t cols = 2 * x->Kp;  // the staging buffer's row (the columns past I stay 0)
        for (int r = 0; r < mr; ++r)
          std::memcpy(stage + r * cols, x->A + (n + r) * x->lda, size_t(x->lda) * 2);
      }
      for (int64_t p = ws.p_begin; p < ws.p_end; ++p) {
        if (!h.A) {  // the first step of a backward pass: nothing from a later step
          std::fill(C, C + kAmxRows * G * W, 0.0f);
        } else {
          amx_zero<G>();
          if (x) amx_accumulate<G>(stage, 2 * x->Kp, x->Kp / 16, x->packed + p * x->Kp * G * 2 * W);
          amx_accumulate<G>(h.A + n * h.lda, h.lda, h.Kp / 16, h.packed + p * h.Kp * G * 2 * W);
          amx_store<G>(C);
        }
        for (int r = 0; r < mr; ++r) epi(p, n + r, reinterpret_cast<const V*>(C + r * G * W));
      }
    }
    return;
  }
#endif
  (void)amx;
  (void)stage;
  constexpr int MR = rows_per_tile<G>();
  alignas(64) V acc[MR * G];
  for (int64_t p = ws.p_begin; p < ws.p_end; ++p) {
    const uint16_t* Bh = h.packed + p * h.Kp * G * 2 * W;
    const uint16_t* Bx = x ? x->packed + p * x->Kp * G * 2 * W : nullptr;
    for (int64_t n = ws.r_begin; n < ws.r_end; n += MR) {
      const int mr = static_cast<int>(std::min<int64_t>(MR, ws.r_end - n));
      if (!h.A) {  // the first step of a backward pass: nothing from a later step
        std::fill(acc, acc + MR * G, vzero<float>());
      } else if (x) {
        tile_rows<G, false>(mr, x->A + n * x->lda, x->lda, x->Kp, Bx, acc);
        tile_rows<G, true>(mr, h.A + n * h.lda, h.lda, h.Kp, Bh, acc);
      } else {
        tile_rows<G, false>(mr, h.A + n * h.lda, h.lda, h.Kp, Bh, acc);
      }
      for (int r = 0; r < mr; ++r) epi(p, n + r, acc + r * G);
    }
  }
}

template <int G>
void seq_forward(const Bf16SeqParams& a) {
  const int64_t T = a.T, N = a.N, H = a.H, GH = G * H;
  const bool amx = use_amx(a.amx, N);
  // the operand rows, padded to whole pairs (AMX: whole tiles, 32 columns; rows to 16)
  const int64_t Kp = pairs(H, amx), lda = 2 * Kp;
  const int64_t NR = operand_rows(N, amx);
  int64_t P = 0;
  std::shared_ptr<const uint16_t> packed = pack_pairs_cached(a.w_hh, G, H, H, &P, amx);
  const bool fused = a.x != nullptr;  // the projection in each step's GEMM
  int64_t Px = 0;
  const int64_t Kpx = fused ? pairs(a.I, amx) : 0;  // (I is even with x given)
  std::shared_ptr<const uint16_t> packed_x;
  if (fused) packed_x = pack_pairs_cached(a.w_ih, G, H, a.I, &Px, amx);
  const int nt = std::max(1, a.num_threads);
  Buffer<uint16_t> stage = make_buffer<uint16_t>(fused && amx ? nt * kAmxRows * 2 * Kpx : 1);
  Buffer<uint16_t> hb = make_buffer<uint16_t>(2 * NR * lda);  // ping-pong bf16 operand, pads 0
  Buffer<float> hf = make_buffer<float>(N * H);               // h in fp32
  Buffer<float> c;
  std::copy(a.h0, a.h0 + N * H, hf.get());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < H; ++k) hb[n * lda + k] = bf16_round(a.h0[n * H + k]);
  if (G == 4) {
    c = make_buffer<float>(N * H);
    std::copy(a.c0, a.c0 + N * H, c.get());
  }
  const XTerm xt{a, GH};
  run_team(nt, [&](int tid, int nthr, TeamBarrier* bar) {
    const WorkSplit ws(P, N, tid, nthr, amx ? kAmxRows : rows_per_tile<G>(), bar);
    const AmxScope tiles(amx);
    uint16_t* my_stage = stage.get() + (fused && amx ? tid * kAmxRows * 2 * Kpx : 0);
    for_each_step(ws, T, a.reverse, /*backward=*/false, [&](int64_t s, int64_t t) {
      const uint16_t* A = hb.get() + (s % 2) * NR * lda;
      uint16_t* next = hb.get() + ((s + 1) % 2) * NR * lda;
      uint16_t* yt = a.y ? a.y + t * N * H : nullptr;
      float* y32t = a.y32 ? a.y32 + t * N * H : nullptr;
      float* gt = a.gates && G > 1 ? a.gates + t * N * 4 * H : nullptr;
      float* ct = a.cs ? a.cs + t * N * H : nullptr;
      const Operand oh{A, lda, Kp, packed.get()};
      const Operand ox{fused ? a.x + t * N * a.I : nullptr, a.I, Kpx, packed_x.get()};
      fused_gemm_bf16<G>(ws, oh, fused ? &ox : nullptr, [&](int64_t p, int64_t n, const V* acc) {
        const int64_t u = p * W;
        const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
        float* hrow = hf.get() + n * H + u;
        V h = vload_n(hrow, cnt);
        float* gr = gt ? gt + n * 4 * H + u : nullptr;  // (LSTM and GRU rows are both 4H wide)
        if (!step_valid(a.lengths, n, t)) {  // frozen: state kept, gate records zero
          if (gr)
            for (int g = 0; g < 4; ++g) vstore_n(gr + g * H, vzero<float>(), cnt);
          if (G == 4 && ct) vstore_n(ct + n * H + u, vload_n(c.get() + n * H + u, cnt), cnt);
        } else {
          if constexpr (G == 4) {
            float* crow = c.get() + n * H + u;
            const V cp = vload_n(crow, cnt);
            V pre_i = acc[0] + xt(t, n, 0, H, u, cnt), pre_f = acc[1] + xt(t, n, 1, H, u, cnt);
            V pre_o = acc[3] + xt(t, n, 3, H, u, cnt);
            if (a.w_ch) {  // peepholes: i and f see c_{t-1}, o sees c_t
              pre_i = pre_i + vload_n(a.w_ch + u, cnt) * cp;
              pre_f = pre_f + vload_n(a.w_ch + H + u, cnt) * cp;
            }
            const V i = sigm(pre_i), f = sigm(pre_f);
            const V g = tanh_(acc[2] + xt(t, n, 2, H, u, cnt));
            const V cnew = f * cp + i * g;
            if (a.w_ch) pre_o = pre_o + vload_n(a.w_ch + 2 * H + u, cnt) * cnew;
            const V o = sigm(pre_o);
            h = o * tanh_(cnew);
            vstore_n(crow, cnew, cnt);
            if (ct) vstore_n(ct + n * H + u, cnew, cnt);
            if (gr) {
              vstore_n(gr, i, cnt);
              vstore_n(gr + H, f, cnt);
              vstore_n(gr + 2 * H, g, cnt);
              vstore_n(gr + 3 * H, o, cnt);
            }
          } else if constexpr (G == 3) {
            const float* b = a.b_hh + u;
            const V r = sigm(xt(t, n, 0, H, u, cnt) + acc[0] + vload_n(b, cnt));
            const V z = sigm(xt(t, n, 1, H, u, cnt) + acc[1] + vload_n(b + H, cnt));
            const V hn = acc[2] + vload_n(b + 2 * H, cnt);
            const V nn = tanh_(xt(t, n, 2, H, u, cnt) + r * hn);
            h = (1.0f - z) * nn + z * h;
            if (gr) {
              vstore_n(gr, r, cnt);
              vstore_n(gr + H, z, cnt);
              vstore_n(gr + 2 * H, nn, cnt);
              vstore_n(gr + 3 * H, hn, cnt);
            }
          } else {
            const V pre = acc[0] + xt(t, n, 0, H, u, cnt);
            h = a.kind == kBf16RnnRelu ? vrelu<float>(pre) : tanh_(pre);
          }
          vstore_n(hrow, h, cnt);
        }
        if (yt) store_bf16(yt + n * H + u, h, cnt);
        if (y32t) vstore_n(y32t + n * H + u, h, cnt);
        store_bf16(next + n * lda + u, h, cnt);
      }, amx, my_stage);
    });
  });
  std::copy(hf.get(), hf.get() + N * H, a.hn);
  if (G == 4) std::copy(c.get(), c.get() + N * H, a.cn);
}

// The backward pass (bf16.h). G = 4 (LSTM), 3 (GRU), 1 (RNN). Per step, with the GEMM's
// operand the previous processed step's gate gradients in bf16 (LSTM, RNN: the input part's
// gradients, which are also the hidden part's; GRU: the hidden part's, (dr, dz, dn * r)),
// the same fp32 epilogue as the float32 kernels' backward (lstm.cpp, gru.cpp, rnn.cpp).
template <int G>
void seq_backward(const Bf16BackParams& a) {
  const int64_t T = a.T, N = a.N, H = a.H, GH = G * H;
  const bool amx = use_amx(a.amx, N);
  const int64_t Kp = pairs(GH, amx), lda = 2 * Kp;  // operand rows padded to whole pairs (AMX: tiles)
  const int64_t NR = operand_rows(N, amx);
  int64_t P = 0;
  std::shared_ptr<const uint16_t> packed =
      pack_bf16_cached(a.w_hh, GH * H, {4000 + G + (amx ? 100 : 0), GH, H, 4 * 2 * W}, &P,
                       [&](const uint16_t* src, int64_t* np) { return pack_pairs_units<4>(src, GH, H, np, amx); });
  Buffer<uint16_t> ops = make_buffer<uint16_t>(2 * NR * lda);  // the last two steps' operands, pads 0
  Buffer<float> carry = make_buffer<float>(N * H);  // dh carried to the previous step directly
  Buffer<float> dc;                                  // LSTM: dc of the step before
  if (G == 4) {
    dc = make_buffer<float>(N * H);
    std::copy(a.dcn, a.dcn + N * H, dc.get());
  }
  // the bias gradients' sums: per thread, this step's items in fp32 ([db | db_h]), all steps in double
  const bool sum_x = a.db != nullptr, sum_h = G == 3 && a.db_h != nullptr;
  const int nt = std::max(1, a.num_threads);
  Buffer<float> step_sums = make_buffer<float>(nt * 2 * GH);
  std::vector<double> sums(size_t((sum_x || sum_h) ? nt * 2 * GH : 0), 0.0);
  run_team(nt, [&](int tid, int nthr, TeamBarrier* bar) {
    const WorkSplit ws(P, N, tid, nthr, amx ? kAmxRows : rows_per_tile<4>(), bar);
    const AmxScope tiles(amx);
    float* acc_x = step_sums.get() + tid * 2 * GH;
    float* acc_h = acc_x + GH;
    if (sum_x || sum_h) std::fill(acc_x, acc_x + 2 * GH, 0.0f);
    for_each_step(ws, T, a.reverse, /*backward=*/true, [&](int64_t s, int64_t t) {
      const Operand prev{s == 0 ? nullptr : ops.get() + ((s - 1) & 1) * NR * lda, lda, Kp, packed.get()};
      uint16_t* cur = ops.get() + (s & 1) * NR * lda;
      const bool first_fwd = a.reverse ? t == T - 1 : t == 0;
      const float* dyt = a.dy + t * N * H;
      const float* gt = a.gates ? a.gates + t * N * 4 * H : nullptr;
      float* dx = a.dxg + t * N * GH;
      uint16_t* dx16 = a.dxg16 ? a.dxg16 + t * N * GH : nullptr;
      const float* hprev = G == 3 ? (first_fwd ? a.h0 : a.y + prev_time(t, a.reverse) * N * H) : nullptr;
      const float* cprev = G == 4 ? (first_fwd ? a.c0 : a.cs + prev_time(t, a.reverse) * N * H) : nullptr;
      fused_gemm_bf16<4>(ws, prev, nullptr, [&](int64_t p, int64_t n, const V* acc) {
        const bool valid = step_valid(a.lengths, n, t);
        for (int b = 0; b < 4; ++b) {
          const int64_t u = (p * 4 + b) * W;
          if (u >= H) break;
          const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
          float* cr = carry.get() + n * H + u;
          const V dh = acc[b] + vload_n(dyt + n * H + u, cnt) + vload_n(cr, cnt);
          float* dxr = dx + n * GH + u;
          uint16_t* opr = cur + n * lda + u;
          uint16_t* d16r = dx16 ? dx16 + n * GH + u : nullptr;
          // gate k's gradients: fp32 out, bf16 as the next step's operand (hidden part `hid`)
          auto put = [&](int k, V d, V hid) {
            vstore_n(dxr + k * H, d, cnt);
            store_bf16(opr + k * H, hid, cnt);
            if (d16r) store_bf16(d16r + k * H, d, cnt);
            if (sum_x) vstore_n(acc_x + k * H + u, vload_n(acc_x + k * H + u, cnt) + d, cnt);
            if (sum_h) vstore_n(acc_h + k * H + u, vload_n(acc_h + k * H + u, cnt) + hid, cnt);
          };
          if (!valid) {  // frozen step: no gate gradients, dh passes to the step before
            for (int k = 0; k < G; ++k) put(k, vzero<float>(), vzero<float>());
            vstore_n(cr, dh, cnt);
            continue;
          }
          if constexpr (G == 4) {
            const float* g = gt + n * 4 * H + u;
            const V i = vload_n(g, cnt), f = vload_n(g + H, cnt);
            const V gg = vload_n(g + 2 * H, cnt), o = vload_n(g + 3 * H, cnt);
            const V tc = tanh_(vload_n(a.cs + (t * N + n) * H + u, cnt));
            float* dcrow = dc.get() + n * H + u;
            const V cp = vload_n(cprev + n * H + u, cnt);
            const LstmGateGrads<float> gr =
                a.w_ch ? lstm_gate_grads<float>(i, f, gg, o, tc, cp, dh, vload_n(dcrow, cnt), vload_n(a.w_ch + u, cnt),
                                                vload_n(a.w_ch + H + u, cnt), vload_n(a.w_ch + 2 * H + u, cnt))
                       : lstm_gate_grads<float>(i, f, gg, o, tc, cp, dh, vload_n(dcrow, cnt));
            put(0, gr.di, gr.di);
            put(1, gr.df, gr.df);
            put(2, gr.dg, gr.dg);
            put(3, gr.dout, gr.dout);
            vstore_n(dcrow, gr.dc_prev, cnt);
            vstore_n(cr, vzero<float>(), cnt);
          } else if constexpr (G == 3) {
            const float* sv = gt + n * 4 * H + u;
            const V r = vload_n(sv, cnt), z = vload_n(sv + H, cnt);
            const V nn = vload_n(sv + 2 * H, cnt), hn = vload_n(sv + 3 * H, cnt);
            const GruGateGrads<float> gr = gru_gate_grads<float>(dh, r, z, nn, hn, vload_n(hprev + n * H + u, cnt));
            put(0, gr.dr, gr.dr);
            put(1, gr.dz, gr.dz);
            put(2, gr.dn, gr.dn * r);
            vstore_n(cr, dh * z, cnt);
          } else {
            const V h = vload_n(a.y + (t * N + n) * H + u, cnt);
            const V d = a.kind == kBf16RnnRelu ? (h > vzero<float>() ? dh : vzero<float>()) : dh * (1.0f - h * h);
            put(0, d, d);
            vstore_n(cr, vzero<float>(), cnt);
          }
        }
      }, amx);
      if (sum_x || sum_h) {
        double* total = sums.data() + tid * 2 * GH;
        for (int64_t k = 0; k < 2 * GH; ++k) total[k] += static_cast<double>(acc_x[k]);
        std::fill(acc_x, acc_x + 2 * GH, 0.0f);
      }
    });
    // dh0 = (the first forward step's operand) @ W_hh + what was carried past frozen steps.
    const Operand first{ops.get() + ((T - 1) & 1) * NR * lda, lda, Kp, packed.get()};
    fused_gemm_bf16<4>(ws, first, nullptr, [&](int64_t p, int64_t n, const V* acc) {
      for (int b = 0; b < 4; ++b) {
        const int64_t u = (p * 4 + b) * W;
        if (u >= H) break;
        const int cnt = static_cast<int>(std::min<int64_t>(W, H - u));
        vstore_n(a.dh0 + n * H + u, acc[b] + vload_n(carry.get() + n * H + u, cnt), cnt);
      }
    }, amx);
  });
  if (G == 4) std::copy(dc.get(), dc.get() + N * H, a.dc0);
  for (int half = 0; half < 2; ++half) {
    float* out = half == 0 ? (sum_x ? a.db : nullptr) : (sum_h ? a.db_h : nullptr);
    if (!out) continue;
    for (int64_t k = 0; k < GH; ++k) {
      double v = 0;
      for (int th = 0; th < nt; ++th) v += sums[size_t((th * 2 + half) * GH + k)];
      out[k] = static_cast<float>(v);
    }
  }
}

}  // namespace

void bf16_seq_forward(const Bf16SeqParams& a) {
  switch (a.kind) {
    case kBf16Lstm: return seq_forward<4>(a);
    case kBf16Gru: return seq_forward<3>(a);
    default: return seq_forward<1>(a);
  }
}

void bf16_seq_backward(const Bf16BackParams& a) {
  switch (a.kind) {
    case kBf16Lstm: return seq_backward<4>(a);
    case kBf16Gru: return seq_backward<3>(a);
    default: return seq_backward<1>(a);
  }
}

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
