// A small caching allocator for the CPU kernels' outputs (saved activations, gate
// gradients, ...), handed to torch as DLPack tensors whose deleter returns the block
// here. Why: a fresh multi-MB allocation costs first-touch page faults on every call,
// several times the cost of refilling a reused block, and a training loop frees and
// re-asks for the same sizes every step, or, with batches of varying length, for sizes
// close to ones it asked for before. Requests are rounded up to a size class (64-byte
// multiples up to 1 MiB, then 8 classes per power of two: at most 12.5% over) and served
// by the smallest cached block of at least that size and at most 1.5 times it (best fit);
// at most `limit` bytes are kept (the rest go back to the OS).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace fastrnn {
namespace cpu {

// A block of at least `bytes`; its size, which pool_put takes back, in *capacity.
void* pool_get(size_t bytes, size_t* capacity);
void pool_put(void* p, size_t capacity);
size_t pool_size_class(size_t bytes);
size_t pool_cached_bytes();
void pool_set_limit(size_t bytes);
size_t pool_limit();
void pool_release();  // free every cached block

}  // namespace cpu
}  // namespace fastrnn
