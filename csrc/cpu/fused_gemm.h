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
// epi(panel, row, const vec_t<scalar_t>* acc_row /*NB vectors*/) for every row.
template <typename scalar_t, int NB, typename Epi>
static inline void fused_gemm(const WorkSplit& ws, const scalar_t* A, int64_t lda, int64_t K,
                              const scalar_t* packed, Epi&& epi) {
  constexpr int W = Vec<scalar_t>::W;
  constexpr int MR = rows_per_tile<NB>();
  alignas(64) vec_t<scalar_t> acc[MR * NB];
  for (int64_t p = ws.p_begin; p < ws.p_end; ++p) {
    const scalar_t* Bp = packed + p * K * NB * W;
    for (int64_t n = ws.r_begin; n < ws.r_end; n += MR) {
      const int mr = static_cast<int>(std::min<int64_t>(MR, ws.r_end - n));
      micro_tile_rows<scalar_t, NB>(mr, A ? A + n * lda : nullptr, lda, K, Bp, acc);
      for (int r = 0; r < mr; ++r) epi(p, n + r, acc + r * NB);
    }
  }
}

// out[N, cols] = A[N, K] @ B + carry over unit-packed panels (4 vectors each): the
// initial-state gradient every backward kernel ends with (dh0 = dgates_first @ W_hh
// plus what was carried past frozen steps).
template <typename scalar_t>
static inline void gemm_plus_carry(const WorkSplit& ws, const scalar_t* A, int64_t K, const scalar_t* packed,
                                   int64_t cols, const scalar_t* carry, scalar_t* out) {
  constexpr int W = Vec<scalar_t>::W;
  fused_gemm<scalar_t, 4>(ws, A, K, K, packed, [&](int64_t p, int64_t n, const vec_t<scalar_t>* acc) {
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

// The team a sequence kernel runs on: `threads` OpenMP threads (the caller alone when
// threads <= 1), denormals flushed in each while it runs (vec.h), one shared barrier;
// body(tid, nthr, &barrier) in every thread.
template <class Body>
static inline void run_team(int threads, Body&& body) {
  const int nt = std::max(1, threads);
  TeamBarrier bar;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const FlushDenormals ftz;
    body(omp_get_thread_num(), omp_get_num_threads(), &bar);
  }
}

// The time loop of a pass over TT steps: step(s, t) for processing step s = 0 .. TT-1 at
// time t (a forward pass runs t = s, or TT-1-s when reverse; a backward pass the other way
// round), then the phase barrier.
template <class Step>
static inline void for_each_step(const WorkSplit& ws, int64_t TT, bool reverse, bool backward,
                                 Step&& step) {
  for (int64_t s = 0; s < TT; ++s) {
    step(s, reverse != backward ? TT - 1 - s : s);
    FASTRNN_PHASE_BARRIER(ws);
  }
}

// The time of the step a forward pass ran just before time t (whose state step t reads).
static inline int64_t prev_time(int64_t t, bool reverse) { return reverse ? t + 1 : t - 1; }

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
