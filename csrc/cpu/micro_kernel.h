// The register-blocked micro-kernel of the fused GEMM: an MR x NB tile of vector
// accumulators over a packed panel (packing.h).
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/vec.h"

namespace fastrnn {
namespace cpu {
// Depends on the instruction set this translation unit is compiled for (the vector width
// above all), so it lives in that ISA's namespace: the same template instantiated by two
// ISA builds would otherwise be one linker symbol (see fused_gemm.h).
namespace FASTRNN_ISA {

// Rows per micro-tile: as many accumulators as the register file holds next to
// the NB weight vectors and one broadcast.
template <int NB>
constexpr int rows_per_tile() {
  return std::max(1, std::min(8, (kVecRegs - NB - 2) / NB));
}

// acc[MR][NB] = A[MR rows, K] @ Bp[K][NB*W] (Accumulate: acc += ...); A == nullptr
// means A is zero.
template <typename scalar_t, int MR, int NB, bool Accumulate = false>
FASTRNN_INLINE void micro_tile(const scalar_t* __restrict A, int64_t lda, int64_t K,
                              const scalar_t* __restrict Bp, vec_t<scalar_t>* __restrict acc_out) {
  constexpr int W = Vec<scalar_t>::W;
  using V = vec_t<scalar_t>;
  V acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = Accumulate ? acc_out[r * NB + b] : vzero<scalar_t>();
  if (A != nullptr) {
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t* bk = Bp + k * (NB * W);
      V bv[NB];
      for (int b = 0; b < NB; ++b) bv[b] = vload<scalar_t>(bk + b * W);
      for (int r = 0; r < MR; ++r) {
        const V a = vset<scalar_t>(A[r * lda + k]);
        for (int b = 0; b < NB; ++b) acc[r][b] += a * bv[b];
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int b = 0; b < NB; ++b) acc_out[r * NB + b] = acc[r][b];
}

template <typename scalar_t, int NB, bool Accumulate = false, int M = rows_per_tile<NB>()>
static inline void micro_tile_rows(int mr, const scalar_t* A, int64_t lda, int64_t K, const scalar_t* Bp,
                                   vec_t<scalar_t>* acc) {
  if constexpr (M >= 1) {
    if (mr == M) {
      micro_tile<scalar_t, M, NB, Accumulate>(A, lda, K, Bp, acc);
      return;
    }
    micro_tile_rows<scalar_t, NB, Accumulate, M - 1>(mr, A, lda, K, Bp, acc);
  }
}

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
