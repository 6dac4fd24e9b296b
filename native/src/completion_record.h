// The completion record: one work completion as the polling thread hands it to JavaScript, in batches.
// Pure C++ (no verbs types): fixed 32-byte little-endian records, decoded by rdma/verbs.ts.
//
//   offset  size  field
//   0       8     wrId        (u64; JavaScript uses ids below 2^53)
//   8       4     connId      (the addon's connection id; the polling thread stores the QP number here and
//                              the main thread maps it to the connection before JavaScript sees it)
//   12      4     status      (enum ibv_wc_status; 0 = success)
//   16      4     opcode      (enum ibv_wc_opcode: 1 = RDMA write done, 129 = receive with immediate, ...)
//   20      4     byteLen
//   24      4     imm         (immediate data, host order; valid when flags bit 0 is set)
//   28      4     flags       (bit 0: has immediate data)
#pragma once

#include <cstddef>
#include <cstdint>

namespace derecho_rdma {

constexpr size_t kCompletionRecordBytes = 32;
constexpr uint32_t kCompletionHasImm = 1;

struct CompletionRecord {
  uint64_t wrId = 0;
  uint32_t connId = 0;
  uint32_t status = 0;
  uint32_t opcode = 0;
  uint32_t byteLen = 0;
  uint32_t imm = 0;
  uint32_t flags = 0;
};

/** Writes `r` at `out` (kCompletionRecordBytes bytes). */
void encodeCompletion(const CompletionRecord& r, uint8_t* out);
/** Reads a record at `in` (kCompletionRecordBytes bytes). */
CompletionRecord decodeCompletion(const uint8_t* in);

/**
 * A bounded batch of records being filled by the polling thread: append() refuses once `capacity`
 * records are in (the thread then hands the batch over and starts another).
 */
class CompletionBatch {
 public:
  explicit CompletionBatch(size_t capacity);
  ~CompletionBatch();
  CompletionBatch(const CompletionBatch&) = delete;
  CompletionBatch& operator=(const CompletionBatch&) = delete;

  bool append(const CompletionRecord& r);
  size_t count() const { return count_; }
  size_t capacity() const { return capacity_; }
  size_t bytes() const { return count_ * kCompletionRecordBytes; }
  uint8_t* data() { return data_; }
  /** Gives up ownership of the bytes (malloc'd; the caller frees them with free()). */
  uint8_t* release();

 private:
  size_t capacity_;
  size_t count_ = 0;
  uint8_t* data_;
};

}  // namespace derecho_rdma
