#include "completion_record.h"

#include <cstdlib>
#include <new>

namespace derecho_rdma {

namespace {
void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}
uint64_t get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}
}  // namespace

void encodeCompletion(const CompletionRecord& r, uint8_t* out) {
  put64(out, r.wrId);
  put32(out + 8, r.connId);
  put32(out + 12, r.status);
  put32(out + 16, r.opcode);
  put32(out + 20, r.byteLen);
  put32(out + 24, r.imm);
  put32(out + 28, r.flags);
}

CompletionRecord decodeCompletion(const uint8_t* in) {
  CompletionRecord r;
  r.wrId = get64(in);
  r.connId = get32(in + 8);
  r.status = get32(in + 12);
  r.opcode = get32(in + 16);
  r.byteLen = get32(in + 20);
  r.imm = get32(in + 24);
  r.flags = get32(in + 28);
  return r;
}

CompletionBatch::CompletionBatch(size_t capacity)
    : capacity_(capacity), data_(static_cast<uint8_t*>(std::malloc(capacity == 0 ? 1 : capacity * kCompletionRecordBytes))) {
  if (data_ == nullptr) throw std::bad_alloc();
}

CompletionBatch::~CompletionBatch() { std::free(data_); }

bool CompletionBatch::append(const CompletionRecord& r) {
  if (data_ == nullptr || count_ >= capacity_) return false;
  encodeCompletion(r, data_ + count_ * kCompletionRecordBytes);
  count_++;
  return true;
}

uint8_t* CompletionBatch::release() {
  uint8_t* out = data_;
  data_ = nullptr;
  count_ = 0;
  capacity_ = 0;
  return out;
}

}  // namespace derecho_rdma
