// Bookkeeping of the memory regions registered with a protection domain: handle -> (base, length, lkey).
// Pure C++ (no verbs calls): every post of an RDMA write names its local bytes as (handle, offset, length)
// and is checked here, so JavaScript can never make the addon read outside a registered region.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace derecho_rdma {

struct Region {
  uint8_t* base = nullptr;
  size_t lengthBytes = 0;
  uint32_t lkey = 0;
  uint32_t rkey = 0;
  void* mr = nullptr;  // struct ibv_mr*, opaque here
};

/** Result of resolving (handle, offset, length): the bytes, or why not. */
struct RegionSlice {
  bool ok = false;
  uint8_t* bytes = nullptr;
  uint32_t lkey = 0;
  std::string error;
};

class RegionTable {
 public:
  explicit RegionTable(size_t regionsMax) : regionsMax_(regionsMax) {}

  /** Adds a region; returns its handle (>= 1), or 0 when the table is full or the region is empty. */
  uint32_t add(const Region& region);
  /** Removes a region; false when the handle is unknown. The removed entry is copied to `out`. */
  bool remove(uint32_t handle, Region* out);
  const Region* find(uint32_t handle) const;
  /** offset and length must lie within the region (overflow-safe); a zero length is valid anywhere in it. */
  RegionSlice slice(uint32_t handle, uint64_t offset, uint64_t lengthBytes) const;
  size_t size() const { return regions_.size(); }
  size_t regionsMax() const { return regionsMax_; }
  /** Handles of every region, in order (for teardown). */
  template <typename F>
  void forEach(F f) const {
    for (const auto& [handle, region] : regions_) f(handle, region);
  }

 private:
  size_t regionsMax_;
  uint32_t nextHandle_ = 1;
  std::map<uint32_t, Region> regions_;
};

}  // namespace derecho_rdma
