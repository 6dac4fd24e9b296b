#include "region_table.h"

namespace derecho_rdma {

uint32_t RegionTable::add(const Region& region) {
  if (region.base == nullptr || region.lengthBytes == 0 || regions_.size() >= regionsMax_) return 0;
  // Handles are never reused while the table lives (a stale handle cannot name a newer region), and 0 is
  // never a handle; after 2^32 - 1 registrations the table refuses more.
  if (nextHandle_ == 0) return 0;
  uint32_t handle = nextHandle_++;
  regions_[handle] = region;
  return handle;
}

bool RegionTable::remove(uint32_t handle, Region* out) {
  auto it = regions_.find(handle);
  if (it == regions_.end()) return false;
  if (out != nullptr) *out = it->second;
  regions_.erase(it);
  return true;
}

const Region* RegionTable::find(uint32_t handle) const {
  auto it = regions_.find(handle);
  return it == regions_.end() ? nullptr : &it->second;
}

RegionSlice RegionTable::slice(uint32_t handle, uint64_t offset, uint64_t lengthBytes) const {
  RegionSlice s;
  const Region* r = find(handle);
  if (r == nullptr) {
    s.error = "no registered region with handle " + std::to_string(handle);
    return s;
  }
  const uint64_t size = r->lengthBytes;
  if (offset > size || lengthBytes > size - offset) {
    s.error = "bytes [" + std::to_string(offset) + ", +" + std::to_string(lengthBytes) + ") are outside region " +
              std::to_string(handle) + " of " + std::to_string(size) + " bytes";
    return s;
  }
  s.ok = true;
  s.bytes = r->base + offset;
  s.lkey = r->lkey;
  return s;
}

}  // namespace derecho_rdma
