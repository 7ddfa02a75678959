#include "cpu/buffer_pool.h"

#include "cpu/per_process.h"

#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>

namespace fastrnn {
namespace cpu {
namespace {

struct Pool {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;
  size_t cached = 0;
  size_t limit = size_t(1) << 30;  // 1 GiB
  void inherit(const Pool& parent) { limit = parent.limit; }  // see per_process.h
};

Pool& pool() { return PerProcess<Pool>::get(); }

size_t rounded(size_t bytes) { return (bytes + 63) / 64 * 64; }

}  // namespace

void* pool_get(size_t bytes) {
  const size_t size = rounded(bytes ? bytes : 1);
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mu);
    auto it = p.free_blocks.find(size);
    if (it != p.free_blocks.end() && !it->second.empty()) {
      void* block = it->second.back();
      it->second.pop_back();
      p.cached -= size;
      return block;
    }
  }
  void* block = std::aligned_alloc(64, size);
  if (!block) throw std::bad_alloc();
  return block;
}

void pool_put(void* block, size_t bytes) {
  const size_t size = rounded(bytes ? bytes : 1);
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mu);
    if (p.cached + size <= p.limit) {
      p.free_blocks[size].push_back(block);
      p.cached += size;
      return;
    }
  }
  std::free(block);
}

size_t pool_cached_bytes() {
  std::lock_guard<std::mutex> lock(pool().mu);
  return pool().cached;
}

size_t pool_limit() {
  std::lock_guard<std::mutex> lock(pool().mu);
  return pool().limit;
}

void pool_set_limit(size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(pool().mu);
    pool().limit = bytes;
  }
  if (pool_cached_bytes() > bytes) pool_release();
}

void pool_release() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  for (auto& kv : p.free_blocks)
    for (void* block : kv.second) std::free(block);
  p.free_blocks.clear();
  p.cached = 0;
}

}  // namespace cpu
}  // namespace fastrnn
