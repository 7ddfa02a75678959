// Packed recurrent weights kept across calls. Packing W_hh for the fused GEMM costs a
// few tens of microseconds at H=128 (hundreds at H=256); at batch 1 that is a visible
// share of an inference call, and an inference loop packs the same weights every call.
//
// An entry is found by what it was packed from (the source pointer, its size, the
// element type and the packed layout) and is used only if the source bytes still equal
// the copy the entry took when it was packed: a hit is checked against the contents,
// never trusted from an address or a version counter (`p.data` writes, numpy views and
// freed-and-reused memory do not bump torch's version counter). A training step changes
// the weights, so its lookups miss at the first differing byte and re-pack.
//
// Least recently used entries are dropped beyond `limit` bytes (the source copies plus the
// packed buffers); weights larger than a quarter of the limit are never cached. Limit 0
// turns the cache off. The default is 64 MiB, or $FASTRNN_CPU_PACK_CACHE_MB.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace fastrnn {
namespace cpu {

struct PackKey {
  const void* src;
  size_t src_bytes;
  size_t type;            // typeid(T).hash_code()
  int64_t layout[4];      // packing kind and its dimensions, vector width
  bool operator==(const PackKey& o) const;
};

// The packed buffer of a valid entry (and its panel count), or nullptr.
std::shared_ptr<const void> pack_cache_find(const PackKey& key, int64_t* panels);
// Remember `packed`, made from `source` (a copy of key.src's bytes taken before packing),
// for `key`, replacing an older entry of the same key.
void pack_cache_put(const PackKey& key, std::vector<unsigned char> source,
                    std::shared_ptr<const void> packed, size_t packed_bytes, int64_t panels);
bool pack_cache_accepts(size_t src_bytes);  // false: caching this size is off / too big

size_t pack_cache_bytes();
size_t pack_cache_entries();
size_t pack_cache_limit();
void pack_cache_set_limit(size_t bytes);
void pack_cache_release();
// Counters since the last release: lookups that hit, lookups that missed.
uint64_t pack_cache_hits();
uint64_t pack_cache_misses();

}  // namespace cpu
}  // namespace fastrnn
