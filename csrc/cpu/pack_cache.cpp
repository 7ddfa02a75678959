#include "cpu/pack_cache.h"

#include "cpu/per_process.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <vector>

namespace fastrnn {
namespace cpu {

bool PackKey::operator==(const PackKey& o) const {
  return src == o.src && src_bytes == o.src_bytes && type == o.type &&
         std::memcmp(layout, o.layout, sizeof(layout)) == 0;
}

namespace {

struct Entry {
  PackKey key;
  std::vector<unsigned char> source;  // the bytes the entry was packed from
  std::shared_ptr<const void> packed;
  size_t packed_bytes;
  int64_t panels;
  size_t bytes() const { return source.size() + packed_bytes; }
};

size_t default_limit() {
  if (const char* s = std::getenv("FASTRNN_CPU_PACK_CACHE_MB")) {
    char* end = nullptr;
    const double mb = std::strtod(s, &end);
    if (end != s && mb >= 0) return static_cast<size_t>(mb * 1024 * 1024);
  }
  return size_t(64) << 20;
}

struct Cache {
  std::mutex mu;
  std::list<std::shared_ptr<const Entry>> lru;  // most recently used first
  size_t bytes = 0;
  size_t limit = default_limit();
  std::atomic<uint64_t> hits{0}, misses{0};  // counted without the lock

  void inherit(const Cache& parent) { limit = parent.limit; }  // see per_process.h

  void evict_to(size_t target) {  // with mu held
    while (bytes > target && !lru.empty()) {
      bytes -= lru.back()->bytes();
      lru.pop_back();
    }
  }
};

Cache& cache() { return PerProcess<Cache>::get(); }

}  // namespace

bool pack_cache_accepts(size_t src_bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.limit > 0 && src_bytes <= c.limit / 4;
}

std::shared_ptr<const void> pack_cache_find(const PackKey& key, int64_t* panels) {
  Cache& c = cache();
  std::shared_ptr<const Entry> e;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    for (auto it = c.lru.begin(); it != c.lru.end(); ++it)
      if ((*it)->key == key) {
        e = *it;
        c.lru.splice(c.lru.begin(), c.lru, it);
        break;
      }
  }
  // Compared outside the lock: an entry's source copy never changes once made.
  const bool same = e && std::memcmp(e->source.data(), key.src, key.src_bytes) == 0;
  (same ? c.hits : c.misses).fetch_add(1, std::memory_order_relaxed);
  if (!same) return nullptr;
  *panels = e->panels;
  return e->packed;
}

void pack_cache_put(const PackKey& key, std::vector<unsigned char> source,
                    std::shared_ptr<const void> packed, size_t packed_bytes, int64_t panels) {
  auto e = std::make_shared<Entry>();
  e->key = key;
  e->source = std::move(source);
  e->packed = std::move(packed);
  e->packed_bytes = packed_bytes;
  e->panels = panels;
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto it = c.lru.begin(); it != c.lru.end(); ++it)
    if ((*it)->key == key) {
      c.bytes -= (*it)->bytes();
      c.lru.erase(it);
      break;
    }
  if (e->bytes() > c.limit) return;
  c.evict_to(c.limit - e->bytes());
  c.bytes += e->bytes();
  c.lru.push_front(std::move(e));
}

size_t pack_cache_bytes() {
  std::lock_guard<std::mutex> lock(cache().mu);
  return cache().bytes;
}

size_t pack_cache_entries() {
  std::lock_guard<std::mutex> lock(cache().mu);
  return cache().lru.size();
}

size_t pack_cache_limit() {
  std::lock_guard<std::mutex> lock(cache().mu);
  return cache().limit;
}

void pack_cache_set_limit(size_t bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.limit = bytes;
  c.evict_to(bytes);
}

void pack_cache_release() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.lru.clear();
  c.bytes = 0;
  c.hits = 0;
  c.misses = 0;
}

uint64_t pack_cache_hits() { return cache().hits.load(std::memory_order_relaxed); }

uint64_t pack_cache_misses() { return cache().misses.load(std::memory_order_relaxed); }

}  // namespace cpu
}  // namespace fastrnn
