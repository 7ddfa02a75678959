// A small caching allocator for the CPU kernels' outputs (saved activations, gate
// gradients, ...), handed to torch as DLPack tensors whose deleter returns the block
// here. Why: a fresh multi-MB allocation costs first-touch page faults on every call,
// several times the cost of refilling a reused block, and a training loop frees and
// re-asks for the same sizes every step. Blocks are reused by exact size; at most
// `limit` bytes are kept (the rest go back to the OS).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace fastrnn {
namespace cpu {

void* pool_get(size_t bytes);
void pool_put(void* p, size_t bytes);
size_t pool_cached_bytes();
void pool_set_limit(size_t bytes);
size_t pool_limit();
void pool_release();  // free every cached block

}  // namespace cpu
}  // namespace fastrnn
