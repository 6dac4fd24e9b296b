#include "queue_limits.h"

namespace derecho_rdma {

QueueSize completionQueueEntries(uint32_t requested, int64_t maxCqe, const std::string& device) {
  QueueSize out;
  if (maxCqe < static_cast<int64_t>(kCqEntriesMin)) {
    out.error = "RDMA device " + device + " reports max_cqe " + std::to_string(maxCqe) + ", below the " + std::to_string(kCqEntriesMin) + " entries one path needs";
    return out;
  }
  if (requested == 0) {
    out.ok = true;
    out.entries = maxCqe < static_cast<int64_t>(kCqEntriesDefault) ? static_cast<uint32_t>(maxCqe) : kCqEntriesDefault;
    return out;
  }
  if (requested < kCqEntriesMin) {
    out.error = "completionQueueEntries " + std::to_string(requested) + " is below the minimum of " + std::to_string(kCqEntriesMin);
    return out;
  }
  if (static_cast<int64_t>(requested) > maxCqe) {
    out.error = "completionQueueEntries " + std::to_string(requested) + " is over what RDMA device " + device + " allows (max_cqe " + std::to_string(maxCqe) + ")";
    return out;
  }
  out.ok = true;
  out.entries = requested;
  return out;
}

std::string queuePairProblem(uint32_t sendDepth, uint32_t recvDepth, int64_t maxQpWr, const std::string& device) {
  if (sendDepth == 0 || recvDepth == 0) return "queue pair depths must be at least 1 (send " + std::to_string(sendDepth) + ", receive " + std::to_string(recvDepth) + ")";
  uint32_t deeper = sendDepth > recvDepth ? sendDepth : recvDepth;
  if (static_cast<int64_t>(deeper) > maxQpWr) {
    return "a queue pair of send depth " + std::to_string(sendDepth) + " and receive depth " + std::to_string(recvDepth) + " is over what RDMA device " + device +
           " allows (max_qp_wr " + std::to_string(maxQpWr) + "; lower ringSlots)";
  }
  return "";
}

std::string memoryRegionProblem(uint64_t bytes, uint64_t maxMrSize, const std::string& device) {
  if (bytes > maxMrSize) {
    return "a memory region of " + std::to_string(bytes) + " bytes is over what RDMA device " + device + " allows (max_mr_size " + std::to_string(maxMrSize) + ")";
  }
  return "";
}

}  // namespace derecho_rdma
