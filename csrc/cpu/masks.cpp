// The random masks of zoneout, recurrent dropout and weight drop (MaskParams in
// common/rnn_params.h): element k of a mask is a keyed hash of its index compared with a
// threshold, so any thread (and torch ops elsewhere: fastrnn/regularized.py `_mask_bits`)
// computes the same mask from one seed drawn from torch's generator. Here the mask is
// filled by the thread team, a vectorisable loop of 32-bit multiplies per element.
#include <algorithm>
#include <cstdint>

#include "cpu/fused_gemm.h"
#include "cpu/kernels.h"

namespace fastrnn {
namespace cpu {
namespace FASTRNN_ISA {
namespace {

// A 32-bit mixer (xor-shift-multiply, the "lowbias32" constants): a bijection of uint32
// whose every output bit depends on every input bit.
FASTRNN_INLINE uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

}  // namespace

// One run of indices with the same high word (locals only, so that the loop vectorises:
// nothing it reads can alias the mask it writes).
template <typename scalar_t>
static void fill_run(scalar_t* __restrict out, int64_t run, uint32_t lo0, uint32_t hi, uint32_t k0, uint32_t k1,
                     uint64_t thr, scalar_t on) {
  // bits < thr with thr in [0, 2^32]: all where thr = 2^32
  const bool all = thr > 0xffffffffULL;
  const uint32_t t32 = static_cast<uint32_t>(all ? 0xffffffffULL : thr);
  for (int64_t j = 0; j < run; ++j) {
    const uint32_t bits = mix32(mix32(mix32((lo0 + static_cast<uint32_t>(j)) ^ k0) ^ k1) ^ hi);
    out[j] = (all || bits < t32) ? on : scalar_t(0);
  }
}

template <typename scalar_t>
void bernoulli_mask(const MaskParams<scalar_t>& a) {
  const uint32_t k0 = static_cast<uint32_t>(a.seed), k1 = static_cast<uint32_t>(a.seed >> 32);
  run_team(a.num_threads, [&](int tid, int nthr, TeamBarrier*) {
    int64_t k = a.n * tid / nthr;
    const int64_t end = a.n * (tid + 1) / nthr;
    while (k < end) {
      // a run of indices with the same high word: bits = mix(mix(mix(lo ^ k0) ^ k1) ^ hi)
      const uint64_t i0 = static_cast<uint64_t>(a.offset + k);
      const uint32_t hi = static_cast<uint32_t>(i0 >> 32);
      const int64_t run = std::min<int64_t>(end - k, static_cast<int64_t>((uint64_t(1) << 32) - (i0 & 0xffffffffU)));
      fill_run<scalar_t>(a.out + k, run, static_cast<uint32_t>(i0), hi, k0, k1, a.threshold, a.on);
      k += run;
    }
  });
}

FASTRNN_INSTANTIATE(bernoulli_mask, MaskParams)

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
