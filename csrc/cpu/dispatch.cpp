// Run-time choice of the CPU kernel build: the widest instruction set both
// compiled in and supported by this processor, unless set_isa() says otherwise.
#include "cpu/dispatch.h"

#include <omp.h>

#include <stdexcept>
#include <string>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu/bf16.h"
#include "cpu/kernels.h"

#if defined(FASTRNN_HAVE_avx512bf16)
namespace fastrnn {
namespace cpu {
namespace avx512bf16 {
void bf16_seq_forward(const Bf16SeqParams& p);
void bf16_seq_backward(const Bf16BackParams& p);
}
}  // namespace cpu
}  // namespace fastrnn
#endif

namespace fastrnn {
namespace cpu {
namespace {

#if defined(__x86_64__)
// AMX-TILE and AMX-BF16 (CPUID leaf 7: EDX bits 24 and 22), and the kernel's permission to use
// the tile data (Linux asks each process to request it: arch_prctl(ARCH_REQ_XCOMP_PERM,
// XFEATURE_XTILEDATA); oneDNN requests it too). Asked once.
bool cpu_has_amx() {
  static const bool has = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!((d >> 24) & 1u) || !((d >> 22) & 1u)) return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
    constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
#else
    return false;
#endif
  }();
  return has;
}
#endif

bool cpu_has(const std::string& isa) {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (isa == "amxbf16") return cpu_has("avx512bf16") && cpu_has_amx();
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("fma");
  if (isa == "avx512bf16") return cpu_has("avx512") && __builtin_cpu_supports("avx512bf16");
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return isa == "generic";
}

bool compiled_in(const std::string& isa) {
#if defined(FASTRNN_HAVE_avx512bf16) && defined(FASTRNN_HAVE_AMX)
  if (isa == "amxbf16") return true;
#endif
#if defined(FASTRNN_HAVE_avx512bf16)
  if (isa == "avx512bf16") return true;
#endif
#if defined(FASTRNN_HAVE_avx512)
  if (isa == "avx512") return true;
#endif
#if defined(FASTRNN_HAVE_avx2)
  if (isa == "avx2") return true;
#endif
  return isa == "generic";
}

std::string best_isa() {
  for (const char* isa : {"amxbf16", "avx512bf16", "avx512", "avx2"})
    if (compiled_in(isa) && cpu_has(isa)) return isa;
  return "generic";
}

std::string& current() {
  static std::string isa = best_isa();
  return isa;
}

}  // namespace

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const char* isa : {"amxbf16", "avx512bf16", "avx512", "avx2", "generic"})
    if (compiled_in(isa) && cpu_has(isa)) out.push_back(isa);
  return out;
}

std::string isa() { return current(); }

void set_isa(const std::string& name) {
  const std::string isa = name.empty() || name == "auto" ? best_isa() : name;
  if (isa != "amxbf16" && isa != "avx512bf16" && isa != "avx512" && isa != "avx2" && isa != "generic")
    throw std::invalid_argument(
        "isa must be 'auto', 'amxbf16', 'avx512bf16', 'avx512', 'avx2' or 'generic', got '" + name + "'");
  if (!compiled_in(isa)) throw std::invalid_argument("isa '" + isa + "' is not compiled into this build");
  if (!cpu_has(isa)) throw std::invalid_argument("this processor does not support isa '" + isa + "'");
  current() = isa;
}

#define FASTRNN_DISPATCH(fn, Params)                                       \
  template <typename scalar_t>                                                     \
  void fn(const Params<scalar_t>& p) {                                             \
    const std::string& isa = current();                                     \
    if (isa == "avx512" || isa == "avx512bf16" || isa == "amxbf16") return avx512_call(fn, p);  \
    if (isa == "avx2") return avx2_call(fn, p);                             \
    return generic::fn<scalar_t>(p);                                               \
  }                                                                         \
  template void fn<float>(const Params<float>&);                            \
  template void fn<double>(const Params<double>&);

#if defined(FASTRNN_HAVE_avx512)
#define avx512_call(fn, p) avx512::fn<scalar_t>(p)
#else
#define avx512_call(fn, p) generic::fn<scalar_t>(p)
#endif
#if defined(FASTRNN_HAVE_avx2)
#define avx2_call(fn, p) avx2::fn<scalar_t>(p)
#else
#define avx2_call(fn, p) generic::fn<scalar_t>(p)
#endif

FASTRNN_DISPATCH(lstm_forward, LstmForwardParams)
FASTRNN_DISPATCH(lstm_backward, LstmBackwardParams)
FASTRNN_DISPATCH(gru_forward, GruForwardParams)
FASTRNN_DISPATCH(gru_backward, GruBackwardParams)
FASTRNN_DISPATCH(rnn_forward, RnnForwardParams)
FASTRNN_DISPATCH(rnn_backward, RnnBackwardParams)
FASTRNN_DISPATCH(cell_forward, CellForwardParams)
FASTRNN_DISPATCH(cell_backward, CellBackwardParams)
FASTRNN_DISPATCH(reg_forward, RegForwardParams)
FASTRNN_DISPATCH(reg_backward, RegBackwardParams)
FASTRNN_DISPATCH(ln_forward, LnForwardParams)
FASTRNN_DISPATCH(ln_backward, LnBackwardParams)
FASTRNN_DISPATCH(bernoulli_mask, MaskParams)

// avx512bf16 is the avx512 build of the float kernels plus the bfloat16 sequence kernels;
// amxbf16 the same with the sequence kernels' recurrent GEMMs on AMX-BF16 tiles.
bool bf16_kernels_available() { return current() == "avx512bf16" || current() == "amxbf16"; }

void bf16_seq_forward(const Bf16SeqParams& p) {
#if defined(FASTRNN_HAVE_avx512bf16)
  if (bf16_kernels_available()) {
    Bf16SeqParams q = p;
    q.amx = current() == "amxbf16";
    return avx512bf16::bf16_seq_forward(q);
  }
#endif
  (void)p;
  throw std::invalid_argument("the bfloat16 sequence kernels need the 'avx512bf16' build (see isa())");
}

void bf16_seq_backward(const Bf16BackParams& p) {
#if defined(FASTRNN_HAVE_avx512bf16)
  if (bf16_kernels_available()) {
    Bf16BackParams q = p;
    q.amx = current() == "amxbf16";
    return avx512bf16::bf16_seq_backward(q);
  }
#endif
  (void)p;
  throw std::invalid_argument("the bfloat16 sequence kernels need the 'avx512bf16' build (see isa())");
}

void team_flush_denormals(int threads, bool on) {
#if defined(__x86_64__)
  if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    thread_local unsigned saved = 0;
    thread_local int depth = 0;
    if (on) {
      if (depth++ == 0) {
        saved = _mm_getcsr();
        _mm_setcsr(saved | 0x8040u);  // FTZ | DAZ
      }
    } else if (depth > 0 && --depth == 0) {
      _mm_setcsr(saved);
    }
  }
#else
  (void)threads;
  (void)on;
#endif
}

}  // namespace cpu
}  // namespace fastrnn
