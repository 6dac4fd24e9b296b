// Unit tests of the addon's pure parts (region bookkeeping, completion records), without verbs.
// Built with -fsanitize=address,undefined by native/test-pure.mjs and run in `npm test`.
// Prints "N passed, N failed" and exits non-zero on any failure.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../src/completion_record.h"
#include "../src/queue_limits.h"
#include "../src/region_table.h"

using namespace derecho_rdma;

static int passed = 0;
static int failed = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (cond) {                                                              \
      passed++;                                                              \
    } else {                                                                 \
      failed++;                                                              \
      std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                        \
  } while (0)

static void regionTableBounds() {
  std::vector<uint8_t> memory(4096);
  RegionTable table(2);
  Region r;
  r.base = memory.data();
  r.lengthBytes = memory.size();
  r.lkey = 11;
  r.rkey = 12;
  uint32_t h = table.add(r);
  CHECK(h == 1);
  CHECK(table.size() == 1);

  RegionSlice whole = table.slice(h, 0, 4096);
  CHECK(whole.ok && whole.bytes == memory.data() && whole.lkey == 11);
  RegionSlice tail = table.slice(h, 4000, 96);
  CHECK(tail.ok && tail.bytes == memory.data() + 4000);
  RegionSlice emptyAtEnd = table.slice(h, 4096, 0);
  CHECK(emptyAtEnd.ok);
  RegionSlice over = table.slice(h, 4000, 97);
  CHECK(!over.ok && over.error.find("outside region 1 of 4096 bytes") != std::string::npos);
  RegionSlice pastEnd = table.slice(h, 4097, 0);
  CHECK(!pastEnd.ok);
  // offset + length wraps around 2^64: must be refused, not accepted by an overflowing sum.
  RegionSlice wrap = table.slice(h, 16, UINT64_MAX - 8);
  CHECK(!wrap.ok);
  RegionSlice wrap2 = table.slice(h, UINT64_MAX, 2);
  CHECK(!wrap2.ok);
  RegionSlice unknown = table.slice(99, 0, 1);
  CHECK(!unknown.ok && unknown.error == "no registered region with handle 99");
}

static void regionTableLifecycle() {
  std::vector<uint8_t> a(64), b(64), c(64);
  RegionTable table(2);
  Region ra{a.data(), a.size(), 1, 1, nullptr};
  Region rb{b.data(), b.size(), 2, 2, nullptr};
  Region rc{c.data(), c.size(), 3, 3, nullptr};
  Region empty{c.data(), 0, 4, 4, nullptr};
  Region null{nullptr, 64, 5, 5, nullptr};
  CHECK(table.add(empty) == 0);
  CHECK(table.add(null) == 0);
  uint32_t ha = table.add(ra);
  uint32_t hb = table.add(rb);
  CHECK(ha != 0 && hb != 0 && ha != hb);
  CHECK(table.add(rc) == 0);  // full (regionsMax 2)
  Region removed;
  CHECK(table.remove(ha, &removed) && removed.base == a.data());
  CHECK(!table.remove(ha, nullptr));  // twice
  CHECK(table.find(ha) == nullptr);
  CHECK(!table.slice(ha, 0, 1).ok);  // a stale handle names nothing
  uint32_t hc = table.add(rc);
  CHECK(hc != 0 && hc != ha && hc != hb);  // handles are not reused
  int seen = 0;
  table.forEach([&](uint32_t, const Region&) { seen++; });
  CHECK(seen == 2);
}

