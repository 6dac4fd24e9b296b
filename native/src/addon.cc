// derecho_rdma: a thin node-addon-api layer over libibverbs and librdmacm. No protocol logic: devices,
// one protection domain and completion queue per Device, registered memory shared with JavaScript as
// external ArrayBuffers (no copies), reliable-connected queue pairs set up through rdmacm, RDMA write and
// write with immediate, zero-length receives (for writes with immediate), and completions delivered by a
// polling thread through a thread-safe function. The ring, credit and framing protocol lives in
// TypeScript (node-agent/src/transport/rdma/).

#include <errno.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <poll.h>
#include <rdma/rdma_cma.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netdb.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <napi.h>

#include "completion_record.h"
#include "queue_limits.h"
#include "region_table.h"

using namespace derecho_rdma;

namespace {

constexpr size_t kRegionsMax = 4096;
constexpr size_t kCompletionBatchMax = 256;

std::string errnoText(int err) { return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")"; }

Napi::Error errorOf(Napi::Env env, const std::string& what, int err) {
  Napi::Error e = Napi::Error::New(env, what + ": " + errnoText(err));
  e.Set("errno", Napi::Number::New(env, err));
  return e;
}

const char* portStateName(ibv_port_state s) {
  switch (s) {
    case IBV_PORT_DOWN: return "down";
    case IBV_PORT_INIT: return "init";
    case IBV_PORT_ARMED: return "armed";
    case IBV_PORT_ACTIVE: return "active";
    case IBV_PORT_ACTIVE_DEFER: return "activeDefer";
    default: return "nop";
  }
}

const char* cmEventName(rdma_cm_event_type t) {
  switch (t) {
    case RDMA_CM_EVENT_ADDR_RESOLVED: return "addrResolved";
    case RDMA_CM_EVENT_ADDR_ERROR: return "addrError";
    case RDMA_CM_EVENT_ROUTE_RESOLVED: return "routeResolved";
    case RDMA_CM_EVENT_ROUTE_ERROR: return "routeError";
    case RDMA_CM_EVENT_CONNECT_REQUEST: return "connectRequest";
    case RDMA_CM_EVENT_CONNECT_RESPONSE: return "connectResponse";
    case RDMA_CM_EVENT_CONNECT_ERROR: return "connectError";
    case RDMA_CM_EVENT_UNREACHABLE: return "unreachable";
    case RDMA_CM_EVENT_REJECTED: return "rejected";
    case RDMA_CM_EVENT_ESTABLISHED: return "established";
    case RDMA_CM_EVENT_DISCONNECTED: return "disconnected";
    case RDMA_CM_EVENT_DEVICE_REMOVAL: return "deviceRemoval";
    case RDMA_CM_EVENT_TIMEWAIT_EXIT: return "timewaitExit";
    default: return "other";
  }
}

// ---- devices() ----------------------------------------------------------------------------------

/** The device's limits the addon sizes its queues by: numbers (all fit a double exactly), max_mr_size a bigint. */
Napi::Object LimitsOf(Napi::Env env, const ibv_device_attr& a) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("maxQueuePairs", a.max_qp);
  o.Set("maxQueuePairWorkRequests", a.max_qp_wr);
  o.Set("maxCompletionQueues", a.max_cq);
  o.Set("maxCompletionQueueEntries", a.max_cqe);
  o.Set("maxMemoryRegions", a.max_mr);
  o.Set("maxMemoryRegionBytes", Napi::BigInt::New(env, static_cast<uint64_t>(a.max_mr_size)));
  o.Set("maxScatterGatherEntries", a.max_sge);
  return o;
}

Napi::Value Devices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env);
  int count = 0;
  errno = 0;
  ibv_device** list = ibv_get_device_list(&count);
  if (list == nullptr) {
    // No RDMA subsystem in this kernel/container (ENOSYS) or no devices (ENODEV): zero devices.
    int err = errno;
    if (err == ENOSYS || err == ENODEV || err == ENOENT || err == 0) return out;
    throw errorOf(env, "ibv_get_device_list", err);
  }
  for (int i = 0; i < count; i++) {
    ibv_device* dev = list[i];
    Napi::Object d = Napi::Object::New(env);
    d.Set("name", ibv_get_device_name(dev));
    char guid[20];
    std::snprintf(guid, sizeof guid, "%016llx", static_cast<unsigned long long>(be64toh(ibv_get_device_guid(dev))));
    d.Set("guid", guid);
    Napi::Array ports = Napi::Array::New(env);
    ibv_context* ctx = ibv_open_device(dev);
    if (ctx == nullptr) {
      d.Set("error", "ibv_open_device: " + errnoText(errno));
    } else {
      ibv_device_attr attr;
      if (ibv_query_device(ctx, &attr) == 0) {
        for (uint8_t p = 1; p <= attr.phys_port_cnt; p++) {
          ibv_port_attr pa;
          if (ibv_query_port(ctx, p, &pa) != 0) continue;
          Napi::Object port = Napi::Object::New(env);
          port.Set("port", p);
          port.Set("state", portStateName(pa.state));
          port.Set("linkLayer", pa.link_layer == IBV_LINK_LAYER_ETHERNET ? "Ethernet" : "InfiniBand");
          port.Set("activeMtuBytes", 128 << pa.active_mtu);
          ports.Set(ports.Length(), port);
        }
        d.Set("limits", LimitsOf(env, attr));
      }
      ibv_close_device(ctx);
    }
    d.Set("ports", ports);
    out.Set(out.Length(), d);
  }
  ibv_free_device_list(list);
  return out;
}

