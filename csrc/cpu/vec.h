// Portable SIMD vectors (GCC/Clang vector extensions) and the activations the
// kernels need. The width follows the instruction set this translation unit is
// compiled for (FASTRNN_ISA_avx512: 64 bytes, avx2: 32, generic: 16 = SSE2), so
// one source gives every ISA; dispatch.cpp picks the build at run time.
//
// exp is range-reduced (x = n ln2 + r, |r| <= ln2/2) with a Taylor polynomial
// long enough for each type: degree 7 for float (error < 1e-8 relative),
// degree 12 for double (about 2e-16), so results match torch's to rounding.
// NaN propagates through every function, as in torch.
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define FASTRNN_INLINE static inline __attribute__((always_inline))

namespace fastrnn {
namespace cpu {
// Everything here depends on the instruction set this translation unit is compiled for
// (the vector width above all), so it lives in that ISA's namespace: the same template
// instantiated by two ISA builds would otherwise be one linker symbol, and every ISA
// would run whichever build's packing the linker kept.
namespace FASTRNN_ISA {

#if defined(FASTRNN_ISA_avx512)
constexpr int kVecBytes = 64;
constexpr int kVecRegs = 32;
#elif defined(FASTRNN_ISA_avx2)
constexpr int kVecBytes = 32;
constexpr int kVecRegs = 16;
#else
constexpr int kVecBytes = 16;
constexpr int kVecRegs = 16;
#endif

template <typename scalar_t>
struct Vec;

template <>
struct Vec<float> {
  typedef float V __attribute__((vector_size(kVecBytes)));
  typedef int32_t I __attribute__((vector_size(kVecBytes)));
  static constexpr int W = kVecBytes / 4;
};

template <>
struct Vec<double> {
  typedef double V __attribute__((vector_size(kVecBytes)));
  typedef int64_t I __attribute__((vector_size(kVecBytes)));
  static constexpr int W = kVecBytes / 8;
};

template <typename scalar_t>
using vec_t = typename Vec<scalar_t>::V;

template <typename scalar_t>
FASTRNN_INLINE vec_t<scalar_t> vzero() {
  return vec_t<scalar_t>{};
}
template <typename scalar_t>
FASTRNN_INLINE vec_t<scalar_t> vset(scalar_t s) {
  // One broadcast instruction (`vec_t<scalar_t>{} + s` would add 0.0 first: -0.0 forbids folding it).
#if defined(__x86_64__) && defined(FASTRNN_ISA_avx512)
  if constexpr (sizeof(scalar_t) == 4) return (vec_t<scalar_t>)_mm512_set1_ps(s); else return (vec_t<scalar_t>)_mm512_set1_pd(s);
#elif defined(__x86_64__) && defined(FASTRNN_ISA_avx2)
  if constexpr (sizeof(scalar_t) == 4) return (vec_t<scalar_t>)_mm256_set1_ps(s); else return (vec_t<scalar_t>)_mm256_set1_pd(s);
#elif defined(__x86_64__)
  if constexpr (sizeof(scalar_t) == 4) return (vec_t<scalar_t>)_mm_set1_ps(s); else return (vec_t<scalar_t>)_mm_set1_pd(s);
#else
  vec_t<scalar_t> v;
  for (int i = 0; i < Vec<scalar_t>::W; ++i) v[i] = s;
  return v;
#endif
}
template <typename scalar_t>
FASTRNN_INLINE vec_t<scalar_t> vload(const scalar_t* p) {
  vec_t<scalar_t> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename scalar_t>
FASTRNN_INLINE void vstore(scalar_t* p, vec_t<scalar_t> v) {
  std::memcpy(p, &v, sizeof(v));
}
// Partial vectors (the last block of hidden units when H % W != 0): lanes past
// `cnt` read as zero and are never written.
template <typename scalar_t>
FASTRNN_INLINE vec_t<scalar_t> vload_n(const scalar_t* p, int cnt) {
  constexpr int W = Vec<scalar_t>::W;
  if (cnt == W) return vload(p);
#if defined(__x86_64__) && defined(FASTRNN_ISA_avx512)
  // one masked load (masked-off lanes read as zero and never fault)
  if constexpr (sizeof(scalar_t) == 4)
    return (vec_t<scalar_t>)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << cnt) - 1), p);
  else
    return (vec_t<scalar_t>)_mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << cnt) - 1), p);
#endif
  scalar_t tmp[W] = {};
  for (int i = 0; i < cnt; ++i) tmp[i] = p[i];
  return vload(tmp);
}
template <typename scalar_t>
FASTRNN_INLINE void vstore_n(scalar_t* p, vec_t<scalar_t> v, int cnt) {
  constexpr int W = Vec<scalar_t>::W;
  if (cnt == W) {
    vstore(p, v);
    return;
  }
#if defined(__x86_64__) && defined(FASTRNN_ISA_avx512)
  if constexpr (sizeof(scalar_t) == 4)
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << cnt) - 1), (__m512)v);
  else
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << cnt) - 1), (__m512d)v);
  return;
#endif
  scalar_t tmp[W];
  vstore(tmp, v);
  for (int i = 0; i < cnt; ++i) p[i] = tmp[i];
}