static void completionRecordRoundTrip() {
  CompletionRecord r;
  r.wrId = (uint64_t{1} << 53) - 1;
  r.connId = 0xfedcba98u;
  r.status = 12;
  r.opcode = 129;
  r.byteLen = 65536;
  r.imm = 0x9abcdef0u;
  r.flags = kCompletionHasImm;
  uint8_t bytes[kCompletionRecordBytes + 2];
  std::memset(bytes, 0xee, sizeof bytes);
  encodeCompletion(r, bytes + 1);
  CHECK(bytes[0] == 0xee && bytes[kCompletionRecordBytes + 1] == 0xee);  // writes exactly 32 bytes
  // Little-endian layout at the documented offsets (rdma/verbs.ts decodes this).
  CHECK(bytes[1] == 0xff && bytes[1 + 6] == 0x1f && bytes[1 + 7] == 0x00);
  CHECK(bytes[1 + 8] == 0x98 && bytes[1 + 11] == 0xfe);
  CHECK(bytes[1 + 12] == 12);
  CHECK(bytes[1 + 16] == 129);
  CHECK(bytes[1 + 20] == 0x00 && bytes[1 + 22] == 0x01);
  CHECK(bytes[1 + 24] == 0xf0 && bytes[1 + 27] == 0x9a);
  CHECK(bytes[1 + 28] == 1);
  CompletionRecord d = decodeCompletion(bytes + 1);
  CHECK(d.wrId == r.wrId && d.connId == r.connId && d.status == r.status && d.opcode == r.opcode);
  CHECK(d.byteLen == r.byteLen && d.imm == r.imm && d.flags == r.flags);
}

static void completionBatchBound() {
  CompletionBatch batch(3);
  CompletionRecord r;
  for (uint32_t i = 0; i < 3; i++) {
    r.wrId = i;
    CHECK(batch.append(r));
  }
  r.wrId = 3;
  CHECK(!batch.append(r));  // bounded
  CHECK(batch.count() == 3 && batch.bytes() == 3 * kCompletionRecordBytes);
  CHECK(decodeCompletion(batch.data() + 2 * kCompletionRecordBytes).wrId == 2);
  uint8_t* owned = batch.release();
  CHECK(owned != nullptr && batch.count() == 0);
  CHECK(!batch.append(r));  // released: nothing more goes in
  CHECK(decodeCompletion(owned + kCompletionRecordBytes).wrId == 1);
  std::free(owned);
  CompletionBatch none(0);
  CHECK(!none.append(r));
}

// Issue 13: the addon asked every device for a 65,536-entry completion queue; Soft-RoCE allows 32,767
// (max_cqe), so ibv_create_cq failed with EINVAL. Queues are sized from what the device reports.
static void queueLimits() {
  QueueSize rxe = completionQueueEntries(0, 32767, "rxe0");
  CHECK(rxe.ok && rxe.entries == 32767);
  QueueSize big = completionQueueEntries(0, 4194303, "mlx5_0");
  CHECK(big.ok && big.entries == kCqEntriesDefault);
  QueueSize asked = completionQueueEntries(4096, 32767, "rxe0");
  CHECK(asked.ok && asked.entries == 4096);
  QueueSize over = completionQueueEntries(65536, 32767, "rxe0");
  CHECK(!over.ok);
  CHECK(over.error == "completionQueueEntries 65536 is over what RDMA device rxe0 allows (max_cqe 32767)");
  CHECK(!completionQueueEntries(8, 32767, "rxe0").ok);
  CHECK(!completionQueueEntries(0, 4, "tiny").ok);
  CHECK(queuePairProblem(268, 528, 16384, "rxe0").empty());
  std::string qp = queuePairProblem(268, 20000, 16384, "rxe0");
  CHECK(qp.find("max_qp_wr 16384") != std::string::npos);
  CHECK(!queuePairProblem(0, 1, 16384, "rxe0").empty());
  CHECK(memoryRegionProblem(1 << 20, UINT64_MAX, "mlx5_0").empty());
  CHECK(memoryRegionProblem((1ULL << 32) + 1, 1ULL << 32, "rxe0").find("max_mr_size 4294967296") != std::string::npos);
}

int main() {
  queueLimits();
  regionTableBounds();
  regionTableLifecycle();
  completionRecordRoundTrip();
  completionBatchBound();
  std::printf("native: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