// ---- Device ---------------------------------------------------------------------------------------

/** What the polling thread hands to the main thread: a batch of completions or one CM event. */
struct Delivery {
  uint8_t* completions = nullptr;  // malloc'd records
  size_t completionCount = 0;
  bool isCm = false;
  rdma_cm_event_type cmType = RDMA_CM_EVENT_ADDR_RESOLVED;
  rdma_cm_id* cmId = nullptr;
  rdma_cm_id* listenId = nullptr;
  int cmStatus = 0;
  std::vector<uint8_t> privateData;
  std::string fatal;  // the thread stopped on an error
  bool isAsync = false;  // an ibv async event: asyncType, asyncQpNum
  ibv_event_type asyncType = IBV_EVENT_COMM_EST;
  uint32_t asyncQpNum = 0;
};

struct Conn {
  uint32_t id = 0;
  rdma_cm_id* cm = nullptr;
  bool listener = false;
  bool hasQp = false;
  std::vector<uint8_t> connectPrivateData;  // dialer: sent with rdma_connect once the route is resolved
  int sendDepth = 0;
  int recvDepth = 0;
};

class Device : public Napi::ObjectWrap<Device> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Device", {
      InstanceMethod("register", &Device::Register),
      InstanceMethod("deregister", &Device::Deregister),
      InstanceMethod("listen", &Device::Listen),
      InstanceMethod("connect", &Device::Connect),
      InstanceMethod("accept", &Device::Accept),
      InstanceMethod("reject", &Device::Reject),
      InstanceMethod("disconnect", &Device::Disconnect),
      InstanceMethod("postWrite", &Device::PostWrite),
      InstanceMethod("postRecv", &Device::PostRecv),
      InstanceMethod("close", &Device::Close),
      InstanceMethod("limits", &Device::Limits),
      InstanceMethod("completionQueueEntries", &Device::CompletionQueueEntries),
    });
  }

  // new Device(name, onEvent, cqEntries?) : onEvent(kind, payload) with kind "completions" (ArrayBuffer
  // of records), "cm" ({ type, connId, listenerId, status, privateData }) or "fatal" ({ message }).
  // cqEntries: size of the one completion queue every connection shares (the transport keeps the sum of
  // its queue pairs' depths under it).
  explicit Device(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Device>(info), regions_(kRegionsMax) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsFunction()) {
      throw Napi::TypeError::New(env, "new Device(name: string, onEvent: function, cqEntries?: number)");
    }
    uint32_t cqRequested = info.Length() > 2 && info[2].IsNumber() ? U32(info, 2, "cqEntries") : 0;
    name_ = info[0].As<Napi::String>().Utf8Value();
    int count = 0;
    errno = 0;
    ibv_context** contexts = rdma_get_devices(&count);
    if (contexts == nullptr || count == 0) {
      int err = errno;
      if (contexts) rdma_free_devices(contexts);
      throw Napi::Error::New(env, "RDMA device " + name_ + ": no RDMA devices on this node" + (err ? " (" + errnoText(err) + ")" : ""));
    }
    std::string names;
    for (int i = 0; i < count; i++) {
      const char* n = ibv_get_device_name(contexts[i]->device);
      if (name_.empty() || name_ == n) { ctx_ = contexts[i]; break; }
      names += (names.empty() ? "" : ", ") + std::string(n);
    }
    rdma_free_devices(contexts);  // the contexts themselves stay open for rdmacm
    if (ctx_ == nullptr) throw Napi::Error::New(env, "no RDMA device named " + name_ + " (devices: " + names + ")");
    name_ = ibv_get_device_name(ctx_->device);
    if (ibv_query_device(ctx_, &attr_) != 0) throw errorOf(env, "RDMA device " + name_ + ": ibv_query_device", errno);
    QueueSize cq = completionQueueEntries(cqRequested, attr_.max_cqe, name_);
    if (!cq.ok) throw Napi::RangeError::New(env, cq.error);
    cqEntries_ = cq.entries;
    pd_ = ibv_alloc_pd(ctx_);
    if (pd_ == nullptr) throw errorOf(env, "RDMA device " + name_ + ": ibv_alloc_pd", errno);
    channel_ = ibv_create_comp_channel(ctx_);
    if (channel_ == nullptr) { int e = errno; Teardown(); throw errorOf(env, "RDMA device " + name_ + ": ibv_create_comp_channel", e); }
    cq_ = ibv_create_cq(ctx_, static_cast<int>(cqEntries_), nullptr, channel_, 0);
    if (cq_ == nullptr) { int e = errno; Teardown(); throw errorOf(env, "RDMA device " + name_ + ": ibv_create_cq of " + std::to_string(cqEntries_) + " entries (max_cqe " + std::to_string(attr_.max_cqe) + ")", e); }
    if (ibv_req_notify_cq(cq_, 0) != 0) { int e = errno; Teardown(); throw errorOf(env, "RDMA device " + name_ + ": ibv_req_notify_cq", e); }
    cmChannel_ = rdma_create_event_channel();
    if (cmChannel_ == nullptr) { int e = errno; Teardown(); throw errorOf(env, "RDMA device " + name_ + ": rdma_create_event_channel", e); }
    if (pipe(wakePipe_) != 0) { int e = errno; Teardown(); throw errorOf(env, "RDMA device " + name_ + ": pipe", e); }
    for (int fd : {channel_->fd, cmChannel_->fd, wakePipe_[0], ctx_->async_fd}) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "derecho_rdma completions", 0, 1);
    running_ = true;
    thread_ = std::thread([this] { PollLoop(); });
  }

  ~Device() override { Shutdown(); }

 private:
  // ---- teardown ----

  void Shutdown() {
    if (running_.exchange(false)) {
      char b = 1;
      ssize_t ignored = write(wakePipe_[1], &b, 1);
      (void)ignored;
      if (thread_.joinable()) thread_.join();
      // Abort, not Release: deliveries still queued are dropped without calling back into this object
      // (which may be being destroyed); a dropped completion batch is not freed (at most a few at close).
      tsfn_.Abort();
    }
    Teardown();
  }

  void Teardown() {
    for (auto& [id, c] : conns_) DestroyConn(c);
    conns_.clear();
    qpToConn_.clear();
    regions_.forEach([](uint32_t, const Region& r) { if (r.mr) ibv_dereg_mr(static_cast<ibv_mr*>(r.mr)); });
    // The memory itself belongs to its ArrayBuffers (freed by their finalizers).
    std::vector<uint32_t> handles;
    regions_.forEach([&](uint32_t h, const Region&) { handles.push_back(h); });
    for (uint32_t h : handles) regions_.remove(h, nullptr);
    if (cmChannel_) { rdma_destroy_event_channel(cmChannel_); cmChannel_ = nullptr; }
    if (cq_) { ibv_destroy_cq(cq_); cq_ = nullptr; }
    if (channel_) { ibv_destroy_comp_channel(channel_); channel_ = nullptr; }
    if (pd_) { ibv_dealloc_pd(pd_); pd_ = nullptr; }
    for (int& fd : wakePipe_) if (fd >= 0) { close(fd); fd = -1; }
  }

  void DestroyConn(Conn& c) {
    if (c.cm == nullptr) return;
    if (c.hasQp) rdma_destroy_qp(c.cm);
    rdma_destroy_id(c.cm);
    c.cm = nullptr;
    c.hasQp = false;
  }

  void CheckOpen(Napi::Env env, const char* what) {
    if (!running_) throw Napi::Error::New(env, std::string(what) + ": RDMA device " + name_ + " is closed");
  }

  // ---- polling thread ----

  void PollLoop() {
    pollfd fds[4] = {{channel_->fd, POLLIN, 0}, {cmChannel_->fd, POLLIN, 0}, {wakePipe_[0], POLLIN, 0}, {ctx_->async_fd, POLLIN, 0}};
    while (running_) {
      int n = poll(fds, 4, 1000);
      if (n < 0) {
        if (errno == EINTR) continue;
        Fatal("poll: " + errnoText(errno));
        return;
      }
      if (fds[2].revents) break;
      if (fds[0].revents & POLLIN) DrainCq();
      if (fds[1].revents & POLLIN) DrainCm();
      if (fds[3].revents & POLLIN) DrainAsync();
    }
  }

  /** Device and queue-pair errors that completions alone would not reveal (CQ overflow, fatal device). */
  void DrainAsync() {
    ibv_async_event ev;
    while (ibv_get_async_event(ctx_, &ev) == 0) {
      auto* d = new Delivery();
      d->isAsync = true;
      d->asyncType = ev.event_type;
      if (ev.event_type == IBV_EVENT_QP_FATAL || ev.event_type == IBV_EVENT_QP_REQ_ERR || ev.event_type == IBV_EVENT_QP_ACCESS_ERR) {
        d->asyncQpNum = ev.element.qp->qp_num;
      }
      ibv_ack_async_event(&ev);
      Hand(d);
    }
  }

  void Fatal(const std::string& why) {
    auto* d = new Delivery();
    d->fatal = why;
    Hand(d);
  }

  void Hand(Delivery* d) {
    napi_status s = tsfn_.BlockingCall(d, [this](Napi::Env env, Napi::Function fn, Delivery* d) { OnDelivery(env, fn, d); });
    if (s != napi_ok) {
      std::free(d->completions);
      delete d;
    }
  }

  void DrainCq() {
    ibv_cq* cq = nullptr;
    void* ctx = nullptr;
    if (ibv_get_cq_event(channel_, &cq, &ctx) != 0) return;
    ibv_ack_cq_events(cq, 1);
    if (ibv_req_notify_cq(cq_, 0) != 0) { Fatal("ibv_req_notify_cq: " + errnoText(errno)); return; }
    ibv_wc wcs[32];
    for (;;) {
      CompletionBatch batch(kCompletionBatchMax);
      int got = 0;
      while (batch.count() + 32 <= batch.capacity() && (got = ibv_poll_cq(cq_, 32, wcs)) > 0) {
        for (int i = 0; i < got; i++) {
          CompletionRecord r;
          r.wrId = wcs[i].wr_id;
          r.connId = wcs[i].qp_num;  // mapped to the connection id on the main thread
          r.status = wcs[i].status;
          r.opcode = wcs[i].opcode;
          r.byteLen = wcs[i].byte_len;
          if (wcs[i].wc_flags & IBV_WC_WITH_IMM) { r.imm = ntohl(wcs[i].imm_data); r.flags = kCompletionHasImm; }
          batch.append(r);
        }
      }
      if (got < 0) { Fatal("ibv_poll_cq failed"); return; }
      if (batch.count() == 0) return;
      bool full = batch.count() + 32 > batch.capacity();
      auto* d = new Delivery();
      d->completionCount = batch.count();
      d->completions = batch.release();
      Hand(d);
      if (!full) return;
    }
  }

  void DrainCm() {
    rdma_cm_event* ev = nullptr;
    while (rdma_get_cm_event(cmChannel_, &ev) == 0) {
      auto* d = new Delivery();
      d->isCm = true;
      d->cmType = ev->event;
      d->cmId = ev->id;
      d->listenId = ev->listen_id;
      d->cmStatus = ev->status < 0 ? -ev->status : ev->status;  // errors come as -errno (or a reject reason)
      if (ev->param.conn.private_data && ev->param.conn.private_data_len > 0) {
        const auto* p = static_cast<const uint8_t*>(ev->param.conn.private_data);
        d->privateData.assign(p, p + ev->param.conn.private_data_len);
      }
      rdma_ack_cm_event(ev);
      Hand(d);
    }
  }

  // ---- main thread: deliveries ----

  void OnDelivery(Napi::Env env, Napi::Function fn, Delivery* d) {
    std::unique_ptr<Delivery> own(d);
    if (!running_) { std::free(d->completions); return; }  // closed: nothing is reported after close()
    if (!d->fatal.empty()) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("message", "RDMA device " + name_ + ": polling thread stopped: " + d->fatal);
      fn.Call({Napi::String::New(env, "fatal"), o});
      return;
    }
    if (d->isAsync) {
      const char* what = ibv_event_type_str(d->asyncType);
      switch (d->asyncType) {
        case IBV_EVENT_QP_FATAL:
        case IBV_EVENT_QP_REQ_ERR:
        case IBV_EVENT_QP_ACCESS_ERR: {
          auto it = qpToConn_.find(d->asyncQpNum);
          if (it != qpToConn_.end()) Emit(env, fn, "qpError", it->second, 0, static_cast<int>(d->asyncType), {});
          return;
        }
        case IBV_EVENT_CQ_ERR:
        case IBV_EVENT_DEVICE_FATAL: {
          Napi::Object o = Napi::Object::New(env);
          o.Set("message", "RDMA device " + name_ + ": " + what);
          fn.Call({Napi::String::New(env, "fatal"), o});
          return;
        }
        default:
          return;  // port state changes, path migration, ...: the connections report what matters
      }
    }
    if (!d->isCm) {
      for (size_t i = 0; i < d->completionCount; i++) {
        uint8_t* rec = d->completions + i * kCompletionRecordBytes;
        CompletionRecord r = decodeCompletion(rec);
        auto it = qpToConn_.find(r.connId);
        r.connId = it == qpToConn_.end() ? 0 : it->second;
        encodeCompletion(r, rec);
      }
      uint8_t* bytes = d->completions;
      size_t len = d->completionCount * kCompletionRecordBytes;
      d->completions = nullptr;
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, len);
      std::memcpy(ab.Data(), bytes, len);
      std::free(bytes);
      fn.Call({Napi::String::New(env, "completions"), ab});
      return;
    }
    OnCm(env, fn, *d);
  }

  uint32_t ConnIdOf(rdma_cm_id* id) {
    for (auto& [cid, c] : conns_) if (c.cm == id) return cid;
    return 0;
  }

  void Emit(Napi::Env env, Napi::Function fn, const char* type, uint32_t connId, uint32_t listenerId, int status, const std::vector<uint8_t>& pd) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("type", type);
    o.Set("connId", connId);
    o.Set("listenerId", listenerId);
    o.Set("status", status);
    o.Set("privateData", Napi::Buffer<uint8_t>::Copy(env, pd.data(), pd.size()));
    fn.Call({Napi::String::New(env, "cm"), o});
  }

  void OnCm(Napi::Env env, Napi::Function fn, Delivery& d) {
    const char* type = cmEventName(d.cmType);
    if (d.cmType == RDMA_CM_EVENT_CONNECT_REQUEST) {
      uint32_t listenerId = ConnIdOf(d.listenId);
      if (listenerId == 0 || d.cmId->verbs != ctx_) {
        rdma_reject(d.cmId, nullptr, 0);
        rdma_destroy_id(d.cmId);
        return;
      }
      Conn c;
      c.id = nextConnId_++;
      c.cm = d.cmId;
      conns_[c.id] = c;
      Emit(env, fn, type, c.id, listenerId, 0, d.privateData);
      return;
    }
    uint32_t connId = ConnIdOf(d.cmId);
    if (connId == 0) return;  // a connection already destroyed
    Conn& c = conns_[connId];
    if (d.cmType == RDMA_CM_EVENT_ADDR_RESOLVED) {
      if (rdma_resolve_route(c.cm, 2000) != 0) Emit(env, fn, "routeError", connId, 0, errno, {});
      return;
    }
    if (d.cmType == RDMA_CM_EVENT_ROUTE_RESOLVED) {
      std::string err = CreateQp(c);
      if (!err.empty()) { Emit(env, fn, "connectError", connId, 0, errno ? errno : EINVAL, {}); return; }
      rdma_conn_param p;
      std::memset(&p, 0, sizeof p);
      p.private_data = c.connectPrivateData.data();
      p.private_data_len = static_cast<uint8_t>(c.connectPrivateData.size());
      p.responder_resources = 1;
      p.initiator_depth = 1;
      p.retry_count = 7;
      p.rnr_retry_count = 7;
      if (rdma_connect(c.cm, &p) != 0) Emit(env, fn, "connectError", connId, 0, errno, {});
      return;
    }
    Emit(env, fn, type, connId, 0, d.cmStatus, d.privateData);
  }

  std::string CreateQp(Conn& c) {
    if (c.hasQp) return "";
    if (c.cm->verbs != ctx_) return "the connection's route is over another RDMA device than " + name_;
    ibv_qp_init_attr attr;
    std::memset(&attr, 0, sizeof attr);
    attr.send_cq = cq_;
    attr.recv_cq = cq_;
    attr.qp_type = IBV_QPT_RC;
    attr.cap.max_send_wr = c.sendDepth;
    attr.cap.max_recv_wr = c.recvDepth;
    attr.cap.max_send_sge = 1;
    attr.cap.max_recv_sge = 1;
    attr.sq_sig_all = 0;
    if (rdma_create_qp(c.cm, pd_, &attr) != 0) return "rdma_create_qp: " + errnoText(errno);
    c.hasQp = true;
    qpToConn_[c.cm->qp->qp_num] = c.id;
    return "";
  }

  // ---- JavaScript API ----

  static uint32_t U32(const Napi::CallbackInfo& info, size_t i, const char* what) {
    if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a number");
    double v = info[i].As<Napi::Number>().DoubleValue();
    if (!(v >= 0 && v <= 4294967295.0) || v != static_cast<double>(static_cast<uint64_t>(v))) throw Napi::RangeError::New(info.Env(), std::string(what) + " must be a u32");
    return static_cast<uint32_t>(v);
  }

  static uint64_t Safe(const Napi::CallbackInfo& info, size_t i, const char* what) {
    if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a number");
    double v = info[i].As<Napi::Number>().DoubleValue();
    if (!(v >= 0 && v <= 9007199254740991.0) || v != static_cast<double>(static_cast<uint64_t>(v))) throw Napi::RangeError::New(info.Env(), std::string(what) + " must be a non-negative safe integer");
    return static_cast<uint64_t>(v);
  }

  std::vector<uint8_t> Bytes(const Napi::CallbackInfo& info, size_t i) {
    if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return {};
    if (!info[i].IsTypedArray()) throw Napi::TypeError::New(info.Env(), "privateData must be a Uint8Array");
    auto a = info[i].As<Napi::Uint8Array>();
    if (a.ByteLength() > 56) throw Napi::RangeError::New(info.Env(), "privateData is over 56 bytes (the rdmacm limit for RC connections)");
    return std::vector<uint8_t>(a.Data(), a.Data() + a.ByteLength());
  }

  Conn& ConnArg(const Napi::CallbackInfo& info, size_t i) {
    uint32_t id = U32(info, i, "connId");
    auto it = conns_.find(id);
    if (it == conns_.end() || it->second.cm == nullptr) throw Napi::Error::New(info.Env(), "no RDMA connection " + std::to_string(id) + " on device " + name_);
    return it->second;
  }

  // register(bytes) -> { handle, buffer: ArrayBuffer, addr: bigint, rkey }
  Napi::Value Register(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckOpen(env, "register");
    uint64_t len = Safe(info, 0, "bytes");
    if (len == 0) throw Napi::RangeError::New(env, "register: bytes must be at least 1");
    std::string tooBig = memoryRegionProblem(len, attr_.max_mr_size, name_);
    if (!tooBig.empty()) throw Napi::RangeError::New(env, "register: " + tooBig);
    void* mem = nullptr;
    if (posix_memalign(&mem, 4096, len) != 0) throw Napi::Error::New(env, "register: cannot allocate " + std::to_string(len) + " bytes");
    std::memset(mem, 0, len);
    ibv_mr* mr = ibv_reg_mr(pd_, mem, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    if (mr == nullptr) {
      int e = errno;
      std::free(mem);
      throw errorOf(env, "register: ibv_reg_mr of " + std::to_string(len) + " bytes on " + name_ + " (locked memory limit: see docs/rdma.md)", e);
    }
    Region r{static_cast<uint8_t*>(mem), len, mr->lkey, mr->rkey, mr};
    uint32_t handle = regions_.add(r);
    if (handle == 0) {
      ibv_dereg_mr(mr);
      std::free(mem);
      throw Napi::Error::New(env, "register: the region table is full (" + std::to_string(regions_.regionsMax()) + " regions)");
    }
    // The memory is freed when JavaScript drops the ArrayBuffer, never before (deregister only removes the MR).
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, mem, len, [](Napi::Env, void* p) { std::free(p); });
    Napi::Object o = Napi::Object::New(env);
    o.Set("handle", handle);
    o.Set("buffer", ab);
    o.Set("addr", Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(mem))));
    o.Set("rkey", mr->rkey);
    return o;
  }

  Napi::Value Deregister(const Napi::CallbackInfo& info) {
    Region r;
    if (!regions_.remove(U32(info, 0, "handle"), &r)) return Napi::Boolean::New(info.Env(), false);
    if (r.mr) ibv_dereg_mr(static_cast<ibv_mr*>(r.mr));
    return Napi::Boolean::New(info.Env(), true);
  }

  static bool ResolveAddress(const std::string& host, uint32_t port, sockaddr_storage* out, std::string* err) {
    addrinfo hints;
    std::memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (rc != 0 || res == nullptr) { *err = "cannot resolve " + host + ": " + gai_strerror(rc); return false; }
    std::memcpy(out, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return true;
  }

  // listen(host, port) -> { connId (listener id), port }
  Napi::Value Listen(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckOpen(env, "listen");
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "listen(host: string, port: number)");
    std::string host = info[0].As<Napi::String>().Utf8Value();
    uint32_t port = U32(info, 1, "port");
    sockaddr_storage addr;
    std::string err;
    if (!ResolveAddress(host, port, &addr, &err)) throw Napi::Error::New(env, "RDMA listen: " + err);
    rdma_cm_id* id = nullptr;
    if (rdma_create_id(cmChannel_, &id, nullptr, RDMA_PS_TCP) != 0) throw errorOf(env, "RDMA listen: rdma_create_id", errno);
    if (rdma_bind_addr(id, reinterpret_cast<sockaddr*>(&addr)) != 0) { int e = errno; rdma_destroy_id(id); throw errorOf(env, "RDMA listen: rdma_bind_addr " + host + ":" + std::to_string(port), e); }
    if (id->verbs != nullptr && id->verbs != ctx_) { rdma_destroy_id(id); throw Napi::Error::New(env, "RDMA listen: " + host + " is an address of another RDMA device than " + name_); }
    if (rdma_listen(id, 64) != 0) { int e = errno; rdma_destroy_id(id); throw errorOf(env, "RDMA listen: rdma_listen", e); }
    Conn c;
    c.id = nextConnId_++;
    c.cm = id;
    c.listener = true;
    conns_[c.id] = c;
    Napi::Object o = Napi::Object::New(env);
    o.Set("connId", c.id);
    o.Set("port", ntohs(rdma_get_src_port(id)));
    return o;
  }

  // connect(host, port, privateData, sendDepth, recvDepth) -> connId; "established" / "rejected" / "*Error" follow
  Napi::Value Connect(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckOpen(env, "connect");
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "connect(host, port, privateData, sendDepth, recvDepth)");
    std::string host = info[0].As<Napi::String>().Utf8Value();
    uint32_t port = U32(info, 1, "port");
    std::vector<uint8_t> pd = Bytes(info, 2);
    uint32_t sendDepth = U32(info, 3, "sendDepth"), recvDepth = U32(info, 4, "recvDepth");
    std::string depth = queuePairProblem(sendDepth, recvDepth, attr_.max_qp_wr, name_);
    if (!depth.empty()) throw Napi::RangeError::New(env, "RDMA connect: " + depth);
    sockaddr_storage addr;
    std::string err;
    if (!ResolveAddress(host, port, &addr, &err)) throw Napi::Error::New(env, "RDMA connect: " + err);
    rdma_cm_id* id = nullptr;
    if (rdma_create_id(cmChannel_, &id, nullptr, RDMA_PS_TCP) != 0) throw errorOf(env, "RDMA connect: rdma_create_id", errno);
    Conn c;
    c.id = nextConnId_++;
    c.cm = id;
    c.connectPrivateData = pd;
    c.sendDepth = static_cast<int>(sendDepth);
    c.recvDepth = static_cast<int>(recvDepth);
    conns_[c.id] = c;
    if (rdma_resolve_addr(id, nullptr, reinterpret_cast<sockaddr*>(&addr), 2000) != 0) {
      int e = errno;
      DestroyConn(conns_[c.id]);
      conns_.erase(c.id);
      throw errorOf(env, "RDMA connect: rdma_resolve_addr " + host + ":" + std::to_string(port), e);
    }
    return Napi::Number::New(env, c.id);
  }

  // accept(connId, privateData, sendDepth, recvDepth): creates the QP and accepts a connectRequest
  Napi::Value Accept(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckOpen(env, "accept");
    Conn& c = ConnArg(info, 0);
    std::vector<uint8_t> pd = Bytes(info, 1);
    uint32_t sendDepth = U32(info, 2, "sendDepth"), recvDepth = U32(info, 3, "recvDepth");
    std::string depth = queuePairProblem(sendDepth, recvDepth, attr_.max_qp_wr, name_);
    if (!depth.empty()) throw Napi::RangeError::New(env, "RDMA accept: " + depth);
    c.sendDepth = static_cast<int>(sendDepth);
    c.recvDepth = static_cast<int>(recvDepth);
    std::string err = CreateQp(c);
    if (!err.empty()) throw Napi::Error::New(env, "RDMA accept: " + err);
    rdma_conn_param p;
    std::memset(&p, 0, sizeof p);
    p.private_data = pd.data();
    p.private_data_len = static_cast<uint8_t>(pd.size());
    p.responder_resources = 1;
    p.initiator_depth = 1;
    p.rnr_retry_count = 7;
    if (rdma_accept(c.cm, &p) != 0) throw errorOf(env, "RDMA accept: rdma_accept", errno);
    return env.Undefined();
  }

  Napi::Value Reject(const Napi::CallbackInfo& info) {
    Conn& c = ConnArg(info, 0);
    uint32_t id = c.id;
    rdma_reject(c.cm, nullptr, 0);
    DestroyConn(c);
    conns_.erase(id);
    return info.Env().Undefined();
  }

  // disconnect(connId): disconnects (if connected) and destroys the QP and the id; no event follows
  Napi::Value Disconnect(const Napi::CallbackInfo& info) {
    Conn& c = ConnArg(info, 0);
    uint32_t id = c.id;
    if (!c.listener && c.hasQp) rdma_disconnect(c.cm);
    if (c.hasQp && c.cm->qp) qpToConn_.erase(c.cm->qp->qp_num);
    DestroyConn(c);
    conns_.erase(id);
    return info.Env().Undefined();
  }

  // postWrite(connId, wrId, handle, offset, length, remoteAddr: bigint, rkey, imm: number | null)
  Napi::Value PostWrite(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckOpen(env, "postWrite");
    Conn& c = ConnArg(info, 0);
    if (!c.hasQp) throw Napi::Error::New(env, "postWrite: RDMA connection " + std::to_string(c.id) + " has no queue pair yet");
    uint64_t wrId = Safe(info, 1, "wrId");
    uint32_t handle = U32(info, 2, "handle");
    uint64_t offset = Safe(info, 3, "offset");
    uint64_t length = Safe(info, 4, "length");
    if (info.Length() <= 5 || !info[5].IsBigInt()) throw Napi::TypeError::New(env, "postWrite: remoteAddr must be a bigint");
    bool lossless = false;
    uint64_t remoteAddr = info[5].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(env, "postWrite: remoteAddr must be a u64");
    uint32_t rkey = U32(info, 6, "rkey");
    bool withImm = info.Length() > 7 && info[7].IsNumber();
    uint32_t imm = withImm ? U32(info, 7, "imm") : 0;
    if (length > UINT32_MAX) throw Napi::RangeError::New(env, "postWrite: length is over 2^32 - 1");
    RegionSlice s = regions_.slice(handle, offset, length);
    if (!s.ok) throw Napi::RangeError::New(env, "postWrite: " + s.error);
    ibv_sge sge;
    sge.addr = reinterpret_cast<uintptr_t>(s.bytes);
    sge.length = static_cast<uint32_t>(length);
    sge.lkey = s.lkey;
    ibv_send_wr wr;
    std::memset(&wr, 0, sizeof wr);
    wr.wr_id = wrId;
    wr.sg_list = length > 0 ? &sge : nullptr;
    wr.num_sge = length > 0 ? 1 : 0;
    wr.opcode = withImm ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE;
    wr.send_flags = IBV_SEND_SIGNALED;
    if (withImm) wr.imm_data = htonl(imm);
    wr.wr.rdma.remote_addr = remoteAddr;
    wr.wr.rdma.rkey = rkey;
    ibv_send_wr* bad = nullptr;
    int rc = ibv_post_send(c.cm->qp, &wr, &bad);
    if (rc != 0) throw errorOf(env, "postWrite: ibv_post_send on RDMA connection " + std::to_string(c.id), rc);
    return env.Undefined();
  }

  // postRecv(connId, wrId, count): zero-length receives (each consumed by one write with immediate)
  Napi::Value PostRecv(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckOpen(env, "postRecv");
    Conn& c = ConnArg(info, 0);
    if (!c.hasQp) throw Napi::Error::New(env, "postRecv: RDMA connection " + std::to_string(c.id) + " has no queue pair yet");
    uint64_t wrId = Safe(info, 1, "wrId");
    uint32_t count = U32(info, 2, "count");
    for (uint32_t i = 0; i < count; i++) {
      ibv_recv_wr wr;
      std::memset(&wr, 0, sizeof wr);
      wr.wr_id = wrId;
      ibv_recv_wr* bad = nullptr;
      int rc = ibv_post_recv(c.cm->qp, &wr, &bad);
      if (rc != 0) throw errorOf(env, "postRecv: ibv_post_recv on RDMA connection " + std::to_string(c.id), rc);
    }
    return env.Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  // limits(): what ibv_query_device reported when the device was opened (see LimitsOf)
  Napi::Value Limits(const Napi::CallbackInfo& info) { return LimitsOf(info.Env(), attr_); }

  // completionQueueEntries(): the size of the completion queue every connection shares
  Napi::Value CompletionQueueEntries(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), cqEntries_); }

  std::string name_;
  ibv_device_attr attr_{};
  uint32_t cqEntries_ = 0;
  ibv_context* ctx_ = nullptr;
  ibv_pd* pd_ = nullptr;
  ibv_comp_channel* channel_ = nullptr;
  ibv_cq* cq_ = nullptr;
  rdma_event_channel* cmChannel_ = nullptr;
  int wakePipe_[2] = {-1, -1};
  RegionTable regions_;
  std::map<uint32_t, Conn> conns_;
  std::map<uint32_t, uint32_t> qpToConn_;
  uint32_t nextConnId_ = 1;
  Napi::ThreadSafeFunction tsfn_;
  std::atomic<bool> running_{false};
  std::thread thread_;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("devices", Napi::Function::New(env, Devices));
  exports.Set("Device", Device::Init(env));
  exports.Set("completionRecordBytes", static_cast<double>(kCompletionRecordBytes));
  return exports;
}

}  // namespace

NODE_API_MODULE(derecho_rdma, Init)