// Denormal (subnormal) floats flushed to zero, inputs and results, while in scope (x86:
// MXCSR's FTZ and DAZ bits; restored on exit). Every kernel thread holds one: gradients that
// vanish back through a long sequence reach the denormal range, where each arithmetic
// instruction on them takes on the order of 100 cycles on Intel cores, enough to make a
// long-sequence training step many times slower, in these kernels and in the GEMMs that
// consume their gradients. Values below 1.2e-38 (float) / 2.2e-308 (double)
// become 0, as in TensorFlow's CPU kernels.
class FlushDenormals {
 public:
#if defined(__x86_64__)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved_); }
 private:
  unsigned saved_;
#endif
};

// Each float lane rounded to bfloat16 and widened back (torch's Tensor.to(torch.bfloat16):
// round to nearest even, every NaN the quiet NaN 0x7FC0), in integer lanes: autocast's
// rounding of a matmul's operands where a float32 kernel reads them.
template <typename scalar_t>
FASTRNN_INLINE vec_t<scalar_t> vround_bf16(vec_t<scalar_t> v) {
  static_assert(sizeof(scalar_t) == 4, "bfloat16 rounding is for float lanes");
  typedef uint32_t U __attribute__((vector_size(kVecBytes)));
  const U u = (U)v;
  const U r = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  const U nan = (U)((u & 0x7FFFFFFFu) > 0x7F800000u);  // all ones where NaN
  return (vec_t<scalar_t>)((r & ~nan) | (nan & 0x7FC00000u));
}

// cnt (<= W) bfloat16 values (their bits) as float lanes, exactly (a bfloat16 is the upper
// half of a float); lanes past cnt are zero.
FASTRNN_INLINE vec_t<float> vwiden_bf16(const uint16_t* p, int cnt = Vec<float>::W) {
  typedef uint16_t H16 __attribute__((vector_size(kVecBytes / 2)));
  typedef uint32_t U32 __attribute__((vector_size(kVecBytes)));
  H16 b{};
  std::memcpy(&b, p, static_cast<size_t>(cnt) * sizeof(uint16_t));
  return (vec_t<float>)(__builtin_convertvector(b, U32) << 16);
}

// The sum of a vector's lanes.
template <typename scalar_t>
FASTRNN_INLINE scalar_t vhsum(vec_t<scalar_t> v) {
#if defined(__x86_64__) && defined(FASTRNN_ISA_avx512)
  if constexpr (sizeof(scalar_t) == 4) return _mm512_reduce_add_ps((__m512)v); else return _mm512_reduce_add_pd((__m512d)v);
#else
  scalar_t s = scalar_t(0);
  for (int i = 0; i < Vec<scalar_t>::W; ++i) s += v[i];
  return s;
#endif
}

template <typename scalar_t>
struct ExpConsts;
template <>
struct ExpConsts<float> {
  static constexpr float lo = -87.3f, hi = 88.3f;
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  static constexpr float magic = 12582912.0f;  // 1.5 * 2^23: round-to-int trick
  static constexpr int mant = 23, bias = 127;
};
template <>
struct ExpConsts<double> {
  static constexpr double lo = -708.0, hi = 709.0;
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  static constexpr double magic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr int mant = 52, bias = 1023;
};

template <typename scalar_t>
FASTRNN_INLINE vec_t<scalar_t> exp_poly(vec_t<scalar_t> r) {
  if constexpr (sizeof(scalar_t) == 4) {
    vec_t<scalar_t> p = vset<scalar_t>(1.0f / 5040);
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p;
  } else {
    vec_t<scalar_t> p = vset<scalar_t>(1.0 / 479001600.0);  // 1/12!
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    return p;
  }
}

template <typename scalar_t>
FASTRNN_INLINE vec_t<scalar_t> vexp(vec_t<scalar_t> x) {
  using C = ExpConsts<scalar_t>;
  using V = vec_t<scalar_t>;
  using I = typename Vec<scalar_t>::I;
  const V lo = vset<scalar_t>(C::lo), hi = vset<scalar_t>(C::hi), magic = vset<scalar_t>(C::magic);
  x = x < lo ? lo : x;  // comparisons are false for NaN: NaN passes through
  x = x > hi ? hi : x;
  V t = x * C::log2e + magic;  // low mantissa bits of t hold n = round(x log2e)
  V n = t - magic;
  V r = x - n * C::ln2_hi;
  r = r - n * C::ln2_lo;
  V p = exp_poly<scalar_t>(r);
  I ni = (I)t - (I)magic;
  I scale = (ni + C::bias) << C::mant;
  return p * (V)scale;
}

template <typename scalar_t>
FASTRNN_INLINE vec_t<scalar_t> vsigmoid(vec_t<scalar_t> x) {
  return (scalar_t)1 / ((scalar_t)1 + vexp<scalar_t>(-x));
}

template <typename scalar_t>
FASTRNN_INLINE vec_t<scalar_t> vtanh(vec_t<scalar_t> x) {
  using V = vec_t<scalar_t>;
  using I = typename Vec<scalar_t>::I;
  const I sign = (I)vset<scalar_t>((scalar_t)-0.0);
  V a = (V)((I)x & ~sign);
  V e = vexp<scalar_t>(a * (scalar_t)-2);
  V t = ((scalar_t)1 - e) / ((scalar_t)1 + e);
  return (V)((I)t | ((I)x & sign));
}

template <typename scalar_t>
FASTRNN_INLINE vec_t<scalar_t> vrelu(vec_t<scalar_t> x) {
  return x < vzero<scalar_t>() ? vzero<scalar_t>() : x;  // keeps NaN, like torch.relu
}

}  // namespace FASTRNN_ISA
}  // namespace cpu
}  // namespace fastrnn
