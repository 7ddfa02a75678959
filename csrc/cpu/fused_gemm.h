// The one building block of every CPU kernel: a register-blocked GEMM over a
// packed weight panel whose accumulator tile is handed, still hot, to a fused
// epilogue (bias, gate nonlinearities, state update, stores).
//
//   C[N, cols] = A[N, K] @ B[K, cols]     (A row-major with leading dim lda)
//
// B is packed into panels of NB vectors (NB*W columns), once per weight (the pack
// cache keeps the panels across calls while the weights' bytes stay the same), so that one
// tile of the output holds what the epilogue needs together: for the forward
// LSTM a panel is the i, f, g, o rows of the same W hidden units ("gate-major"),
// elsewhere NB consecutive column blocks ("unit" packing). Each thread owns a fixed
// set of (panel, row range) items for the whole sequence, so its weight panels
// stay in its own L2 across steps; threads meet at one barrier per phase (TeamBarrier).
#pragma once
#include <omp.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <thread>
#include <typeinfo>
#include <vector>

#include "cpu/buffer_pool.h"
#include "cpu/pack_cache.h"
#include "cpu/vec.h"

namespace fastrnn {
namespace cpu {
// Everything here depends on the instruction set this translation unit is compiled for
// (the vector width above all), so it lives in that ISA's namespace: the same template
// instantiated by two ISA builds would otherwise be one linker symbol, and every ISA
// would run whichever build's packing the linker kept.
namespace FASTRNN_ISA {

// Rows per micro-tile: as many accumulators as the register file holds next to
// the NB weight vectors and one broadcast.
template <int NB>
constexpr int rows_per_tile() {
  return std::max(1, std::min(8, (kVecRegs - NB - 2) / NB));
}

// A kernel's scratch (packed weights, state, carries): zero-filled, 64-byte aligned, and
// taken from / returned to the buffer pool, so a call does not page-fault it in afresh
// (measured: packing the 256 KB W_hh of a 128-unit LSTM took ~75 us per call from fresh
// memory, most of it first-touch faults, against ~15 us of work).
struct PoolFree {
  size_t bytes = 0;
  void operator()(void* p) const { pool_put(p, bytes); }
};
template <typename T>
using Buffer = std::unique_ptr<T[], PoolFree>;

template <typename T>
Buffer<T> make_buffer(int64_t n) {
  const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T) + 63) / 64 * 64;
  void* p = pool_get(bytes);
  std::memset(p, 0, bytes);
  return Buffer<T>(static_cast<T*>(p), PoolFree{bytes});
}

// Gate-major packing of W [G*H, K] (rows g*H + u) used as B = W^T:
// panel p holds units p*W .. p*W+W-1, layout [K][G][W]. Units >= H are zero.
template <typename T, int G>
Buffer<T> pack_gate_major(const T* w, int64_t H, int64_t K, int64_t* panels_out) {
  constexpr int W = Vec<T>::W;
  const int64_t P = (H + W - 1) / W;
  Buffer<T> buf = make_buffer<T>(P * K * G * W);  // zero-filled: units >= H stay 0
  T* out = buf.get();
  // Source rows are read in order (each row of W is one (g, u) pair); the writes stride
  // by G*W within a panel that stays in L1.
  for (int64_t p = 0; p < P; ++p)
    for (int g = 0; g < G; ++g)
      for (int l = 0; l < W; ++l) {
        const int64_t u = p * W + l;
        if (u >= H) break;
        const T* src = w + (g * H + u) * K;
        T* dst = out + (p * K * G + g) * W + l;
        for (int64_t k = 0; k < K; ++k) dst[k * G * W] = src[k];
      }
  *panels_out = P;
  return buf;
}

// Unit packing of B [K, cols] with NB vectors per panel. `transposed` means the
// source holds B^T, i.e. w is [cols, K] (B[k][c] = w[c*K + k]); otherwise w is
// [K, cols]. Layout per panel: [K][NB*W]; columns >= cols are zero.
template <typename T, int NB>
Buffer<T> pack_units(const T* w, int64_t K, int64_t cols, bool transposed, int64_t* panels_out) {
  constexpr int W = Vec<T>::W;
  constexpr int PW = NB * W;
  const int64_t P = (cols + PW - 1) / PW;
  Buffer<T> buf = make_buffer<T>(P * K * PW);
  T* out = buf.get();
  for (int64_t p = 0; p < P; ++p)
    for (int64_t k = 0; k < K; ++k)
      for (int c = 0; c < PW; ++c) {
        const int64_t col = p * PW + c;
        T v = T(0);
        if (col < cols) v = transposed ? w[col * K + k] : w[k * cols + col];
        out[(p * K + k) * PW + c] = v;
      }
  *panels_out = P;
  return buf;
}

// Packed weights through the pack cache (cpu/pack_cache.h): `pack(src, &panels)` packs
// the `src_elems` values at `w`. On a miss the source is copied first and packed from the
// copy, so the entry's packed buffer is exactly what its saved source packs to.
template <typename T>
using Packed = std::shared_ptr<const T>;

template <typename T, typename PackFn>
Packed<T> cached_pack(const T* w, int64_t src_elems, int64_t kind, int64_t d0, int64_t d1,
                      int64_t* panels_out, PackFn&& pack) {
  const size_t src_bytes = static_cast<size_t>(src_elems) * sizeof(T);
  if (!pack_cache_accepts(src_bytes)) {
    Buffer<T> buf = pack(w, panels_out);
    const size_t bytes = buf.get_deleter().bytes;
    return Packed<T>(buf.release(), PoolFree{bytes});
  }
  const PackKey key{w, src_bytes, typeid(T).hash_code(), {kind, d0, d1, Vec<T>::W}};
  if (auto hit = pack_cache_find(key, panels_out)) return std::static_pointer_cast<const T>(hit);
  std::vector<unsigned char> source(reinterpret_cast<const unsigned char*>(w),
                                    reinterpret_cast<const unsigned char*>(w) + src_bytes);
  Buffer<T> buf = pack(reinterpret_cast<const T*>(source.data()), panels_out);
  const size_t bytes = buf.get_deleter().bytes;
  Packed<T> packed(buf.release(), PoolFree{bytes});
  pack_cache_put(key, std::move(source), packed, bytes, *panels_out);
  return packed;
}

// The cached forms of the two packings (kind: G for gate-major, 100 + NB (+ 1000 when
// transposed) for unit packing).
template <typename T, int G>
Packed<T> pack_gate_major_cached(const T* w, int64_t H, int64_t K, int64_t* panels_out) {
  return cached_pack<T>(w, G * H * K, G, H, K, panels_out, [&](const T* src, int64_t* p) {
    return pack_gate_major<T, G>(src, H, K, p);
  });
}

template <typename T, int NB>
Packed<T> pack_units_cached(const T* w, int64_t K, int64_t cols, bool transposed,
                            int64_t* panels_out) {
  return cached_pack<T>(w, K * cols, 100 + NB + (transposed ? 1000 : 0), K, cols, panels_out,
                        [&](const T* src, int64_t* p) {
                          return pack_units<T, NB>(src, K, cols, transposed, p);
                        });
}

// acc[MR][NB] = A[MR rows, K] @ Bp[K][NB*W] (Accumulate: acc += ...); A == nullptr
// means A is zero.
template <typename T, int MR, int NB, bool Accumulate = false>
FASTRNN_INLINE void micro_tile(const T* __restrict A, int64_t lda, int64_t K,
                              const T* __restrict Bp, vec_t<T>* __restrict acc_out) {
  constexpr int W = Vec<T>::W;
  using V = vec_t<T>;
  V acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = Accumulate ? acc_out[r * NB + b] : vzero<T>();
  if (A != nullptr) {
    for (int64_t k = 0; k < K; ++k) {
      const T* bk = Bp + k * (NB * W);
      V bv[NB];
      for (int b = 0; b < NB; ++b) bv[b] = vload<T>(bk + b * W);
      for (int r = 0; r < MR; ++r) {
        const V a = vset<T>(A[r * lda + k]);
        for (int b = 0; b < NB; ++b) acc[r][b] += a * bv[b];
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int b = 0; b < NB; ++b) acc_out[r * NB + b] = acc[r][b];
}

template <typename T, int NB, bool Accumulate = false, int M = rows_per_tile<NB>()>
static inline void micro_tile_rows(int mr, const T* A, int64_t lda, int64_t K, const T* Bp,
                                   vec_t<T>* acc) {
  if constexpr (M >= 1) {
    if (mr == M) {
      micro_tile<T, M, NB, Accumulate>(A, lda, K, Bp, acc);
      return;
    }
    micro_tile_rows<T, NB, Accumulate, M - 1>(mr, A, lda, K, Bp, acc);
  }
}

// The barrier between a kernel's dependent phases (one or two per time step when the
// threads split the weights, i.e. at small batches). `#pragma omp barrier` took ~400 ns
// per crossing here (2 threads, libgomp, this VM's Zen 4), a spinning counter barrier
// ~210 ns, about one cache-line round trip between the cores: at batch 1 that is 10% of
// a 128-unit LSTM step. Centralised: the last thread to arrive resets the count and
// bumps the generation, which the others wait on. Release/acquire on the count and the
// generation publish every thread's writes of the phase to all threads of the next.
//
// Waiting spins, then sleeps on a futex (Linux; elsewhere it yields), like libgomp's own
// barrier: 300,000 PAUSEs (about a millisecond), or 1,000 when the team has more threads
// than the machine has CPUs, so that an oversubscribed waiter gives its CPU back to the
// thread it waits for. Sleepers are counted, so the common case (every thread arrives
// within the spin) makes no system call. (The first call after the process sat idle for
// 100 ms took 6-11 ms instead of ~0.9 at T500 N1 here, with this barrier and with
// `omp barrier` alike: waking the VM's idle vCPUs, not the barrier.)
class TeamBarrier {
 public:
  // Every thread of the team calls this, with the same team size, before its first wait.
  void join(int team_size) {
    static const unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
    spins_.store(static_cast<unsigned>(team_size) > cpus ? 1000u : 300000u,
                 std::memory_order_relaxed);
    n_.store(team_size, std::memory_order_relaxed);
  }

  void wait() {
    const int n = n_.load(std::memory_order_relaxed);
    if (n <= 1) return;
    const unsigned gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_seq_cst);
      if (sleepers_.load(std::memory_order_seq_cst) > 0) wake_all();
      return;
    }
    const unsigned max_spins = spins_.load(std::memory_order_relaxed);
    for (unsigned spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < max_spins) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
        continue;
      }
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      if (gen_.load(std::memory_order_seq_cst) == gen) sleep_while(gen);
      sleepers_.fetch_sub(1, std::memory_order_seq_cst);
    }
  }

 private:
  void sleep_while(unsigned gen) {
#if defined(__linux__)
    // Returns at once if gen_ no longer holds `gen`; may also wake spuriously: the
    // caller re-checks.
    syscall(SYS_futex, reinterpret_cast<unsigned*>(&gen_), FUTEX_WAIT_PRIVATE, gen, nullptr,
            nullptr, 0);
#else
    (void)gen;
    std::this_thread::yield();
#endif
  }

  void wake_all() {
#if defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<unsigned*>(&gen_), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
            nullptr, 0);
#endif
  }

  alignas(64) std::atomic<int> count_{0};
  alignas(64) std::atomic<unsigned> gen_{0};
  alignas(64) std::atomic<int> n_{1};
  std::atomic<int> sleepers_{0};
  std::atomic<unsigned> spins_{300000};
};
static_assert(sizeof(std::atomic<unsigned>) == sizeof(unsigned), "futex on gen_");

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
