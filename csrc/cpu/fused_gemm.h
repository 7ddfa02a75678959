// The one building block of every CPU kernel: a register-blocked GEMM over a
// packed weight panel whose accumulator tile is handed, still hot, to a fused
// epilogue (bias, gate nonlinearities, state update, stores).
//
//   C[N, cols] = A[N, K] @ B[K, cols]     (A row-major with leading dim lda)
//
// B is packed into panels (packing.h), the tiles computed by the micro-kernel
// (micro_kernel.h). Each thread owns a fixed
// set of (panel, row range) items for the whole sequence, so its weight panels
// stay in its own L2 across steps; threads meet at one barrier per phase (TeamBarrier).
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "cpu/micro_kernel.h"
#include "cpu/packing.h"
#include "cpu/team_barrier.h"
#include "cpu/vec.h"

namespace fastrnn {
namespace cpu {
// Everything here depends on the instruction set this translation unit is compiled for
// (the vector width above all), so it lives in that ISA's namespace: the same template
// instantiated by two ISA builds would otherwise be one linker symbol, and every ISA
// would run whichever build's packing the linker kept.
namespace FASTRNN_ISA {

// A thread's share of one GEMM phase, fixed for the whole sequence so each thread keeps
// touching the same weights and rows. With enough batch rows every thread takes a block
// of rows and ALL panels: then no thread reads what another wrote (a row's next state
// depends only on that row), so the kernels skip the per-step barrier (`independent`).
// Otherwise (small batches) threads split the panels and meet at a barrier per phase.
struct WorkSplit {
  int64_t p_begin, p_end, r_begin, r_end;
  bool independent;
  TeamBarrier* bar;  // shared by the team: the phase barrier
  WorkSplit(int64_t panels, int64_t rows, int tid, int nthr, int mr, TeamBarrier* barrier)
      : bar(barrier) {
    bar->join(nthr);
    if (nthr == 1 || rows >= static_cast<int64_t>(nthr) * mr) {
      const int64_t tiles = (rows + mr - 1) / mr;
      independent = true;
      p_begin = 0;
      p_end = panels;
      r_begin = std::min(rows, tiles * tid / nthr * mr);
      r_end = std::min(rows, tiles * (tid + 1) / nthr * mr);
    } else {
      independent = false;
      p_begin = panels * tid / nthr;
      p_end = panels * (tid + 1) / nthr;
      r_begin = 0;
      r_end = rows;
    }
  }
};

// Runs this thread's items: for each, the tiles of C over its rows, and
// epi(panel, row, const vec_t<T>* acc_row /*NB vectors*/) for every row.
template <typename T, int NB, typename Epi>
static inline void fused_gemm(const WorkSplit& ws, const T* A, int64_t lda, int64_t K,
                              const T* packed, Epi&& epi) {
  constexpr int W = Vec<T>::W;
  constexpr int MR = rows_per_tile<NB>();
  alignas(64) vec_t<T> acc[MR * NB];
  for (int64_t p = ws.p_begin; p < ws.p_end; ++p) {
    const T* Bp = packed + p * K * NB * W;
    for (int64_t n = ws.r_begin; n < ws.r_end; n += MR) {
      const int mr = static_cast<int>(std::min<int64_t>(MR, ws.r_end - n));
      micro_tile_rows<T, NB>(mr, A ? A + n * lda : nullptr, lda, K, Bp, acc);
      for (int r = 0; r < mr; ++r) epi(p, n + r, acc + r * NB);
    }
  }
}

// out[N, cols] = A[N, K] @ B + carry over unit-packed panels (4 vectors each): the
// initial-state gradient every backward kernel ends with (dh0 = dgates_first @ W_hh
// plus what was carried past frozen steps).
template <typename T>
static inline void gemm_plus_carry(const WorkSplit& ws, const T* A, int64_t K, const T* packed,
                                   int64_t cols, const T* carry, T* out) {
  constexpr int W = Vec<T>::W;
  fused_gemm<T, 4>(ws, A, K, K, packed, [&](int64_t p, int64_t n, const vec_t<T>* acc) {
    for (int b = 0; b < 4; ++b) {
      const int64_t c = (p * 4 + b) * W;
      if (c >= cols) break;
      const int cnt = static_cast<int>(std::min<int64_t>(W, cols - c));
      vstore_n(out + n * cols + c, acc[b] + vload_n(carry + n * cols + c, cnt), cnt);
    }
  });
}

// The barrier between dependent phases, skipped when the split makes threads independent
// (every thread of the team has the same `independent`, so all or none reach it).
#define FASTRNN_PHASE_BARRIER(ws) \
  do {                             \
    if (!(ws).independent) {       \
      (ws).bar->wait();            \
    }                              \
  } while (0)

static inline bool step_valid(const int64_t* lengths, int64_t n, int64_t t) {
  return lengths == nullptr || t < lengths[n];
}

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
