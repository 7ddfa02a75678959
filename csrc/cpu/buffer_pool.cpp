#include "cpu/buffer_pool.h"

#include "cpu/per_process.h"

#include <cstdlib>
#include <mutex>
#include <new>
#include <map>

namespace fastrnn {
namespace cpu {
namespace {

struct Pool {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;  // capacity -> block
  size_t cached = 0;
  size_t limit = size_t(1) << 30;  // 1 GiB
  void inherit(const Pool& parent) { limit = parent.limit; }  // see per_process.h
};

Pool& pool() { return PerProcess<Pool>::get(); }

}  // namespace

size_t pool_size_class(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes <= (size_t(1) << 20)) return (bytes + 63) / 64 * 64;
  const int e = 63 - __builtin_clzll(static_cast<unsigned long long>(bytes));  // 2^e <= bytes
  const size_t step = size_t(1) << (e - 3);
  return (bytes + step - 1) / step * step;
}

void* pool_get(size_t bytes, size_t* capacity) {
  const size_t size = pool_size_class(bytes);
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mu);
    auto it = p.free_blocks.lower_bound(size);
    if (it != p.free_blocks.end() && it->first <= size + size / 2) {
      void* block = it->second;
      *capacity = it->first;
      p.cached -= it->first;
      p.free_blocks.erase(it);
      return block;
    }
  }
  void* block = std::aligned_alloc(64, size);
  if (!block) throw std::bad_alloc();
  *capacity = size;
  return block;
}

void pool_put(void* block, size_t capacity) {
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mu);
    if (p.cached + capacity <= p.limit) {
      p.free_blocks.emplace(capacity, block);
      p.cached += capacity;
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
  for (auto& kv : p.free_blocks) std::free(kv.second);
  p.free_blocks.clear();
  p.cached = 0;
}

}  // namespace cpu
}  // namespace fastrnn
