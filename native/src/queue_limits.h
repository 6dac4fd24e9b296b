// Sizing the addon's queues within what the device reports (ibv_query_device): devices differ widely
// (a ConnectX allows millions of completion queue entries, Soft-RoCE's rxe 32,767), so no size is
// hardcoded past the device's own limits. Pure C++ (no verbs calls), unit tested in test/pure_test.cc.
#pragma once

#include <cstdint>
#include <string>

namespace derecho_rdma {

/** The completion queue size asked for when the caller names none: capped at the device's max_cqe. */
constexpr uint32_t kCqEntriesDefault = 65536;
/** Below this a completion queue cannot serve even one path. */
constexpr uint32_t kCqEntriesMin = 16;

struct QueueSize {
  bool ok = false;
  uint32_t entries = 0;
  std::string error;  // why not, naming the device's limit
};

/**
 * Entries of the device's one completion queue. `requested` 0 = the default, capped at `maxCqe`; an explicit
 * request above `maxCqe` (or below the minimum) is refused with a message that names both numbers.
 */
QueueSize completionQueueEntries(uint32_t requested, int64_t maxCqe, const std::string& device);

/** Why a queue pair of these depths does not fit the device (max_qp_wr), or "" when it does. */
std::string queuePairProblem(uint32_t sendDepth, uint32_t recvDepth, int64_t maxQpWr, const std::string& device);

/** Why registering `bytes` exceeds the device's max_mr_size, or "" when it does not. */
std::string memoryRegionProblem(uint64_t bytes, uint64_t maxMrSize, const std::string& device);

}  // namespace derecho_rdma
