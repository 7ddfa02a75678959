// fastrnn._C: the CPU kernels for Python. Thin: it takes sizes and raw data
// pointers (tensor.data_ptr()) from fastrnn/backends/cpu.py, which has already
// validated shapes, dtypes, contiguity and allocated every output, checks the
// few invariants a kernel would otherwise read out of bounds on, and runs the
// kernel with the GIL released. No torch headers: one build serves every torch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/buffer_pool.h"
#include "cpu/pack_cache.h"
#include "cpu/bf16.h"
#include "cpu/dispatch.h"

namespace py = pybind11;
using fastrnn::CellBackwardParams;
using fastrnn::CellForwardParams;
using fastrnn::GruBackwardParams;
using fastrnn::GruForwardParams;
using fastrnn::LstmBackwardParams;
using fastrnn::LstmForwardParams;
using fastrnn::LnForwardParams;
using fastrnn::LnBackwardParams;
using fastrnn::MaskParams;
using fastrnn::RegBackwardParams;
using fastrnn::RegForwardParams;
using fastrnn::RnnBackwardParams;
using fastrnn::RnnForwardParams;

namespace {

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void check_sizes(int64_t T, int64_t N, int64_t H, int64_t R, int num_threads) {
  if (T < 1 || N < 1 || H < 1 || R < 1)
    throw std::invalid_argument("fastrnn._C: T, N, H and R must all be >= 1, got T=" + std::to_string(T) +
                                " N=" + std::to_string(N) + " H=" + std::to_string(H) +
                                " R=" + std::to_string(R));
  if (num_threads < 1) throw std::invalid_argument("fastrnn._C: num_threads must be >= 1");
}

void check_lengths(std::uintptr_t lengths, int64_t T, int64_t N) {
  if (!lengths) return;
  const int64_t* l = ptr<const int64_t>(lengths);
  for (int64_t n = 0; n < N; ++n)
    if (l[n] < 1 || l[n] > T)
      throw std::invalid_argument("fastrnn._C: lengths[" + std::to_string(n) + "] = " + std::to_string(l[n]) +
                                  " is outside [1, T=" + std::to_string(T) + "]");
}

// Calls fn<float> or fn<double> by element size.
template <template <typename> class Params, typename F32, typename F64, typename Fill>
void run(int itemsize, F32 f32, F64 f64, Fill fill) {
  if (itemsize == 4) {
    Params<float> p{};
    fill(p);
    py::gil_scoped_release release;
    f32(p);
  } else if (itemsize == 8) {
    Params<double> p{};
    fill(p);
    py::gil_scoped_release release;
    f64(p);
  } else {
    throw std::invalid_argument("fastrnn._C: only float32 and float64 are supported on the CPU");
  }
}

// DLPack (the stable C ABI every array library exchanges tensors through), only what
// a CPU float tensor needs.
struct DLDevice {
  int32_t device_type;  // 1: CPU
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // 2: float
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // nullptr: compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

struct PooledTensor {
  DLManagedTensor managed;
  std::vector<int64_t> shape;
  size_t bytes;
  size_t capacity;  // of the pool block
};

void pooled_deleter(DLManagedTensor* self) {
  auto* t = static_cast<PooledTensor*>(self->manager_ctx);
  fastrnn::cpu::pool_put(self->dl_tensor.data, t->capacity);
  delete t;
}

void capsule_destructor(PyObject* capsule) {
  // A capsule torch consumed is renamed "used_dltensor"; only an unconsumed one owns the block.
  if (PyCapsule_IsValid(capsule, "dltensor")) {
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
    m->deleter(m);
  }
}

// An uninitialised float tensor from the pool, as a DLPack capsule for torch.from_dlpack.
py::object pooled_empty(const std::vector<int64_t>& shape, int itemsize) {
  if (itemsize != 4 && itemsize != 8) throw std::invalid_argument("pooled_empty: itemsize must be 4 or 8");
  size_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) throw std::invalid_argument("pooled_empty: negative dimension");
    numel *= static_cast<size_t>(d);
  }
  auto* t = new PooledTensor();
  t->shape = shape;
  t->bytes = numel * static_cast<size_t>(itemsize);
  try {
    t->managed.dl_tensor.data = fastrnn::cpu::pool_get(t->bytes, &t->capacity);
  } catch (...) {
    delete t;
    throw;
  }
  t->managed.dl_tensor.device = {1, 0};
  t->managed.dl_tensor.ndim = static_cast<int32_t>(shape.size());
  t->managed.dl_tensor.dtype = {2, static_cast<uint8_t>(itemsize * 8), 1};
  t->managed.dl_tensor.shape = t->shape.data();
  t->managed.dl_tensor.strides = nullptr;
  t->managed.dl_tensor.byte_offset = 0;
  t->managed.manager_ctx = t;
  t->managed.deleter = pooled_deleter;
  PyObject* capsule = PyCapsule_New(&t->managed, "dltensor", capsule_destructor);
  if (!capsule) {
    pooled_deleter(&t->managed);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(capsule);
}


// bfloat16 <-> float32 for the bfloat16 step path (cell_forward_bf16): torch's bits (bf16.h).
using fastrnn::cpu::bf16_round;
using fastrnn::cpu::bf16_widen;

void check_cell(int cell) {
  if (cell < fastrnn::kCellLstm || cell > fastrnn::kCellRnnRelu)
    throw std::invalid_argument("fastrnn._C: cell must be 0 (LSTM), 1 (GRU), 2 (RNN tanh) or 3 (RNN relu), got " +
                                std::to_string(cell));
}

void require(std::uintptr_t p, const char* what) {
  if (!p) throw std::invalid_argument(std::string("fastrnn._C: ") + what + " is required");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastrnn fused CPU kernels (see csrc/common/rnn_params.h for the pointer shapes)";
  m.attr("__version__") = FASTRNN_VERSION;
  m.def("isa", &fastrnn::cpu::isa, "the instruction set build in use");
  m.def("set_isa", &fastrnn::cpu::set_isa, py::arg("name"));
  m.def("supported_isas", &fastrnn::cpu::supported_isas);
  m.def(
      "same_bytes",
      [](std::uintptr_t a, std::uintptr_t b, int64_t nbytes) {
        // whether two buffers hold the same bytes (a converted-weight cache's hit check)
        if (nbytes < 0) throw std::invalid_argument("same_bytes: nbytes must be >= 0");
        if (nbytes == 0) return true;
        require(a, "a");
        require(b, "b");
        return std::memcmp(ptr<const void>(a), ptr<const void>(b), static_cast<size_t>(nbytes)) == 0;
      },
      "memcmp(a, b, nbytes) == 0", py::arg("a"), py::arg("b"), py::arg("nbytes"));
  m.def(
      "bf16_widen_add",
      [](std::uintptr_t src, std::uintptr_t bias, std::uintptr_t out, int64_t rows, int64_t cols, int num_threads) {
        // out[r, c] = float(src[r, c]) + bias[c]: a bfloat16 GEMM's result [rows, cols] widened
        // into float32 with the bias added in one pass (what out.copy_(src) then out.add_(bias)
        // computes, bit for bit, in two)
        if (rows < 0 || cols < 0) throw std::invalid_argument("bf16_widen_add: rows and cols must be >= 0");
        if (num_threads < 1) throw std::invalid_argument("bf16_widen_add: num_threads must be >= 1");
        if (rows == 0 || cols == 0) return;
        require(src, "src");
        require(out, "out");
        const uint16_t* s = ptr<const uint16_t>(src);
        const float* b = ptr<const float>(bias);
        float* o = ptr<float>(out);
        py::gil_scoped_release release;
#pragma omp parallel for num_threads(num_threads) schedule(static) if (rows * cols >= (1 << 16))
        for (int64_t r = 0; r < rows; ++r) {
          const uint16_t* sr = s + r * cols;
          float* orow = o + r * cols;
          if (b)
            for (int64_t c = 0; c < cols; ++c) orow[c] = bf16_widen(sr[c]) + b[c];
          else
            for (int64_t c = 0; c < cols; ++c) orow[c] = bf16_widen(sr[c]);
        }
      },
      "out = float32(src) + bias over [rows, cols] (bias [cols] or 0)", py::arg("src"), py::arg("bias"),
      py::arg("out"), py::arg("rows"), py::arg("cols"), py::arg("num_threads"));
  m.def("bf16_available", &fastrnn::cpu::bf16_kernels_available,
        "whether the bfloat16 sequence kernels run (the 'avx512bf16' build is in use)");
  m.def(
      "bf16_seq_forward",
      [](int kind, int64_t T, int64_t N, int64_t H, std::uintptr_t xg, bool xg_bf16, std::uintptr_t h0,
         std::uintptr_t c0, std::uintptr_t w_hh, std::uintptr_t b_hh, std::uintptr_t w_ch, std::uintptr_t lengths,
         bool reverse, std::uintptr_t y, std::uintptr_t hn, std::uintptr_t cn, int num_threads,
         std::uintptr_t y32, std::uintptr_t gates, std::uintptr_t cs, std::uintptr_t x, int64_t I,
         std::uintptr_t w_ih, std::uintptr_t bias) {
        if (kind < fastrnn::cpu::kBf16Lstm || kind > fastrnn::cpu::kBf16RnnRelu)
          throw std::invalid_argument("bf16_seq_forward: kind must be 0 (LSTM), 1 (GRU), 2 (RNN tanh) or 3 (RNN relu)");
        check_sizes(T, N, H, H, num_threads);
        check_lengths(lengths, T, N);
        const bool lstm = kind == fastrnn::cpu::kBf16Lstm, gru = kind == fastrnn::cpu::kBf16Gru;
        for (auto [p, what] : {std::pair{h0, "h0"}, {w_hh, "w_hh"}, {hn, "hn"}}) require(p, what);
        if (x) {
          require(w_ih, "w_ih (with x)");
          if (gru)  // r multiplies only the n gate's h part: the projection cannot share its sum
            throw std::invalid_argument("bf16_seq_forward: the GRU takes xg, not x");
          if (I < 2 || I % 2) throw std::invalid_argument("bf16_seq_forward: I must be even and >= 2 with x");
        } else {
          require(xg, "xg (without x)");
        }
        if (!y && !y32) throw std::invalid_argument("bf16_seq_forward: y or y32 must be given");
        if (cs && !lstm) throw std::invalid_argument("bf16_seq_forward: cs is the LSTM's");
        if (gates && !(lstm || gru)) throw std::invalid_argument("bf16_seq_forward: gates are the LSTM's and GRU's");
        if (lstm) {
          require(c0, "c0 (LSTM)");
          require(cn, "cn (LSTM)");
        }
        if (gru) require(b_hh, "b_hh (GRU)");
        if (w_ch && !lstm) throw std::invalid_argument("bf16_seq_forward: peepholes (w_ch) are for the LSTM");
        fastrnn::cpu::Bf16SeqParams p{kind, T, N, H, reinterpret_cast<const void*>(xg), xg_bf16,
                                      ptr<const uint16_t>(x), I, ptr<const uint16_t>(w_ih), ptr<const float>(bias),
                                      ptr<const float>(h0), ptr<const float>(c0), ptr<const uint16_t>(w_hh),
                                      ptr<const float>(b_hh), ptr<const float>(w_ch), ptr<const int64_t>(lengths),
                                      reverse, ptr<uint16_t>(y), ptr<float>(hn), ptr<float>(cn), num_threads,
                                      ptr<float>(y32), ptr<float>(gates), ptr<float>(cs)};
        py::gil_scoped_release release;
        fastrnn::cpu::bf16_seq_forward(p);
      },
      "inference of one layer-direction in bfloat16 (csrc/cpu/bf16.h)", py::arg("kind"), py::arg("T"),
      py::arg("N"), py::arg("H"), py::arg("xg"), py::arg("xg_bf16"), py::arg("h0"), py::arg("c0"), py::arg("w_hh"),
      py::arg("b_hh"), py::arg("w_ch"), py::arg("lengths"), py::arg("reverse"), py::arg("y"), py::arg("hn"),
      py::arg("cn"), py::arg("num_threads"), py::arg("y32") = 0, py::arg("gates") = 0, py::arg("cs") = 0,
      py::arg("x") = 0, py::arg("I") = 0, py::arg("w_ih") = 0, py::arg("bias") = 0);
  m.def(
      "bf16_seq_backward",
      [](int kind, int64_t T, int64_t N, int64_t H, std::uintptr_t dy, std::uintptr_t dcn, std::uintptr_t h0,
         std::uintptr_t c0, std::uintptr_t w_hh, std::uintptr_t w_ch, std::uintptr_t lengths, bool reverse,
         std::uintptr_t y, std::uintptr_t gates, std::uintptr_t cs, std::uintptr_t dxg, std::uintptr_t dxg16,
         std::uintptr_t dh0, std::uintptr_t dc0, int num_threads, std::uintptr_t db, std::uintptr_t db_h) {
        if (kind < fastrnn::cpu::kBf16Lstm || kind > fastrnn::cpu::kBf16RnnRelu)
          throw std::invalid_argument("bf16_seq_backward: kind must be 0 (LSTM), 1 (GRU), 2 (RNN tanh) or 3 (RNN relu)");
        if (db_h && kind != fastrnn::cpu::kBf16Gru)
          throw std::invalid_argument("bf16_seq_backward: db_h (the hidden part's sums) is the GRU's");
        check_sizes(T, N, H, H, num_threads);
        check_lengths(lengths, T, N);
        const bool lstm = kind == fastrnn::cpu::kBf16Lstm, gru = kind == fastrnn::cpu::kBf16Gru;
        for (auto [p, what] : {std::pair{dy, "dy"}, {w_hh, "w_hh"}, {dxg, "dxg"}, {dh0, "dh0"}}) require(p, what);
        if (!lstm) require(y, "y (GRU, RNN)");
        if (lstm)
          for (auto [p, what] : {std::pair{dcn, "dcn (LSTM)"}, {c0, "c0 (LSTM)"}, {gates, "gates (LSTM)"},
                                 {cs, "cs (LSTM)"}, {dc0, "dc0 (LSTM)"}})
            require(p, what);
        if (gru) {
          require(h0, "h0 (GRU)");
          require(gates, "gates (GRU)");
        }
        if (w_ch && !lstm) throw std::invalid_argument("bf16_seq_backward: peepholes (w_ch) are for the LSTM");
        fastrnn::cpu::Bf16BackParams p{kind, T, N, H, ptr<const float>(dy), ptr<const float>(dcn),
                                       ptr<const float>(h0), ptr<const float>(c0), ptr<const uint16_t>(w_hh),
                                       ptr<const float>(w_ch), ptr<const int64_t>(lengths), reverse,
                                       ptr<const float>(y), ptr<const float>(gates), ptr<const float>(cs),
                                       ptr<float>(dxg), ptr<uint16_t>(dxg16), ptr<float>(dh0), ptr<float>(dc0),
                                       num_threads};
        p.db = ptr<float>(db);
        p.db_h = ptr<float>(db_h);
        py::gil_scoped_release release;
        fastrnn::cpu::bf16_seq_backward(p);
      },
      "the backward of one layer-direction with bfloat16 recurrent GEMMs (csrc/cpu/bf16.h)", py::arg("kind"),
      py::arg("T"), py::arg("N"), py::arg("H"), py::arg("dy"), py::arg("dcn"), py::arg("h0"), py::arg("c0"),
      py::arg("w_hh"), py::arg("w_ch"), py::arg("lengths"), py::arg("reverse"), py::arg("y"), py::arg("gates"),
      py::arg("cs"), py::arg("dxg"), py::arg("dxg16"), py::arg("dh0"), py::arg("dc0"), py::arg("num_threads"),
      py::arg("db") = 0, py::arg("db_h") = 0);
  m.def("team_flush_denormals", &fastrnn::cpu::team_flush_denormals, py::arg("threads"),
        py::arg("on"), "denormals flushed (on) or the saved mode restored (off) in every "
        "thread of the caller's OpenMP team (torch's intra-op threads and BLAS)");
  m.def("pooled_empty", &pooled_empty, py::arg("shape"), py::arg("itemsize"),
        "uninitialised tensor memory from fastrnn's CPU buffer pool, as a DLPack capsule");
  m.def("pool_cached_bytes", &fastrnn::cpu::pool_cached_bytes);
  m.def("pool_size_class", &fastrnn::cpu::pool_size_class, py::arg("bytes"),
        "the bytes a request of `bytes` is rounded up to");
  m.def("pool_limit", &fastrnn::cpu::pool_limit);
  m.def("pool_set_limit", &fastrnn::cpu::pool_set_limit, py::arg("bytes"));
  m.def("pool_release", &fastrnn::cpu::pool_release);
  m.def(
      "pack_cache_info",
      [] {
        py::dict d;
        d["bytes"] = fastrnn::cpu::pack_cache_bytes();
        d["entries"] = fastrnn::cpu::pack_cache_entries();
        d["limit"] = fastrnn::cpu::pack_cache_limit();
        d["hits"] = fastrnn::cpu::pack_cache_hits();
        d["misses"] = fastrnn::cpu::pack_cache_misses();
        return d;
      },
      "the packed-weight cache: bytes held, entries, limit, hits and misses since the last release");
  m.def("pack_cache_set_limit", &fastrnn::cpu::pack_cache_set_limit, py::arg("bytes"),
        "bytes of packed weights (and their source copies) kept across calls; 0 turns it off");
  m.def("pack_cache_release", &fastrnn::cpu::pack_cache_release);

  m.def(
      "lstm_forward",
      [](int itemsize, int64_t T, int64_t N, int64_t H, int64_t R, std::uintptr_t xg, std::uintptr_t h0,
         std::uintptr_t c0, std::uintptr_t w_hh, std::uintptr_t w_hr, std::uintptr_t lengths, bool reverse,
         std::uintptr_t y, std::uintptr_t cn, std::uintptr_t gates, std::uintptr_t cs, int num_threads,
         std::uintptr_t w_ch) {
        check_sizes(T, N, H, R, num_threads);
        check_lengths(lengths, T, N);
        if ((gates == 0) != (cs == 0)) throw std::invalid_argument("lstm_forward: gates and cs go together");
        if (!w_hr && R != H) throw std::invalid_argument("lstm_forward: R != H needs w_hr");
        auto fill = [&](auto& p) {
          using scalar_t = std::remove_pointer_t<decltype(p.y)>;
          p = {T, N, H, R, ptr<const scalar_t>(xg), ptr<const scalar_t>(h0), ptr<const scalar_t>(c0), ptr<const scalar_t>(w_hh),
               ptr<const scalar_t>(w_hr), ptr<const scalar_t>(w_ch), ptr<const int64_t>(lengths), reverse, ptr<scalar_t>(y), ptr<scalar_t>(cn),
               ptr<scalar_t>(gates), ptr<scalar_t>(cs), num_threads};
        };
        run<LstmForwardParams>(itemsize, fastrnn::cpu::lstm_forward<float>, fastrnn::cpu::lstm_forward<double>,
                               fill);
      },
      py::arg("itemsize"), py::arg("T"), py::arg("N"), py::arg("H"), py::arg("R"), py::arg("xg"), py::arg("h0"),
      py::arg("c0"), py::arg("w_hh"), py::arg("w_hr"), py::arg("lengths"), py::arg("reverse"), py::arg("y"),
      py::arg("cn"), py::arg("gates"), py::arg("cs"), py::arg("num_threads"), py::arg("w_ch") = 0);

  m.def(
      "reg_forward",
      [](int itemsize, int kind, int64_t T, int64_t N, int64_t H, std::uintptr_t xg, std::uintptr_t h0,
         std::uintptr_t c0, std::uintptr_t w_hh, std::uintptr_t b_hh, std::uintptr_t rd, std::uintptr_t zh,
         std::uintptr_t zc, double zh_p, double zc_p, std::uintptr_t lengths, bool reverse, std::uintptr_t y,
         std::uintptr_t cn, std::uintptr_t gates, std::uintptr_t cs, std::uintptr_t cand, int num_threads) {
        check_cell(kind);
        check_sizes(T, N, H, H, num_threads);
        check_lengths(lengths, T, N);
        const bool lstm = kind == fastrnn::kCellLstm, gru = kind == fastrnn::kCellGru;
        for (auto [p, what] : {std::pair{xg, "xg"}, {h0, "h0"}, {w_hh, "w_hh"}, {y, "y"}}) require(p, what);
        if (lstm) {
          require(c0, "c0 (LSTM)");
          require(cn, "cn (LSTM)");
        } else if (zc || zc_p != 0 || cs) {
          throw std::invalid_argument("reg_forward: zc, zc_p and cs are the LSTM's");
        }
        if (b_hh && !gru) throw std::invalid_argument("reg_forward: b_hh is the GRU's");
        if (gates && !(lstm || gru)) throw std::invalid_argument("reg_forward: gates are the LSTM's and GRU's");
        if (!(zh_p >= 0 && zh_p < 1) || !(zc_p >= 0 && zc_p < 1))
          throw std::invalid_argument("reg_forward: zh_p and zc_p must be in [0, 1)");
        auto fill = [&](auto& p) {
          using scalar_t = std::remove_pointer_t<decltype(p.y)>;
          p = {kind, T, N, H, ptr<const scalar_t>(xg), ptr<const scalar_t>(h0), ptr<const scalar_t>(c0),
               ptr<const scalar_t>(w_hh), ptr<const scalar_t>(b_hh), ptr<const scalar_t>(rd), ptr<const scalar_t>(zh),
               ptr<const scalar_t>(zc), static_cast<scalar_t>(zh_p), static_cast<scalar_t>(zc_p),
               ptr<const int64_t>(lengths), reverse, ptr<scalar_t>(y), ptr<scalar_t>(cn), ptr<scalar_t>(gates),
               ptr<scalar_t>(cs), ptr<scalar_t>(cand), num_threads};
        };
        run<RegForwardParams>(itemsize, fastrnn::cpu::reg_forward<float>, fastrnn::cpu::reg_forward<double>, fill);
      },
      "the zoneout / recurrent-dropout recurrence of one layer-direction (RegForwardParams)",
      py::arg("itemsize"), py::arg("kind"), py::arg("T"), py::arg("N"), py::arg("H"), py::arg("xg"), py::arg("h0"),
      py::arg("c0"), py::arg("w_hh"), py::arg("b_hh"), py::arg("rd"), py::arg("zh"), py::arg("zc"), py::arg("zh_p"),
      py::arg("zc_p"), py::arg("lengths"), py::arg("reverse"), py::arg("y"), py::arg("cn"), py::arg("gates"),
      py::arg("cs"), py::arg("cand"), py::arg("num_threads"));

  m.def(
      "bernoulli_mask",
      [](int itemsize, uint64_t seed, int64_t offset, int64_t n, uint64_t threshold, double on, std::uintptr_t out,
         int num_threads) {
        if (seed >> 63) throw std::invalid_argument("bernoulli_mask: seed must be below 2^63");
        if (offset < 0 || n < 0) throw std::invalid_argument("bernoulli_mask: offset and n must be >= 0");
        if (threshold > (uint64_t(1) << 32)) throw std::invalid_argument("bernoulli_mask: threshold must be <= 2^32");
        if (num_threads < 1) throw std::invalid_argument("bernoulli_mask: num_threads must be >= 1");
        if (n > 0) require(out, "out");
        auto fill = [&](auto& p) {
          using scalar_t = std::remove_pointer_t<decltype(p.out)>;
          p = {seed, offset, n, threshold, static_cast<scalar_t>(on), ptr<scalar_t>(out), num_threads};
        };
        run<MaskParams>(itemsize, fastrnn::cpu::bernoulli_mask<float>, fastrnn::cpu::bernoulli_mask<double>, fill);
      },
      "a Bernoulli mask from a keyed hash of each element's index (MaskParams)", py::arg("itemsize"),
      py::arg("seed"), py::arg("offset"), py::arg("n"), py::arg("threshold"), py::arg("on"), py::arg("out"),
      py::arg("num_threads"));

  m.def(
      "ln_forward",
      [](int itemsize, int kind, int64_t T, int64_t N, int64_t H, std::uintptr_t ax, std::uintptr_t h0,
         std::uintptr_t c0, std::uintptr_t w_hh, std::uintptr_t g_hh, std::uintptr_t s_hh, std::uintptr_t g_c,
         std::uintptr_t s_c, double zh_p, double zc_p, double eps, std::uintptr_t lengths, bool reverse,
         std::uintptr_t y, std::uintptr_t cn, int num_threads, std::uintptr_t zhat, std::uintptr_t rstd_h,
         std::uintptr_t gates, std::uintptr_t chat, std::uintptr_t rstd_c, std::uintptr_t cs, std::uintptr_t g_ih,
         std::uintptr_t s_ih, std::uintptr_t zhat_x, std::uintptr_t rstd_x, std::uintptr_t rd, std::uintptr_t zh,
         std::uintptr_t zc) {
        if (kind != fastrnn::kCellLstm && kind != fastrnn::kCellGru)
          throw std::invalid_argument("ln_forward: kind must be 0 (LSTM) or 1 (GRU)");
        if ((zh && zh_p != 0) || (zc && zc_p != 0))
          throw std::invalid_argument("ln_forward: a zoneout mask (training) or its probability (eval), not both");
        if (zc && kind != fastrnn::kCellLstm) throw std::invalid_argument("ln_forward: zc is the LSTM's");
        const bool records = gates != 0;
        if (records) {
          if (zh_p != 0 || zc_p != 0)
            throw std::invalid_argument("ln_forward: the training records are for zh_p = zc_p = 0");
          for (auto [p, what] : {std::pair{zhat, "zhat"}, {rstd_h, "rstd_h"}}) require(p, what);
          if (kind == fastrnn::kCellLstm)
            for (auto [p, what] : {std::pair{chat, "chat (LSTM)"}, {rstd_c, "rstd_c (LSTM)"}, {cs, "cs (LSTM)"}})
              require(p, what);
          if (g_ih)
            for (auto [p, what] : {std::pair{zhat_x, "zhat_x (with g_ih)"}, {rstd_x, "rstd_x (with g_ih)"}})
              require(p, what);
        }
        if ((g_ih == 0) != (s_ih == 0)) throw std::invalid_argument("ln_forward: g_ih and s_ih go together");
        check_sizes(T, N, H, H, num_threads);
        check_lengths(lengths, T, N);
        const bool lstm = kind == fastrnn::kCellLstm;
        for (auto [p, what] : {std::pair{ax, "ax"}, {h0, "h0"}, {w_hh, "w_hh"}, {g_hh, "g_hh"}, {s_hh, "s_hh"},
                               {y, "y"}})
          require(p, what);
        if (lstm)
          for (auto [p, what] : {std::pair{c0, "c0 (LSTM)"}, {g_c, "g_c (LSTM)"}, {s_c, "s_c (LSTM)"},
                                 {cn, "cn (LSTM)"}})
            require(p, what);
        else if (zc_p != 0)
          throw std::invalid_argument("ln_forward: zc_p is the LSTM's");
        if (!(zh_p >= 0 && zh_p < 1) || !(zc_p >= 0 && zc_p < 1) || !(eps > 0))
          throw std::invalid_argument("ln_forward: zh_p and zc_p must be in [0, 1) and eps > 0");
        auto fill = [&](auto& p) {
          using scalar_t = std::remove_pointer_t<decltype(p.y)>;
          p = {kind, T, N, H, ptr<const scalar_t>(ax), ptr<const scalar_t>(h0), ptr<const scalar_t>(c0),
               ptr<const scalar_t>(w_hh), ptr<const scalar_t>(g_hh), ptr<const scalar_t>(s_hh),
               ptr<const scalar_t>(g_c), ptr<const scalar_t>(s_c), static_cast<scalar_t>(zh_p),
               static_cast<scalar_t>(zc_p), static_cast<scalar_t>(eps), ptr<const int64_t>(lengths), reverse,
               ptr<scalar_t>(y), ptr<scalar_t>(cn), num_threads};
          if (records) {
            p.zhat = ptr<scalar_t>(zhat);
            p.rstd_h = ptr<scalar_t>(rstd_h);
            p.gates = ptr<scalar_t>(gates);
            p.chat = ptr<scalar_t>(chat);
            p.rstd_c = ptr<scalar_t>(rstd_c);
            p.cs = ptr<scalar_t>(cs);
            p.zhat_x = ptr<scalar_t>(zhat_x);
            p.rstd_x = ptr<scalar_t>(rstd_x);
          }
          p.g_ih = ptr<const scalar_t>(g_ih);
          p.s_ih = ptr<const scalar_t>(s_ih);
          p.rd = ptr<const scalar_t>(rd);
          p.zh = ptr<const scalar_t>(zh);
          p.zc = ptr<const scalar_t>(zc);
        };
        run<LnForwardParams>(itemsize, fastrnn::cpu::ln_forward<float>, fastrnn::cpu::ln_forward<double>, fill);
      },
      "inference of a layer-normalised LSTM/GRU layer-direction (LnForwardParams)", py::arg("itemsize"),
      py::arg("kind"), py::arg("T"), py::arg("N"), py::arg("H"), py::arg("ax"), py::arg("h0"), py::arg("c0"),
      py::arg("w_hh"), py::arg("g_hh"), py::arg("s_hh"), py::arg("g_c"), py::arg("s_c"), py::arg("zh_p"),
      py::arg("zc_p"), py::arg("eps"), py::arg("lengths"), py::arg("reverse"), py::arg("y"), py::arg("cn"),
      py::arg("num_threads"), py::arg("zhat") = 0, py::arg("rstd_h") = 0, py::arg("gates") = 0,
      py::arg("chat") = 0, py::arg("rstd_c") = 0, py::arg("cs") = 0, py::arg("g_ih") = 0, py::arg("s_ih") = 0,
      py::arg("zhat_x") = 0, py::arg("rstd_x") = 0, py::arg("rd") = 0, py::arg("zh") = 0, py::arg("zc") = 0);

  m.def(
      "ln_backward",
      [](int itemsize, int kind, int64_t T, int64_t N, int64_t H, std::uintptr_t dy, std::uintptr_t dcn,
         std::uintptr_t h0, std::uintptr_t c0, std::uintptr_t w_hh, std::uintptr_t g_ih, std::uintptr_t g_hh,
         std::uintptr_t s_hh, std::uintptr_t g_c, std::uintptr_t s_c, std::uintptr_t lengths, bool reverse,
         std::uintptr_t y, std::uintptr_t zhat, std::uintptr_t rstd_h, std::uintptr_t gates, std::uintptr_t chat,
         std::uintptr_t rstd_c, std::uintptr_t cs, std::uintptr_t zhat_x, std::uintptr_t rstd_x,
         std::uintptr_t dax, std::uintptr_t dah, std::uintptr_t dh0, std::uintptr_t dc0, std::uintptr_t dg_ih,
         std::uintptr_t ds_ih, std::uintptr_t dg_hh, std::uintptr_t ds_hh, std::uintptr_t dg_c,
         std::uintptr_t ds_c, int num_threads, std::uintptr_t rd, std::uintptr_t zh, std::uintptr_t zc) {
        if (kind != fastrnn::kCellLstm && kind != fastrnn::kCellGru)
          throw std::invalid_argument("ln_backward: kind must be 0 (LSTM) or 1 (GRU)");
        if (zc && kind != fastrnn::kCellLstm) throw std::invalid_argument("ln_backward: zc is the LSTM's");
        check_sizes(T, N, H, H, num_threads);
        check_lengths(lengths, T, N);
        for (auto [p, what] : {std::pair{dy, "dy"}, {h0, "h0"}, {w_hh, "w_hh"}, {g_hh, "g_hh"}, {s_hh, "s_hh"},
                               {y, "y"}, {zhat, "zhat"}, {rstd_h, "rstd_h"}, {gates, "gates"}, {dax, "dax"},
                               {dah, "dah"}, {dh0, "dh0"}})
          require(p, what);
        if (kind == fastrnn::kCellLstm)
          for (auto [p, what] : {std::pair{dcn, "dcn (LSTM)"}, {c0, "c0 (LSTM)"}, {g_c, "g_c (LSTM)"},
                                 {s_c, "s_c (LSTM)"}, {chat, "chat (LSTM)"}, {rstd_c, "rstd_c (LSTM)"},
                                 {cs, "cs (LSTM)"}, {dc0, "dc0 (LSTM)"}})
            require(p, what);
        if (g_ih)
          for (auto [p, what] : {std::pair{zhat_x, "zhat_x (with g_ih)"}, {rstd_x, "rstd_x (with g_ih)"}})
            require(p, what);
        auto fill = [&](auto& p) {
          using scalar_t = std::remove_pointer_t<decltype(p.dax)>;
          auto in = [](std::uintptr_t q) { return ptr<const scalar_t>(q); };
          auto out = [](std::uintptr_t q) { return ptr<scalar_t>(q); };
          p = {kind, T, N, H, in(dy), in(dcn), in(h0), in(c0), in(w_hh), in(g_ih), in(g_hh), in(s_hh), in(g_c),
               in(s_c), ptr<const int64_t>(lengths), reverse, in(y), in(zhat), in(rstd_h), in(gates), in(chat),
               in(rstd_c), in(cs), in(zhat_x), in(rstd_x), out(dax), out(dah), out(dh0), out(dc0), out(dg_ih),
               out(ds_ih), out(dg_hh), out(ds_hh), out(dg_c), out(ds_c), num_threads, in(rd), in(zh), in(zc)};
        };
        run<LnBackwardParams>(itemsize, fastrnn::cpu::ln_backward<float>, fastrnn::cpu::ln_backward<double>,
                              fill);
      },
      "the backward of a layer-normalised LSTM/GRU layer-direction (LnBackwardParams)", py::arg("itemsize"),
      py::arg("kind"), py::arg("T"), py::arg("N"), py::arg("H"), py::arg("dy"), py::arg("dcn"), py::arg("h0"),
      py::arg("c0"), py::arg("w_hh"), py::arg("g_ih"), py::arg("g_hh"), py::arg("s_hh"), py::arg("g_c"),
      py::arg("s_c"), py::arg("lengths"), py::arg("reverse"), py::arg("y"), py::arg("zhat"), py::arg("rstd_h"),
      py::arg("gates"), py::arg("chat"), py::arg("rstd_c"), py::arg("cs"), py::arg("zhat_x"), py::arg("rstd_x"),
      py::arg("dax"), py::arg("dah"), py::arg("dh0"), py::arg("dc0"), py::arg("dg_ih"), py::arg("ds_ih"),
      py::arg("dg_hh"), py::arg("ds_hh"), py::arg("dg_c"), py::arg("ds_c"), py::arg("num_threads"),
      py::arg("rd") = 0, py::arg("zh") = 0, py::arg("zc") = 0);

  m.def(
      "reg_backward",
      [](int itemsize, int kind, int64_t T, int64_t N, int64_t H, std::uintptr_t dy, std::uintptr_t dcn,
         std::uintptr_t h0, std::uintptr_t c0, std::uintptr_t w_hh, std::uintptr_t rd, std::uintptr_t zh,
         std::uintptr_t zc, double zh_p, double zc_p, std::uintptr_t lengths, bool reverse, std::uintptr_t y,
         std::uintptr_t gates, std::uintptr_t cs, std::uintptr_t cand, std::uintptr_t dxg, std::uintptr_t dhg,
         std::uintptr_t dh0, std::uintptr_t dc0, int num_threads) {
        check_cell(kind);
        check_sizes(T, N, H, H, num_threads);
        check_lengths(lengths, T, N);
        const bool lstm = kind == fastrnn::kCellLstm, gru = kind == fastrnn::kCellGru;
        for (auto [p, what] : {std::pair{dy, "dy"}, {h0, "h0"}, {w_hh, "w_hh"}, {y, "y"}, {dxg, "dxg"}, {dh0, "dh0"}})
          require(p, what);
        if (lstm)
          for (auto [p, what] : {std::pair{dcn, "dcn (LSTM)"}, {c0, "c0 (LSTM)"}, {gates, "gates (LSTM)"},
                                 {cs, "cs (LSTM)"}, {cand, "cand (LSTM)"}, {dc0, "dc0 (LSTM)"}})
            require(p, what);
        else if (zc || zc_p != 0)
          throw std::invalid_argument("reg_backward: zc and zc_p are the LSTM's");
        if (gru) {
          require(gates, "gates (GRU)");
          require(dhg, "dhg (GRU)");
        }
        if (!lstm && !gru) require(cand, "cand (RNN)");
        if (!(zh_p >= 0 && zh_p < 1) || !(zc_p >= 0 && zc_p < 1))
          throw std::invalid_argument("reg_backward: zh_p and zc_p must be in [0, 1)");
        auto fill = [&](auto& p) {
          using scalar_t = std::remove_pointer_t<decltype(p.dxg)>;
          p = {kind, T, N, H, ptr<const scalar_t>(dy), ptr<const scalar_t>(dcn), ptr<const scalar_t>(h0),
               ptr<const scalar_t>(c0), ptr<const scalar_t>(w_hh), ptr<const scalar_t>(rd), ptr<const scalar_t>(zh),
               ptr<const scalar_t>(zc), static_cast<scalar_t>(zh_p), static_cast<scalar_t>(zc_p),
               ptr<const int64_t>(lengths), reverse, ptr<const scalar_t>(y), ptr<const scalar_t>(gates),
               ptr<const scalar_t>(cs), ptr<const scalar_t>(cand), ptr<scalar_t>(dxg), ptr<scalar_t>(dhg),
               ptr<scalar_t>(dh0), ptr<scalar_t>(dc0), num_threads};
        };
        run<RegBackwardParams>(itemsize, fastrnn::cpu::reg_backward<float>, fastrnn::cpu::reg_backward<double>,
                               fill);
      },
      "the backward of reg_forward (RegBackwardParams)", py::arg("itemsize"), py::arg("kind"), py::arg("T"),
      py::arg("N"), py::arg("H"), py::arg("dy"), py::arg("dcn"), py::arg("h0"), py::arg("c0"), py::arg("w_hh"),
      py::arg("rd"), py::arg("zh"), py::arg("zc"), py::arg("zh_p"), py::arg("zc_p"), py::arg("lengths"),
      py::arg("reverse"), py::arg("y"), py::arg("gates"), py::arg("cs"), py::arg("cand"), py::arg("dxg"),
      py::arg("dhg"), py::arg("dh0"), py::arg("dc0"), py::arg("num_threads"));

  m.def(
      "lstm_backward",
      [](int itemsize, int64_t T, int64_t N, int64_t H, int64_t R, std::uintptr_t dy, std::uintptr_t dcn,
         std::uintptr_t h0, std::uintptr_t c0, std::uintptr_t w_hh, std::uintptr_t w_hr, std::uintptr_t lengths,
         bool reverse, std::uintptr_t y, std::uintptr_t gates, std::uintptr_t cs, std::uintptr_t dgates,
         std::uintptr_t dh0, std::uintptr_t dc0, std::uintptr_t dr, int num_threads, std::uintptr_t w_ch) {
        check_sizes(T, N, H, R, num_threads);
        check_lengths(lengths, T, N);
        if (!gates || !cs) throw std::invalid_argument("lstm_backward: needs the saved gates and cs");
        if (w_hr && !dr) throw std::invalid_argument("lstm_backward: a projection needs dr");
        if (!w_hr && R != H) throw std::invalid_argument("lstm_backward: R != H needs w_hr");
        auto fill = [&](auto& p) {
          using scalar_t = std::remove_pointer_t<decltype(p.dgates)>;
          p = {T, N, H, R, ptr<const scalar_t>(dy), ptr<const scalar_t>(dcn), ptr<const scalar_t>(h0), ptr<const scalar_t>(c0),
               ptr<const scalar_t>(w_hh), ptr<const scalar_t>(w_hr), ptr<const scalar_t>(w_ch), ptr<const int64_t>(lengths), reverse,
               ptr<const scalar_t>(y),
               ptr<const scalar_t>(gates), ptr<const scalar_t>(cs), ptr<scalar_t>(dgates), ptr<scalar_t>(dh0), ptr<scalar_t>(dc0),
               w_hr ? ptr<scalar_t>(dr) : nullptr, num_threads};
        };
        run<LstmBackwardParams>(itemsize, fastrnn::cpu::lstm_backward<float>,
                                fastrnn::cpu::lstm_backward<double>, fill);
      },
      py::arg("itemsize"), py::arg("T"), py::arg("N"), py::arg("H"), py::arg("R"), py::arg("dy"), py::arg("dcn"),
      py::arg("h0"), py::arg("c0"), py::arg("w_hh"), py::arg("w_hr"), py::arg("lengths"), py::arg("reverse"),
      py::arg("y"), py::arg("gates"), py::arg("cs"), py::arg("dgates"), py::arg("dh0"), py::arg("dc0"),
      py::arg("dr"), py::arg("num_threads"), py::arg("w_ch") = 0);

  m.def(
      "gru_forward",
      [](int itemsize, int64_t T, int64_t N, int64_t H, std::uintptr_t xg, std::uintptr_t h0, std::uintptr_t w_hh,
         std::uintptr_t b_hh, std::uintptr_t lengths, bool reverse, std::uintptr_t y, std::uintptr_t saved,
         int num_threads) {
        check_sizes(T, N, H, H, num_threads);
        check_lengths(lengths, T, N);
        if (!b_hh) throw std::invalid_argument("gru_forward: b_hh is required (zeros when bias=False)");
        auto fill = [&](auto& p) {
          using scalar_t = std::remove_pointer_t<decltype(p.y)>;
          p = {T, N, H, ptr<const scalar_t>(xg), ptr<const scalar_t>(h0), ptr<const scalar_t>(w_hh), ptr<const scalar_t>(b_hh),
               ptr<const int64_t>(lengths), reverse, ptr<scalar_t>(y), ptr<scalar_t>(saved), num_threads};
        };
        run<GruForwardParams>(itemsize, fastrnn::cpu::gru_forward<float>, fastrnn::cpu::gru_forward<double>, fill);
      },
      py::arg("itemsize"), py::arg("T"), py::arg("N"), py::arg("H"), py::arg("xg"), py::arg("h0"), py::arg("w_hh"),
      py::arg("b_hh"), py::arg("lengths"), py::arg("reverse"), py::arg("y"), py::arg("saved"),
      py::arg("num_threads"));

  m.def(
      "gru_backward",
      [](int itemsize, int64_t T, int64_t N, int64_t H, std::uintptr_t dy, std::uintptr_t h0, std::uintptr_t w_hh,
         std::uintptr_t lengths, bool reverse, std::uintptr_t y, std::uintptr_t saved, std::uintptr_t dxg,
         std::uintptr_t dh0, int num_threads) {
        check_sizes(T, N, H, H, num_threads);
        check_lengths(lengths, T, N);
        if (!saved) throw std::invalid_argument("gru_backward: needs the saved activations");
        auto fill = [&](auto& p) {
          using scalar_t = std::remove_pointer_t<decltype(p.dxg)>;
          p = {T, N, H, ptr<const scalar_t>(dy), ptr<const scalar_t>(h0), ptr<const scalar_t>(w_hh), ptr<const int64_t>(lengths),
               reverse, ptr<const scalar_t>(y), ptr<const scalar_t>(saved), ptr<scalar_t>(dxg), ptr<scalar_t>(dh0), num_threads};
        };
        run<GruBackwardParams>(itemsize, fastrnn::cpu::gru_backward<float>, fastrnn::cpu::gru_backward<double>,
                               fill);
      },
      py::arg("itemsize"), py::arg("T"), py::arg("N"), py::arg("H"), py::arg("dy"), py::arg("h0"), py::arg("w_hh"),
      py::arg("lengths"), py::arg("reverse"), py::arg("y"), py::arg("saved"), py::arg("dxg"), py::arg("dh0"),
      py::arg("num_threads"));

  m.def(
      "rnn_forward",
      [](int itemsize, int64_t T, int64_t N, int64_t H, std::uintptr_t xg, std::uintptr_t h0, std::uintptr_t w_hh,
         std::uintptr_t lengths, bool reverse, bool relu, std::uintptr_t y, int num_threads) {
        check_sizes(T, N, H, H, num_threads);
        check_lengths(lengths, T, N);
        auto fill = [&](auto& p) {
          using scalar_t = std::remove_pointer_t<decltype(p.y)>;
          p = {T, N, H, ptr<const scalar_t>(xg), ptr<const scalar_t>(h0), ptr<const scalar_t>(w_hh), ptr<const int64_t>(lengths),
               reverse, relu, ptr<scalar_t>(y), num_threads};
        };
        run<RnnForwardParams>(itemsize, fastrnn::cpu::rnn_forward<float>, fastrnn::cpu::rnn_forward<double>, fill);
      },
      py::arg("itemsize"), py::arg("T"), py::arg("N"), py::arg("H"), py::arg("xg"), py::arg("h0"), py::arg("w_hh"),
      py::arg("lengths"), py::arg("reverse"), py::arg("relu"), py::arg("y"), py::arg("num_threads"));

  m.def(
      "cell_forward",
      [](int itemsize, int cell, int64_t N, int64_t I, int64_t H, std::uintptr_t x, std::uintptr_t h,
         std::uintptr_t c, std::uintptr_t w_ih, std::uintptr_t w_hh, std::uintptr_t b_ih, std::uintptr_t b_hh,
         std::uintptr_t h_out, std::uintptr_t c_out, std::uintptr_t saved, int num_threads, int64_t T,
         bool reverse, int64_t x_step, int64_t x_row, std::uintptr_t w_ch, std::uintptr_t lengths, bool round_bf16,
         double zh_p, double zc_p) {
        check_cell(cell);
        if (!(zh_p >= 0 && zh_p < 1) || !(zc_p >= 0 && zc_p < 1))
          throw std::invalid_argument("cell_forward: zh_p and zc_p must be in [0, 1)");
        if ((zh_p != 0 || zc_p != 0) && saved)
          throw std::invalid_argument("cell_forward: zoneout's expectation is for inference (no saved)");
        if (zc_p != 0 && cell != fastrnn::kCellLstm) throw std::invalid_argument("cell_forward: zc_p is the LSTM's");
        check_sizes(T, N, H, I, num_threads);
        if (x_row < 0 || x_step < 0 || (x_row && x_row < I))
          throw std::invalid_argument("cell_forward: x's strides must be 0 (dense) or leave its rows whole");
        if (T > 1 && saved) throw std::invalid_argument("cell_forward: several steps are for inference (no saved)");
        if (round_bf16 && itemsize != 4) throw std::invalid_argument("cell_forward: round_bf16 is for float32");
        check_lengths(lengths, T, N);
        const bool lstm = cell == fastrnn::kCellLstm;
        for (auto [p, what] : {std::pair{x, "x"}, {h, "h"}, {w_ih, "w_ih"}, {w_hh, "w_hh"}, {h_out, "h_out"}})
          require(p, what);
        if (lstm) {
          require(c, "c (LSTM)");
          require(c_out, "c_out (LSTM)");
        } else if (w_ch) {
          throw std::invalid_argument("cell_forward: peepholes (w_ch) are for the LSTM cell");
        }
        auto fill = [&](auto& p) {
          using scalar_t = std::remove_pointer_t<decltype(p.h_out)>;
          p = {N, I, H, cell, ptr<const scalar_t>(x), ptr<const scalar_t>(h), ptr<const scalar_t>(c), ptr<const scalar_t>(w_ih),
               ptr<const scalar_t>(w_hh), ptr<const scalar_t>(b_ih), ptr<const scalar_t>(b_hh), ptr<scalar_t>(h_out), ptr<scalar_t>(c_out),
               ptr<scalar_t>(saved), num_threads, T, reverse, x_step, x_row, ptr<const scalar_t>(w_ch),
               ptr<const int64_t>(lengths), round_bf16};
          p.zh_p = static_cast<scalar_t>(zh_p);
          p.zc_p = static_cast<scalar_t>(zc_p);
        };
        run<CellForwardParams>(itemsize, fastrnn::cpu::cell_forward<float>, fastrnn::cpu::cell_forward<double>,
                               fill);
      },
      "one cell step with its input projection fused in, or T of them (see CellForwardParams)",
      py::arg("itemsize"), py::arg("cell"), py::arg("N"), py::arg("I"), py::arg("H"), py::arg("x"), py::arg("h"),
      py::arg("c"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("h_out"),
      py::arg("c_out"), py::arg("saved"), py::arg("num_threads"), py::arg("T") = 1, py::arg("reverse") = false,
      py::arg("x_step") = 0, py::arg("x_row") = 0, py::arg("w_ch") = 0, py::arg("lengths") = 0,
      py::arg("round_bf16") = false, py::arg("zh_p") = 0.0, py::arg("zc_p") = 0.0);

  m.def(
      "cell_forward_bf16",
      [](int cell, int64_t N, int64_t I, int64_t H, std::uintptr_t x, std::uintptr_t h, std::uintptr_t c,
         std::uintptr_t w_ih, std::uintptr_t w_hh, std::uintptr_t b_ih, std::uintptr_t b_hh, std::uintptr_t h_out,
         std::uintptr_t c_out, int num_threads, int64_t T, bool reverse, int64_t x_step, int64_t x_row,
         std::uintptr_t w_ch, std::uintptr_t lengths, bool weights_bf16) {
        // cell_forward for inference on bfloat16 activations: x, h, c and the outputs
        // bfloat16 (x at element strides x_step/x_row, 0: dense), read into float32 scratch,
        // the float32 kernel run, its results rounded back. The weights are float32, or with
        // weights_bf16 all bfloat16 (a bfloat16 module's own parameters: the kernel widens
        // W_ih and W_hh as it reads or packs them, the biases and peepholes are widened
        // here). A bfloat16 step loop then pays no tensor conversions around the kernel.
        check_cell(cell);
        check_sizes(T, N, H, I, num_threads);
        if (x_row < 0 || x_step < 0 || (x_row && x_row < I))
          throw std::invalid_argument("cell_forward_bf16: x's strides must be 0 (dense) or leave its rows whole");
        check_lengths(lengths, T, N);
        const bool lstm = cell == fastrnn::kCellLstm;
        for (auto [p, what] : {std::pair{x, "x"}, {h, "h"}, {w_ih, "w_ih"}, {w_hh, "w_hh"}, {h_out, "h_out"}})
          require(p, what);
        if (lstm) {
          require(c, "c (LSTM)");
          require(c_out, "c_out (LSTM)");
        } else if (w_ch) {
          throw std::invalid_argument("cell_forward_bf16: peepholes (w_ch) are for the LSTM cell");
        }
        py::gil_scoped_release release;
        // bfloat16 [n] at src widened into dst (float32 scratch); nullptr for a null src
        auto widen = [](std::uintptr_t src, int64_t n, std::vector<float>& dst) -> float* {
          if (!src) return nullptr;
          dst.resize(size_t(n));
          const uint16_t* b = ptr<const uint16_t>(src);
          for (int64_t k = 0; k < n; ++k) dst[k] = bf16_widen(b[k]);
          return dst.data();
        };
        thread_local std::vector<float> xf, hf, cf, yf, cof, bif, bhf, chf;
        const int64_t row = x_row ? x_row : I, step = x_step ? x_step : N * I;
        xf.resize(size_t(T * N * I));  // x at its strides, widened into a dense [T, N, I]
        float* x_f = xf.data();
        const uint16_t* xb = ptr<const uint16_t>(x);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t n = 0; n < N; ++n) {
            const uint16_t* src = xb + t * step + n * row;
            float* dst = x_f + (t * N + n) * I;
            for (int64_t i = 0; i < I; ++i) dst[i] = bf16_widen(src[i]);
          }
        yf.resize(size_t(T * N * H));
        if (lstm) cof.resize(size_t(N * H));
        CellForwardParams<float> p{N, I, H, cell, x_f, widen(h, N * H, hf), lstm ? widen(c, N * H, cf) : nullptr,
                                   ptr<const float>(w_ih), ptr<const float>(w_hh), ptr<const float>(b_ih),
                                   ptr<const float>(b_hh), yf.data(), lstm ? cof.data() : nullptr, nullptr,
                                   num_threads, T, reverse, 0, 0, ptr<const float>(w_ch),
                                   ptr<const int64_t>(lengths)};
        if (weights_bf16) {
          const int64_t GH = (lstm ? 4 : cell == fastrnn::kCellGru ? 3 : 1) * H;
          p.w_ih = p.w_hh = nullptr;
          p.w_ih_bf16 = ptr<const uint16_t>(w_ih);
          p.w_hh_bf16 = ptr<const uint16_t>(w_hh);
          p.b_ih = widen(b_ih, GH, bif);
          p.b_hh = widen(b_hh, GH, bhf);
          p.w_ch = widen(w_ch, 3 * H, chf);
        }
        fastrnn::cpu::cell_forward<float>(p);
        uint16_t* yb = ptr<uint16_t>(h_out);
        for (int64_t k = 0; k < T * N * H; ++k) yb[k] = bf16_round(yf[k]);
        if (lstm) {
          uint16_t* cob = ptr<uint16_t>(c_out);
          for (int64_t k = 0; k < N * H; ++k) cob[k] = bf16_round(cof[k]);
        }
      },
      "cell_forward for inference on bfloat16 x, h, c and outputs with float32 weights",
      py::arg("cell"), py::arg("N"), py::arg("I"), py::arg("H"), py::arg("x"), py::arg("h"), py::arg("c"),
      py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("h_out"), py::arg("c_out"),
      py::arg("num_threads"), py::arg("T") = 1, py::arg("reverse") = false, py::arg("x_step") = 0,
      py::arg("x_row") = 0, py::arg("w_ch") = 0, py::arg("lengths") = 0, py::arg("weights_bf16") = false);

  m.def(
      "cell_backward",
      [](int itemsize, int cell, int64_t N, int64_t H, std::uintptr_t dh_out, std::uintptr_t dc_out,
         std::uintptr_t h, std::uintptr_t c, std::uintptr_t h_out, std::uintptr_t c_out, std::uintptr_t saved,
         std::uintptr_t dpre_x, std::uintptr_t dpre_h, std::uintptr_t dc, std::uintptr_t dh_direct, int64_t I,
         std::uintptr_t x, std::uintptr_t w_ih, std::uintptr_t w_hh, std::uintptr_t dx, std::uintptr_t dh,
         std::uintptr_t dw_ih, std::uintptr_t dw_hh, std::uintptr_t db_ih, std::uintptr_t db_hh,
         std::uintptr_t w_ch, std::uintptr_t dw_ch) {
        check_cell(cell);
        if ((w_ch || dw_ch) && cell != fastrnn::kCellLstm)
          throw std::invalid_argument("cell_backward: peepholes (w_ch, dw_ch) are for the LSTM cell");
        if (dw_ch && !w_ch) throw std::invalid_argument("cell_backward: dw_ch needs w_ch");
        check_sizes(1, N, H, H, 1);
        if (dw_ih) {  // the weight products too
          check_sizes(1, N, H, I, 1);
          for (auto [p, what] : {std::pair{x, "x"}, {w_ih, "w_ih"}, {w_hh, "w_hh"}, {dh, "dh"}, {dw_hh, "dw_hh"}})
            require(p, what);
          if ((db_ih == 0) != (db_hh == 0)) throw std::invalid_argument("cell_backward: db_ih and db_hh go together");
        }
        require(dh_out, "dh_out");
        require(dpre_x, "dpre_x");
        if (cell == fastrnn::kCellLstm) {
          for (auto [p, what] : {std::pair{c, "c"}, {c_out, "c_out"}, {saved, "saved"}, {dc, "dc"}}) require(p, what);
        } else if (cell == fastrnn::kCellGru) {
          for (auto [p, what] : {std::pair{h, "h"}, {saved, "saved"}, {dpre_h, "dpre_h"}, {dh_direct, "dh_direct"}})
            require(p, what);
        } else {
          require(h_out, "h_out");
        }
        auto fill = [&](auto& p) {
          using scalar_t = std::remove_pointer_t<decltype(p.dpre_x)>;
          p = {N, H, cell, ptr<const scalar_t>(dh_out), ptr<const scalar_t>(dc_out), ptr<const scalar_t>(h), ptr<const scalar_t>(c),
               ptr<const scalar_t>(h_out), ptr<const scalar_t>(c_out), ptr<const scalar_t>(saved), ptr<scalar_t>(dpre_x), ptr<scalar_t>(dpre_h),
               ptr<scalar_t>(dc), ptr<scalar_t>(dh_direct), I, ptr<const scalar_t>(x), ptr<const scalar_t>(w_ih), ptr<const scalar_t>(w_hh),
               ptr<scalar_t>(dx), ptr<scalar_t>(dh), ptr<scalar_t>(dw_ih), ptr<scalar_t>(dw_hh), ptr<scalar_t>(db_ih), ptr<scalar_t>(db_hh),
               ptr<const scalar_t>(w_ch), ptr<scalar_t>(dw_ch)};
        };
        run<CellBackwardParams>(itemsize, fastrnn::cpu::cell_backward<float>, fastrnn::cpu::cell_backward<double>,
                                fill);
      },
      "the pointwise backward of one cell step (see CellBackwardParams)", py::arg("itemsize"), py::arg("cell"),
      py::arg("N"), py::arg("H"), py::arg("dh_out"), py::arg("dc_out"), py::arg("h"), py::arg("c"),
      py::arg("h_out"), py::arg("c_out"), py::arg("saved"), py::arg("dpre_x"), py::arg("dpre_h"), py::arg("dc"),
      py::arg("dh_direct"), py::arg("I"), py::arg("x"), py::arg("w_ih"), py::arg("w_hh"), py::arg("dx"),
      py::arg("dh"), py::arg("dw_ih"), py::arg("dw_hh"), py::arg("db_ih"), py::arg("db_hh"), py::arg("w_ch") = 0,
      py::arg("dw_ch") = 0);

  m.def(
      "rnn_backward",
      [](int itemsize, int64_t T, int64_t N, int64_t H, std::uintptr_t dy, std::uintptr_t h0, std::uintptr_t w_hh,
         std::uintptr_t lengths, bool reverse, bool relu, std::uintptr_t y, std::uintptr_t dxg, std::uintptr_t dh0,
         int num_threads) {
        check_sizes(T, N, H, H, num_threads);
        check_lengths(lengths, T, N);
        auto fill = [&](auto& p) {
          using scalar_t = std::remove_pointer_t<decltype(p.dxg)>;
          p = {T, N, H, ptr<const scalar_t>(dy), ptr<const scalar_t>(h0), ptr<const scalar_t>(w_hh), ptr<const int64_t>(lengths),
               reverse, relu, ptr<const scalar_t>(y), ptr<scalar_t>(dxg), ptr<scalar_t>(dh0), num_threads};
        };
        run<RnnBackwardParams>(itemsize, fastrnn::cpu::rnn_backward<float>, fastrnn::cpu::rnn_backward<double>,
                               fill);
      },
      py::arg("itemsize"), py::arg("T"), py::arg("N"), py::arg("H"), py::arg("dy"), py::arg("h0"), py::arg("w_hh"),
      py::arg("lengths"), py::arg("reverse"), py::arg("relu"), py::arg("y"), py::arg("dxg"), py::arg("dh0"),
      py::arg("num_threads"));
}
