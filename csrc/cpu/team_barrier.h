// The spinning, then sleeping, barrier of a kernel's thread team (fused_gemm.h's phases).
#pragma once
#include <algorithm>
#include <atomic>
#include <climits>
#include <thread>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu/vec.h"  // FASTRNN_ISA

namespace fastrnn {
namespace cpu {
// Depends on the instruction set this translation unit is compiled for (the vector width
// above all), so it lives in that ISA's namespace: the same template instantiated by two
// ISA builds would otherwise be one linker symbol (see fused_gemm.h).
namespace FASTRNN_ISA {

// The barrier between a kernel's dependent phases (one or two per time step when the
// threads split the weights, i.e. at small batches), cheaper than `#pragma omp barrier`:
// about one cache-line round trip between the cores, which at batch 1 is a visible share
// of a step. Centralised: the last thread to arrive resets the count and
// bumps the generation, which the others wait on. Release/acquire on the count and the
// generation publish every thread's writes of the phase to all threads of the next.
//
// Waiting spins, then sleeps on a futex (Linux; elsewhere it yields), like libgomp's own
// barrier: 300,000 PAUSEs (about a millisecond), or 1,000 when the team has more threads
// than the machine has CPUs, so that an oversubscribed waiter gives its CPU back to the
// thread it waits for. Sleepers are counted, so the common case (every thread arrives
// within the spin) makes no system call.
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

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
