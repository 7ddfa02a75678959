// Packed weight panels for the fused GEMM (fused_gemm.h) and the kernels' scratch buffers.
//
// B is packed into panels of NB vectors (NB*W columns), once per weight (the pack cache
// keeps the panels across calls while the weights' bytes stay the same), so that one tile
// of the output holds what the epilogue needs together: for the forward LSTM a panel is
// the i, f, g, o rows of the same W hidden units ("gate-major"), elsewhere NB consecutive
// column blocks ("unit" packing).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <typeinfo>
#include <utility>
#include <vector>

#include "cpu/bf16.h"
#include "cpu/buffer_pool.h"
#include "cpu/pack_cache.h"
#include "cpu/vec.h"

namespace fastrnn {
namespace cpu {
// Depends on the instruction set this translation unit is compiled for (the vector width
// above all), so it lives in that ISA's namespace: the same template instantiated by two
// ISA builds would otherwise be one linker symbol (see fused_gemm.h).
namespace FASTRNN_ISA {

// A kernel's scratch (packed weights, state, carries): zero-filled, 64-byte aligned, and
// taken from / returned to the buffer pool, so a call does not page-fault it in afresh
// (first-touch faults would cost more than the packing itself).
struct PoolFree {
  size_t capacity = 0;
  void operator()(void* p) const { pool_put(p, capacity); }
};
template <typename scalar_t>
using Buffer = std::unique_ptr<scalar_t[], PoolFree>;

template <typename scalar_t>
Buffer<scalar_t> make_buffer(int64_t n) {
  const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(scalar_t) + 63) / 64 * 64;
  size_t capacity = 0;
  void* p = pool_get(bytes, &capacity);
  std::memset(p, 0, bytes);
  return Buffer<scalar_t>(static_cast<scalar_t*>(p), PoolFree{capacity});
}

// A weight's value as packed: itself, or with `round` (float only) rounded to bfloat16 and
// widened back (the operands of an autocast matmul; bf16.h's rounding, torch's bits).
template <typename scalar_t>
inline scalar_t packed_value(scalar_t v, bool round) {
  if constexpr (sizeof(scalar_t) == 4) {
    if (round) return bf16_widen(bf16_round(v));
  }
  return v;
}

// Gate-major packing of W [G*H, K] (rows g*H + u) used as B = W^T:
// panel p holds units p*W .. p*W+W-1, layout [K][G][W]. Units >= H are zero.
template <typename scalar_t, int G>
Buffer<scalar_t> pack_gate_major(const scalar_t* w, int64_t H, int64_t K, int64_t* panels_out,
                                 bool round = false) {
  constexpr int W = Vec<scalar_t>::W;
  const int64_t P = (H + W - 1) / W;
  Buffer<scalar_t> buf = make_buffer<scalar_t>(P * K * G * W);  // zero-filled: units >= H stay 0
  scalar_t* out = buf.get();
  // Source rows are read in order (each row of W is one (g, u) pair); the writes stride
  // by G*W within a panel that stays in L1.
  for (int64_t p = 0; p < P; ++p)
    for (int g = 0; g < G; ++g)
      for (int l = 0; l < W; ++l) {
        const int64_t u = p * W + l;
        if (u >= H) break;
        const scalar_t* src = w + (g * H + u) * K;
        scalar_t* dst = out + (p * K * G + g) * W + l;
        if (round)
          for (int64_t k = 0; k < K; ++k) dst[k * G * W] = packed_value(src[k], true);
        else
          for (int64_t k = 0; k < K; ++k) dst[k * G * W] = src[k];
      }
  *panels_out = P;
  return buf;
}

// Unit packing of B [K, cols] with NB vectors per panel. `transposed` means the
// source holds B^T, i.e. w is [cols, K] (B[k][c] = w[c*K + k]); otherwise w is
// [K, cols]. Layout per panel: [K][NB*W]; columns >= cols are zero.
template <typename scalar_t, int NB>
Buffer<scalar_t> pack_units(const scalar_t* w, int64_t K, int64_t cols, bool transposed, int64_t* panels_out,
                            bool round = false) {
  constexpr int W = Vec<scalar_t>::W;
  constexpr int PW = NB * W;
  const int64_t P = (cols + PW - 1) / PW;
  Buffer<scalar_t> buf = make_buffer<scalar_t>(P * K * PW);
  scalar_t* out = buf.get();
  for (int64_t p = 0; p < P; ++p)
    for (int64_t k = 0; k < K; ++k)
      for (int c = 0; c < PW; ++c) {
        const int64_t col = p * PW + c;
        scalar_t v = scalar_t(0);
        if (col < cols) v = packed_value(transposed ? w[col * K + k] : w[k * cols + col], round);
        out[(p * K + k) * PW + c] = v;
      }
  *panels_out = P;
  return buf;
}

// Packed weights through the pack cache (cpu/pack_cache.h): `pack(src, &panels)` packs
// the `src_bytes` bytes at `w` (of the element type `type` names) into a Buffer<scalar_t>;
// `layout` tells packings of the same bytes apart. On a miss the source is copied first
// and packed from the copy, so the entry's packed buffer is exactly what its saved source
// packs to.
template <typename scalar_t>
using Packed = std::shared_ptr<const scalar_t>;

template <typename scalar_t, typename src_t, typename PackFn>
Packed<scalar_t> cached_pack_from(const src_t* w, int64_t src_elems, const int64_t (&layout)[4],
                                  int64_t* panels_out, PackFn&& pack) {
  const size_t src_bytes = static_cast<size_t>(src_elems) * sizeof(src_t);
  auto own = [](Buffer<scalar_t> buf) {
    const size_t bytes = buf.get_deleter().capacity;
    return Packed<scalar_t>(buf.release(), PoolFree{bytes});
  };
  if (!pack_cache_accepts(src_bytes)) return own(pack(w, panels_out));
  const PackKey key{w, src_bytes, typeid(src_t).hash_code(), {layout[0], layout[1], layout[2], layout[3]}};
  if (auto hit = pack_cache_find(key, panels_out)) return std::static_pointer_cast<const scalar_t>(hit);
  std::vector<unsigned char> source(reinterpret_cast<const unsigned char*>(w),
                                    reinterpret_cast<const unsigned char*>(w) + src_bytes);
  Buffer<scalar_t> buf = pack(reinterpret_cast<const src_t*>(source.data()), panels_out);
  const size_t bytes = buf.get_deleter().capacity;
  Packed<scalar_t> packed(buf.release(), PoolFree{bytes});
  pack_cache_put(key, std::move(source), packed, bytes, *panels_out);
  return packed;
}

template <typename scalar_t, typename PackFn>
Packed<scalar_t> cached_pack(const scalar_t* w, int64_t src_elems, int64_t kind, int64_t d0, int64_t d1,
                             int64_t* panels_out, PackFn&& pack) {
  const int64_t layout[4] = {kind, d0, d1, Vec<scalar_t>::W};
  return cached_pack_from<scalar_t>(w, src_elems, layout, panels_out, std::forward<PackFn>(pack));
}

// The cached forms of the two packings (kind: G for gate-major, 100 + NB (+ 1000 when
// transposed) for unit packing; + 10000 for values rounded to bfloat16).
template <typename scalar_t, int G>
Packed<scalar_t> pack_gate_major_cached(const scalar_t* w, int64_t H, int64_t K, int64_t* panels_out,
                                        bool round = false) {
  return cached_pack<scalar_t>(w, G * H * K, G + (round ? 10000 : 0), H, K, panels_out,
                               [&](const scalar_t* src, int64_t* p) {
                                 return pack_gate_major<scalar_t, G>(src, H, K, p, round);
                               });
}

template <typename scalar_t, int NB>
Packed<scalar_t> pack_units_cached(const scalar_t* w, int64_t K, int64_t cols, bool transposed,
                            int64_t* panels_out, bool round = false) {
  return cached_pack<scalar_t>(w, K * cols, 100 + NB + (transposed ? 1000 : 0) + (round ? 10000 : 0), K, cols,
                               panels_out, [&](const scalar_t* src, int64_t* p) {
                                 return pack_units<scalar_t, NB>(src, K, cols, transposed, p, round);
                               });
}

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
