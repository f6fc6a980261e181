// koala_rdma: the native verbs addon. A thin binding: JavaScript validates every argument
// first and this file validates it again, throwing the KoalaError the JavaScript side handed
// to init() (never aborting). No global JavaScript state: each environment (main thread,
// worker) has its own instance data, so the addon is context-aware.
#include <arpa/inet.h>
#include <fcntl.h>
#include <napi.h>
#include <uv.h>

#include <cerrno>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <unordered_map>
#include <string>
#include <vector>

#include "libs.h"

namespace koala {
namespace {

constexpr const char* kInvalidArgument = "KOALA_ERR_INVALID_ARGUMENT";
constexpr const char* kVerbs = "KOALA_ERR_VERBS";
constexpr size_t kMaxPathBytes = 4095;

constexpr const char* kDestroyed = "KOALA_ERR_HANDLE_DESTROYED";
constexpr const char* kInUse = "KOALA_ERR_HANDLE_IN_USE";

// Verbs objects are handed to JavaScript as numbers: tag (16 bits, random per environment) *
// 2^36 + generation (16 bits) * 2^20 + slot (20 bits). A destroyed object's slot gets a new
// generation, so its old handle is refused, never reused; a handle of another thread's
// environment is refused by its tag.
enum class Kind : uint8_t { kFree = 0, kContext, kPd, kMr, kCq, kQp, kMw, kCmId, kListener };
constexpr double kTagUnit = 68719476736.0;  // 2^36
constexpr double kGenUnit = 1048576.0;      // 2^20
constexpr uint32_t kMaxSlots = 1u << 20;
constexpr int kAccessMask = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |
                            IBV_ACCESS_REMOTE_ATOMIC | IBV_ACCESS_MW_BIND;

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kContext: return "device context";
    case Kind::kPd: return "protection domain";
    case Kind::kMr: return "memory region";
    case Kind::kCq: return "completion queue";
    case Kind::kQp: return "queue pair";
    case Kind::kMw: return "memory window";
    case Kind::kCmId: return "CM identifier";
    case Kind::kListener: return "CM listener";
    default: return "object";
  }
}

struct Object {
  Kind kind = Kind::kFree;
  uint16_t gen = 0;
  uint32_t parent = 0;  // slot + 1 of the object this one depends on; 0 for none
  uint32_t users = 0;   // objects that depend on this one
  void* ptr = nullptr;  // ibv_context*, ibv_pd*, ibv_mr*, NativeCq*, NativeQp*, NativeMw*, NativeCmId*
  // A device context taken from rdma_get_devices: that list (freed on close) instead of an
  // ibv_open_device context (closed on close).
  ibv_context** cm_devices = nullptr;
  Napi::Reference<Napi::ArrayBuffer> keep;  // an MR's buffer, held (never collected) while registered
};

// A completion queue with its own completion channel, whose fd libuv watches: when it turns
// readable the events are read and acknowledged and `on_notify` runs (JavaScript then polls
// and re-arms). The uv_poll_t outlives the CQ until libuv has closed it.
struct NativeCq {
  ibv_cq* cq = nullptr;
  ibv_comp_channel* channel = nullptr;
  uv_poll_t* poll = nullptr;
  napi_env env = nullptr;
  Napi::FunctionReference on_notify;
};

// A queue pair with what it depends on besides its PD (the object's parent): its two CQs.
struct NativeQp {
  ibv_qp* qp = nullptr;
  uint32_t context = 0;  // slot of its device context (lkeys are per device)
  uint32_t send_cq = 0;  // slots
  uint32_t recv_cq = 0;
  uint32_t cm_id = 0;    // slot + 1 of the CM identifier it was created on (rdma_create_qp); 0: ibv_create_qp
  ibv_qp_cap cap{};
};

// A type-2 memory window, bound to one queue pair over a range of one region (both count it
// among their users, so neither goes while it is bound). Its parent is the PD.
struct NativeMw {
  ibv_mw* mw = nullptr;
  uint32_t qp = 0;    // slots
  uint32_t mr = 0;
  uint32_t rkey = 0;  // the key of the current binding (ibv_inc_rkey of the window's)
  bool bound = true;  // false once a local invalidate was posted
};

// A connection-manager identifier: a connection (kCmId) or a listener (kListener). Its parent is
// the device context it was made for; a connection's QP counts among its users.
struct NativeCmId {
  rdma_cm_id* id = nullptr;
  uint32_t qp = 0;  // slot + 1 of its queue pair, 0 for none
};

// A registered region as work requests may name it: every scatter-gather entry must lie inside
// a live region of this environment with its lkey (an INLINE send is copied by the CPU, in the
// post call, from whatever address it names).
struct MrRange {
  uint64_t addr;
  uint64_t length;
  uint32_t slot;  // the MR's slot: its buffer is checked for detachment at every post
  int access;     // ibv_access_flags it was registered with
};

// by_lkey's key: lkeys are unique per device only.
uint64_t LkeyKey(uint32_t context_slot, uint32_t lkey) { return (static_cast<uint64_t>(context_slot) << 32) | lkey; }

struct AddonData {
  Napi::FunctionReference make_error;  // (code, message) => KoalaError
  std::unordered_map<uint64_t, MrRange> by_lkey;
  uint16_t tag = 0;
  std::vector<Object> objects;
  std::vector<uint32_t> free_slots;
  napi_env env = nullptr;
  // The connection manager of this environment: one event channel (non-blocking fd watched by
  // libuv), the JavaScript function every event goes to, and the identifiers by pointer. The
  // watch keeps the event loop alive only while JavaScript says so (cmRef): while a listener
  // listens or a connection is being made or is up, as a socket would.
  rdma_event_channel* cm_channel = nullptr;
  uv_poll_t* cm_poll = nullptr;
  Napi::FunctionReference on_cm_event;
  std::unordered_map<rdma_cm_id*, uint32_t> by_cm_id;
};

AddonData* Data(Napi::Env env) { return env.GetInstanceData<AddonData>(); }

// Throws the JavaScript error made by init()'s factory, or a plain Error carrying `code` when
// init() was not called.
[[noreturn]] void Throw(Napi::Env env, const char* code, const std::string& message) {
  AddonData* data = Data(env);
  if (data != nullptr && !data->make_error.IsEmpty()) {
    Napi::Value err = data->make_error.Call({Napi::String::New(env, code), Napi::String::New(env, message)});
    throw Napi::Error(env, err);
  }
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  throw err;
}

void ExpectArgs(const Napi::CallbackInfo& info, const char* fn, size_t min, size_t max) {
  if (info.Length() < min || info.Length() > max) {
    Throw(info.Env(), kInvalidArgument,
          std::string(fn) + ": expected " + std::to_string(min) + (min == max ? "" : "-" + std::to_string(max)) +
              " arguments, got " + std::to_string(info.Length()));
  }
}

std::string PathArg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* what) {
  if (!info[i].IsString()) Throw(info.Env(), kInvalidArgument, std::string(fn) + ": " + what + " must be a string");
  std::string s = info[i].As<Napi::String>().Utf8Value();
  if (s.empty() || s.size() > kMaxPathBytes || s.find('\0') != std::string::npos) {
    Throw(info.Env(), kInvalidArgument, std::string(fn) + ": " + what + " must be 1 to 4095 bytes with no NUL");
  }
  return s;
}

// init(makeError): the factory every later error goes through. Must come first.
Napi::Value Init(const Napi::CallbackInfo& info) {
  ExpectArgs(info, "init", 1, 1);
  if (!info[0].IsFunction()) Throw(info.Env(), kInvalidArgument, "init: makeError must be a function");
  Data(info.Env())->make_error = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

// load(verbsPath, rdmacmPath): opens the libraries (once per process); returns undefined, or
// the reason they cannot be used ("libibverbs not found (…)").
Napi::Value LoadLibs(const Napi::CallbackInfo& info) {
  ExpectArgs(info, "load", 2, 2);
  std::string verbs = PathArg(info, 0, "load", "verbsPath");
  std::string rdmacm = PathArg(info, 1, "load", "rdmacmPath");
  LoadResult r = Load(verbs, rdmacm);
  if (r.ok) return info.Env().Undefined();
  return Napi::String::New(info.Env(), r.reason);
}


// Closes what it holds on every path out of a scope (an exception included).
struct DeviceList {
  ibv_device** list = nullptr;
  ~DeviceList() {
    if (list != nullptr) V().free_device_list(list);
  }
};
struct OpenContext {
  ibv_context* ctx = nullptr;
  ~OpenContext() {
    if (ctx != nullptr) V().close_device(ctx);
  }
};

std::string Errno(const char* what, int err) { return std::string(what) + ": " + std::strerror(err); }

// The largest max_inline_data an RC queue pair of this device accepts (the device attributes
// do not report it), found by creating a throw-away QP; -1 when no QP could be created.
int ProbeMaxInline(ibv_context* ctx) {
  int found = -1;
  ibv_pd* pd = V().alloc_pd(ctx);
  if (pd == nullptr) return -1;
  ibv_cq* cq = V().create_cq(ctx, 2, nullptr, nullptr, 0);
  if (cq != nullptr) {
    for (uint32_t want : {1024u, 512u, 256u, 128u, 64u, 32u, 0u}) {
      ibv_qp_init_attr attr;
      std::memset(&attr, 0, sizeof(attr));
      attr.send_cq = cq;
      attr.recv_cq = cq;
      attr.qp_type = IBV_QPT_RC;
      attr.cap.max_send_wr = 1;
      attr.cap.max_recv_wr = 1;
      attr.cap.max_send_sge = 1;
      attr.cap.max_recv_sge = 1;
      attr.cap.max_inline_data = want;
      ibv_qp* qp = V().create_qp(pd, &attr);
      if (qp != nullptr) {
        // Providers write the capacity actually granted back into attr.cap.
        found = static_cast<int>(attr.cap.max_inline_data >= want ? attr.cap.max_inline_data : want);
        V().destroy_qp(qp);
        break;
      }
    }
    V().destroy_cq(cq);
  }
  V().dealloc_pd(pd);
  return found;
}

Napi::Object Port(Napi::Env env, ibv_context* ctx, uint8_t port) {
  Napi::Object p = Napi::Object::New(env);
  p.Set("port", port);
  ibv_port_attr attr;
  int rc = QueryPort(ctx, port, &attr);
  if (rc != 0) {
    p.Set("error", Errno("ibv_query_port", rc > 0 ? rc : errno));
    return p;
  }
  p.Set("state", static_cast<double>(attr.state));
  p.Set("linkLayer", static_cast<double>(attr.link_layer));
  p.Set("activeMtu", static_cast<double>(attr.active_mtu));
  p.Set("lid", static_cast<double>(attr.lid));
  p.Set("gidTableLen", static_cast<double>(attr.gid_tbl_len));
  ibv_gid gid;
  std::memset(&gid, 0, sizeof(gid));
  if (attr.gid_tbl_len > 0 && V().query_gid(ctx, port, 0, &gid) == 0) {
    char text[INET6_ADDRSTRLEN];
    if (inet_ntop(AF_INET6, gid.raw, text, sizeof(text)) != nullptr) p.Set("gid", text);
  }
  return p;
}

Napi::Object Device(Napi::Env env, ibv_device* dev, bool probe_inline) {
  Napi::Object d = Napi::Object::New(env);
  const char* name = V().get_device_name(dev);
  d.Set("name", name != nullptr ? name : "");
  OpenContext open;
  errno = 0;
  open.ctx = V().open_device(dev);
  if (open.ctx == nullptr) {
    d.Set("error", Errno("ibv_open_device", errno != 0 ? errno : ENODEV));
    return d;
  }
  ibv_device_attr attr;
  std::memset(&attr, 0, sizeof(attr));
  int rc = V().query_device(open.ctx, &attr);
  if (rc != 0) {
    d.Set("error", Errno("ibv_query_device", rc > 0 ? rc : errno));
    return d;
  }
  d.Set("fwVer", attr.fw_ver);
  d.Set("vendorId", static_cast<double>(attr.vendor_id));
  d.Set("vendorPartId", static_cast<double>(attr.vendor_part_id));
  d.Set("maxQp", static_cast<double>(attr.max_qp));
  d.Set("maxQpWr", static_cast<double>(attr.max_qp_wr));
  d.Set("maxSge", static_cast<double>(attr.max_sge));
  d.Set("maxCq", static_cast<double>(attr.max_cq));
  d.Set("maxCqe", static_cast<double>(attr.max_cqe));
  d.Set("maxMr", static_cast<double>(attr.max_mr));
  d.Set("maxMrSize", static_cast<double>(attr.max_mr_size));
  d.Set("maxPd", static_cast<double>(attr.max_pd));
  Napi::Array ports = Napi::Array::New(env, attr.phys_port_cnt);
  for (uint8_t i = 1; i <= attr.phys_port_cnt && i != 0; i++) ports.Set(static_cast<uint32_t>(i - 1), Port(env, open.ctx, i));
  d.Set("ports", ports);
  d.Set("maxInlineData", probe_inline ? ProbeMaxInline(open.ctx) : -1);
  return d;
}

// devices(probeInline?): every device libibverbs lists, each opened, queried and closed again.
// A device that cannot be opened or queried carries `error` instead of its attributes.
Napi::Value Devices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "devices", 0, 1);
  if (info.Length() == 1 && !info[0].IsBoolean() && !info[0].IsUndefined()) {
    Throw(env, kInvalidArgument, "devices: probeInline must be a boolean");
  }
  bool probe = info.Length() == 1 && info[0].IsBoolean() && info[0].As<Napi::Boolean>().Value();
  if (!Loaded()) Throw(env, kVerbs, "devices: libibverbs is not loaded (call load() first)");
  DeviceList list;
  int n = 0;
  errno = 0;
  list.list = V().get_device_list(&n);
  if (list.list == nullptr) {
    int err = errno != 0 ? errno : ENODEV;
    // rdma-core answers ENOSYS when the kernel has no uverbs support at all.
    Throw(env, kVerbs, Errno("ibv_get_device_list", err) + (err == ENOSYS ? "; the kernel has no RDMA support (no /sys/class/infiniband_verbs)" : ""));
  }
  Napi::Array out = Napi::Array::New(env);
  for (int i = 0; i < n && list.list[i] != nullptr; i++) out.Set(static_cast<uint32_t>(i), Device(env, list.list[i], probe));
  return out;
}


// ---- objects -------------------------------------------------------------------------------

double HandleOf(AddonData* d, uint32_t slot) {
  return d->tag * kTagUnit + d->objects[slot].gen * kGenUnit + slot;
}

uint32_t NewSlot(Napi::Env env, AddonData* d) {
  if (!d->free_slots.empty()) {
    uint32_t slot = d->free_slots.back();
    d->free_slots.pop_back();
    return slot;
  }
  if (d->objects.size() >= kMaxSlots) Throw(env, kVerbs, "too many verbs objects in this thread");
  d->objects.emplace_back();
  return static_cast<uint32_t>(d->objects.size() - 1);
}

// Throws unless a slot is free: called before creating a native object, so that storing it
// cannot fail afterwards (and leak it).
void RequireSlot(Napi::Env env, const char* fn) {
  AddonData* d = Data(env);
  if (d->free_slots.empty() && d->objects.size() >= kMaxSlots) Throw(env, kVerbs, std::string(fn) + ": too many verbs objects in this thread");
}

// The live object of `kind` named by argument i, or a thrown KoalaError.
uint32_t Arg(const Napi::CallbackInfo& info, size_t i, Kind kind, const char* fn) {
  Napi::Env env = info.Env();
  AddonData* d = Data(env);
  std::string what = std::string(fn) + ": argument " + std::to_string(i + 1);
  if (!info[i].IsNumber()) Throw(env, kInvalidArgument, what + " must be a " + KindName(kind) + " handle");
  double h = info[i].As<Napi::Number>().DoubleValue();
  if (!(h >= 0) || h >= 4503599627370496.0 || std::floor(h) != h) Throw(env, kInvalidArgument, what + " is not a handle");
  double tag = std::floor(h / kTagUnit);
  double rest = h - tag * kTagUnit;
  double gen = std::floor(rest / kGenUnit);
  uint32_t slot = static_cast<uint32_t>(rest - gen * kGenUnit);
  if (tag != d->tag) Throw(env, kInvalidArgument, what + " is not a handle of this thread");
  if (slot >= d->objects.size() || d->objects[slot].gen != gen || d->objects[slot].kind == Kind::kFree) {
    Throw(env, kDestroyed, what + ": the " + KindName(kind) + " was destroyed");
  }
  if (d->objects[slot].kind != kind) {
    Throw(env, kInvalidArgument, what + " is a " + KindName(d->objects[slot].kind) + ", not a " + KindName(kind));
  }
  return slot;
}

void OnPollClosed(uv_handle_t* handle) { delete reinterpret_cast<uv_poll_t*>(handle); }


void DestroyNativeCq(NativeCq* c) {
  if (c->poll != nullptr) {
    uv_poll_stop(c->poll);
    c->poll->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(c->poll), OnPollClosed);
  }
  // Every event was acknowledged as it was read, so ibv_destroy_cq cannot block.
  if (c->cq != nullptr) V().destroy_cq(c->cq);
  if (c->channel != nullptr) V().destroy_comp_channel(c->channel);
  c->on_notify.Reset();
  delete c;
}

// Frees the native object in `slot` (its dependants are already gone) and retires the handle.
void Release(AddonData* d, uint32_t slot) {
  Object& o = d->objects[slot];
  switch (o.kind) {
    case Kind::kMr:
      d->by_lkey.erase(LkeyKey(d->objects[o.parent - 1].parent - 1, static_cast<ibv_mr*>(o.ptr)->lkey));
      V().dereg_mr(static_cast<ibv_mr*>(o.ptr));
      break;
    case Kind::kQp: {
      NativeQp* q = static_cast<NativeQp*>(o.ptr);
      if (q->cm_id != 0) {
        NativeCmId* c = static_cast<NativeCmId*>(d->objects[q->cm_id - 1].ptr);
        Cm().destroy_qp(c->id);
        c->qp = 0;
        d->objects[q->cm_id - 1].users--;
      } else {
        V().destroy_qp(q->qp);
      }
      d->objects[q->send_cq].users--;
      d->objects[q->recv_cq].users--;
      delete q;
      break;
    }
    case Kind::kMw: {
      NativeMw* w = static_cast<NativeMw*>(o.ptr);
      ibv_dealloc_mw(w->mw);  // invalidates the binding: the rkey is refused from here on
      d->objects[w->qp].users--;
      d->objects[w->mr].users--;
      delete w;
      break;
    }
    case Kind::kCmId:
    case Kind::kListener: {
      NativeCmId* c = static_cast<NativeCmId*>(o.ptr);
      d->by_cm_id.erase(c->id);
      // Every event of the identifier was acknowledged when it was read, so this cannot block.
      Cm().destroy_id(c->id);
      delete c;
      break;
    }
    case Kind::kPd: V().dealloc_pd(static_cast<ibv_pd*>(o.ptr)); break;
    case Kind::kContext:
      if (o.cm_devices != nullptr) {
        Cm().free_devices(o.cm_devices);
        o.cm_devices = nullptr;
      } else {
        V().close_device(static_cast<ibv_context*>(o.ptr));
      }
      break;
    case Kind::kCq: DestroyNativeCq(static_cast<NativeCq*>(o.ptr)); break;
    default: return;
  }
  if (o.parent != 0) d->objects[o.parent - 1].users--;
  if (!o.keep.IsEmpty()) o.keep.Reset();
  o.kind = Kind::kFree;
  o.ptr = nullptr;
  o.parent = 0;
  o.users = 0;
  o.gen = static_cast<uint16_t>(o.gen + 1);
  d->free_slots.push_back(slot);
}

// Destroys the object named by argument 0, refusing while others depend on it.
Napi::Value Destroy(const Napi::CallbackInfo& info, Kind kind, const char* fn, const char* dependants) {
  ExpectArgs(info, fn, 1, 1);
  AddonData* d = Data(info.Env());
  uint32_t slot = Arg(info, 0, kind, fn);
  if (d->objects[slot].users > 0) {
    Throw(info.Env(), kInUse, std::string(fn) + ": the " + KindName(kind) + " still has " + std::to_string(d->objects[slot].users) + " " + dependants);
  }
  Release(d, slot);
  return info.Env().Undefined();
}

uint32_t Store(Napi::Env env, Kind kind, void* ptr, uint32_t parent_slot_plus_one) {
  AddonData* d = Data(env);
  uint32_t slot = NewSlot(env, d);
  Object& o = d->objects[slot];
  o.kind = kind;
  o.ptr = ptr;
  o.parent = parent_slot_plus_one;
  o.users = 0;
  if (parent_slot_plus_one != 0) d->objects[parent_slot_plus_one - 1].users++;
  return slot;
}

// Everything still open when the environment ends (a worker exits, the process exits):
// memory regions first, then protection domains, then devices.
void CleanupEnv(AddonData* d) {
  // Windows before their QPs and regions; QPs before their identifiers (rdma_destroy_qp first)
  // and CQs; identifiers and listeners before the event channel; PDs, then devices last.
  for (Kind kind : {Kind::kMw, Kind::kQp, Kind::kMr, Kind::kCmId, Kind::kListener, Kind::kCq, Kind::kPd, Kind::kContext}) {
    for (uint32_t slot = 0; slot < d->objects.size(); slot++) {
      if (d->objects[slot].kind == kind) Release(d, slot);
    }
  }
  if (d->cm_poll != nullptr) {
    uv_poll_stop(d->cm_poll);
    d->cm_poll->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(d->cm_poll), OnPollClosed);
    d->cm_poll = nullptr;
  }
  if (d->cm_channel != nullptr) {
    Cm().destroy_event_channel(d->cm_channel);
    d->cm_channel = nullptr;
  }
  d->on_cm_event.Reset();
}

void RequireLoaded(Napi::Env env, const char* fn) {
  if (!Loaded()) Throw(env, kVerbs, std::string(fn) + ": libibverbs is not loaded (call load() first)");
}

// The context of device `name` from librdmacm's list (rdma_get_devices): the one its identifiers
// are resolved to, which rdma_create_qp requires of the PD (pd->context == id->verbs).
Napi::Value OpenCmDevice(Napi::Env env, const std::string& name) {
  int n = 0;
  errno = 0;
  ibv_context** list = Cm().get_devices(&n);
  if (list == nullptr) Throw(env, kVerbs, Errno("openDevice: rdma_get_devices", errno != 0 ? errno : ENODEV));
  for (int i = 0; i < n && list[i] != nullptr; i++) {
    const char* dev_name = list[i]->device != nullptr ? V().get_device_name(list[i]->device) : nullptr;
    if (dev_name == nullptr || name != dev_name) continue;
    uint32_t slot = Store(env, Kind::kContext, list[i], 0);
    Data(env)->objects[slot].cm_devices = list;
    return Napi::Number::New(env, HandleOf(Data(env), slot));
  }
  Cm().free_devices(list);
  Throw(env, kVerbs, "openDevice: the connection manager has no RDMA device named " + name);
}

// openDevice(name, forCm?) -> handle of an opened device context. With forCm, the context is
// librdmacm's (rdma_get_devices), for queue pairs of the connection manager; otherwise
// ibv_open_device's.
Napi::Value OpenDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "openDevice", 1, 2);
  if (!info[0].IsString()) Throw(env, kInvalidArgument, "openDevice: name must be a string");
  std::string name = info[0].As<Napi::String>().Utf8Value();
  if (name.empty() || name.size() > 63 || name.find('\0') != std::string::npos) {
    Throw(env, kInvalidArgument, "openDevice: name must be 1 to 63 bytes with no NUL");
  }
  if (info.Length() == 2 && !info[1].IsBoolean() && !info[1].IsUndefined()) Throw(env, kInvalidArgument, "openDevice: forCm must be a boolean");
  RequireLoaded(env, "openDevice");
  RequireSlot(env, "openDevice");
  if (info.Length() == 2 && info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value()) return OpenCmDevice(env, name);
  DeviceList list;
  int n = 0;
  errno = 0;
  list.list = V().get_device_list(&n);
  if (list.list == nullptr) Throw(env, kVerbs, Errno("openDevice: ibv_get_device_list", errno != 0 ? errno : ENODEV));
  for (int i = 0; i < n && list.list[i] != nullptr; i++) {
    const char* dev_name = V().get_device_name(list.list[i]);
    if (dev_name == nullptr || name != dev_name) continue;
    errno = 0;
    ibv_context* ctx = V().open_device(list.list[i]);
    if (ctx == nullptr) Throw(env, kVerbs, Errno(("openDevice: ibv_open_device " + name).c_str(), errno != 0 ? errno : ENODEV));
    return Napi::Number::New(env, HandleOf(Data(env), Store(env, Kind::kContext, ctx, 0)));
  }
  Throw(env, kVerbs, "openDevice: no RDMA device named " + name);
}

Napi::Value CloseDevice(const Napi::CallbackInfo& info) {
  return Destroy(info, Kind::kContext, "closeDevice", "protection domains or completion queues");
}

// allocPd(context) -> handle.
Napi::Value AllocPd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "allocPd", 1, 1);
  uint32_t ctx = Arg(info, 0, Kind::kContext, "allocPd");
  RequireSlot(env, "allocPd");
  errno = 0;
  ibv_pd* pd = V().alloc_pd(static_cast<ibv_context*>(Data(env)->objects[ctx].ptr));
  if (pd == nullptr) Throw(env, kVerbs, Errno("allocPd: ibv_alloc_pd", errno != 0 ? errno : ENOMEM));
  return Napi::Number::New(env, HandleOf(Data(env), Store(env, Kind::kPd, pd, ctx + 1)));
}

Napi::Value DeallocPd(const Napi::CallbackInfo& info) {
  return Destroy(info, Kind::kPd, "deallocPd", "memory regions or queue pairs");
}

uint64_t Index(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* what, double max) {
  if (!info[i].IsNumber()) Throw(info.Env(), kInvalidArgument, std::string(fn) + ": " + what + " must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v > max || std::floor(v) != v) {
    Throw(info.Env(), kInvalidArgument, std::string(fn) + ": " + what + " must be an integer from 0 to " + std::to_string(static_cast<uint64_t>(max)));
  }
  return static_cast<uint64_t>(v);
}

// regMr(pd, arrayBuffer, offset, length, access) -> { handle, lkey, rkey, addr }. The buffer
// is held by a strong reference until deregMr (or the environment's end), so the garbage
// collector can never free memory the NIC may still access.
Napi::Value RegMr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "regMr", 5, 5);
  uint32_t pd = Arg(info, 0, Kind::kPd, "regMr");
  if (!info[1].IsArrayBuffer()) Throw(env, kInvalidArgument, "regMr: buffer must be an ArrayBuffer");
  Napi::ArrayBuffer buffer = info[1].As<Napi::ArrayBuffer>();
  size_t size = buffer.ByteLength();
  uint64_t offset = Index(info, 2, "regMr", "offset", 9007199254740991.0);
  uint64_t length = Index(info, 3, "regMr", "length", 9007199254740991.0);
  uint64_t access = Index(info, 4, "regMr", "access", 255);
  if (length == 0 || offset > size || length > size - offset) {
    Throw(env, kInvalidArgument, "regMr: the range " + std::to_string(offset) + "+" + std::to_string(length) + " is not inside the " + std::to_string(size) + "-byte buffer (or is empty)");
  }
  if ((access & ~static_cast<uint64_t>(kAccessMask)) != 0) Throw(env, kInvalidArgument, "regMr: access has unknown flags");
  if ((access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC)) != 0 && (access & IBV_ACCESS_LOCAL_WRITE) == 0) {
    Throw(env, kInvalidArgument, "regMr: REMOTE_WRITE needs LOCAL_WRITE");
  }
  uint8_t* base = static_cast<uint8_t*>(buffer.Data());
  if (base == nullptr) Throw(env, kInvalidArgument, "regMr: the buffer is detached");
  RequireSlot(env, "regMr");
  errno = 0;
  ibv_mr* mr = V().reg_mr(static_cast<ibv_pd*>(Data(env)->objects[pd].ptr), base + offset, length, static_cast<int>(access));
  if (mr == nullptr) Throw(env, kVerbs, Errno("regMr: ibv_reg_mr", errno != 0 ? errno : ENOMEM));
  uint32_t slot = Store(env, Kind::kMr, mr, pd + 1);
  Data(env)->by_lkey[LkeyKey(Data(env)->objects[pd].parent - 1, mr->lkey)] = MrRange{reinterpret_cast<uintptr_t>(base + offset), length, slot, static_cast<int>(access)};
  Data(env)->objects[slot].keep = Napi::Persistent(buffer);
  Napi::Object out = Napi::Object::New(env);
  out.Set("handle", HandleOf(Data(env), slot));
  out.Set("lkey", static_cast<double>(mr->lkey));
  out.Set("rkey", static_cast<double>(mr->rkey));
  out.Set("addr", static_cast<double>(reinterpret_cast<uintptr_t>(mr->addr)));
  return out;
}

Napi::Value DeregMr(const Napi::CallbackInfo& info) {
  return Destroy(info, Kind::kMr, "deregMr", "users");
}


// Completion channel readable: read and acknowledge every pending event (the fd is
// non-blocking), then tell JavaScript once.
void OnChannelReadable(uv_poll_t* handle, int status, int events) {
  (void)status;
  (void)events;
  NativeCq* c = static_cast<NativeCq*>(handle->data);
  if (c == nullptr) return;
  unsigned int got = 0;
  ibv_cq* ev_cq = nullptr;
  void* ev_ctx = nullptr;
  while (V().get_cq_event(c->channel, &ev_cq, &ev_ctx) == 0) got++;
  if (got > 0) V().ack_cq_events(c->cq, got);
  if (got == 0 && status == 0) return;  // a spurious wake-up
  Napi::Env env(c->env);
  Napi::HandleScope scope(env);
  try {
    c->on_notify.MakeCallback(env.Global(), {});
  } catch (const Napi::Error& e) {
    // Nothing JavaScript can catch called us: an exception here is an uncaught exception.
    napi_fatal_exception(env, e.Value());
  }
}

// createCq(context, depth, onNotify) -> handle.
Napi::Value CreateCq(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "createCq", 3, 3);
  uint32_t ctx_slot = Arg(info, 0, Kind::kContext, "createCq");
  uint64_t depth = Index(info, 1, "createCq", "depth", 4194304);
  if (depth == 0) Throw(env, kInvalidArgument, "createCq: depth must be at least 1");
  if (!info[2].IsFunction()) Throw(env, kInvalidArgument, "createCq: onNotify must be a function");
  RequireSlot(env, "createCq");
  ibv_context* ctx = static_cast<ibv_context*>(Data(env)->objects[ctx_slot].ptr);
  NativeCq* c = new NativeCq();
  c->env = env;
  errno = 0;
  c->channel = V().create_comp_channel(ctx);
  if (c->channel == nullptr) {
    int err = errno != 0 ? errno : ENOMEM;
    DestroyNativeCq(c);
    Throw(env, kVerbs, Errno("createCq: ibv_create_comp_channel", err));
  }
  int flags = fcntl(c->channel->fd, F_GETFL);
  if (flags < 0 || fcntl(c->channel->fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    int err = errno;
    DestroyNativeCq(c);
    Throw(env, kVerbs, Errno("createCq: making the completion channel non-blocking", err));
  }
  errno = 0;
  c->cq = V().create_cq(ctx, static_cast<int>(depth), c, c->channel, 0);
  if (c->cq == nullptr) {
    int err = errno != 0 ? errno : ENOMEM;
    DestroyNativeCq(c);
    Throw(env, kVerbs, Errno("createCq: ibv_create_cq", err));
  }
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    DestroyNativeCq(c);
    Throw(env, kVerbs, "createCq: no event loop");
  }
  c->poll = new uv_poll_t();
  int rc = uv_poll_init(loop, c->poll, c->channel->fd);
  if (rc != 0) {
    delete c->poll;
    c->poll = nullptr;
    DestroyNativeCq(c);
    Throw(env, kVerbs, std::string("createCq: uv_poll_init: ") + uv_strerror(rc));
  }
  c->poll->data = c;
  uv_poll_start(c->poll, UV_READABLE, OnChannelReadable);
  // The poll handle does not keep the process alive: an idle CQ must not block exit.
  uv_unref(reinterpret_cast<uv_handle_t*>(c->poll));
  c->on_notify = Napi::Persistent(info[2].As<Napi::Function>());
  return Napi::Number::New(env, HandleOf(Data(env), Store(env, Kind::kCq, c, ctx_slot + 1)));
}

NativeCq* CqArg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  return static_cast<NativeCq*>(Data(info.Env())->objects[Arg(info, i, Kind::kCq, fn)].ptr);
}

// resizeCq(cq, depth) -> entries: grows or shrinks the CQ to hold at least `depth` completions
// (ibv_resize_cq); returns what the device granted (cq->cqe, which may exceed `depth`). Queued
// completions are kept. Fails (KOALA_ERR_VERBS with errno) when `depth` is below what is queued
// or above the device's max_cqe.
Napi::Value ResizeCq(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "resizeCq", 2, 2);
  NativeCq* c = CqArg(info, 0, "resizeCq");
  uint64_t depth = Index(info, 1, "resizeCq", "depth", 4194304);
  if (depth == 0) Throw(env, kInvalidArgument, "resizeCq: depth must be at least 1");
  errno = 0;
  int rc = V().resize_cq(c->cq, static_cast<int>(depth));
  if (rc != 0) {
    int err = rc > 0 ? rc : (errno != 0 ? errno : EINVAL);
    Throw(env, kVerbs, Errno(("resizeCq: ibv_resize_cq to " + std::to_string(depth) + " entries").c_str(), err));
  }
  return Napi::Number::New(env, static_cast<double>(c->cq->cqe));
}

// reqNotifyCq(cq): arms the CQ for the next completion (the inline verb, through the ops table).
Napi::Value ReqNotifyCq(const Napi::CallbackInfo& info) {
  ExpectArgs(info, "reqNotifyCq", 1, 1);
  NativeCq* c = CqArg(info, 0, "reqNotifyCq");
  int rc = c->cq->context->ops.req_notify_cq(c->cq, 0);
  if (rc != 0) Throw(info.Env(), kVerbs, Errno("reqNotifyCq: ibv_req_notify_cq", rc > 0 ? rc : EINVAL));
  return info.Env().Undefined();
}

constexpr uint32_t kWcStride = 7;  // WC in verbs.ts: wr_id, status, opcode, byte_len, imm, qp_num, flags

// pollCq(cq, out: Float64Array, max) -> count: moves up to `max` completions into `out`.
Napi::Value PollCq(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "pollCq", 3, 3);
  NativeCq* c = CqArg(info, 0, "pollCq");
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    Throw(env, kInvalidArgument, "pollCq: out must be a Float64Array");
  }
  Napi::Float64Array out = info[1].As<Napi::Float64Array>();
  uint64_t max = Index(info, 2, "pollCq", "max", 1 << 20);
  if (max * kWcStride > out.ElementLength()) Throw(env, kInvalidArgument, "pollCq: out holds fewer than max completion records");
  double* dst = out.Data();
  uint64_t done = 0;
  ibv_wc wc[32];
  while (done < max) {
    int want = static_cast<int>(std::min<uint64_t>(32, max - done));
    int n = c->cq->context->ops.poll_cq(c->cq, want, wc);
    if (n < 0) Throw(env, kVerbs, "pollCq: ibv_poll_cq failed");
    for (int i = 0; i < n; i++, done++) {
      double* r = dst + done * kWcStride;
      r[0] = static_cast<double>(wc[i].wr_id);
      r[1] = wc[i].status;
      r[2] = wc[i].opcode;
      r[3] = wc[i].byte_len;
      r[4] = (wc[i].wc_flags & IBV_WC_WITH_IMM) != 0 ? ntohl(wc[i].imm_data) : 0;
      r[5] = wc[i].qp_num;
      r[6] = wc[i].wc_flags;
    }
    if (n < want) break;
  }
  return Napi::Number::New(env, static_cast<double>(done));
}

Napi::Value DestroyCq(const Napi::CallbackInfo& info) {
  return Destroy(info, Kind::kCq, "destroyCq", "queue pairs");
}


// The init attributes of an RC queue pair from (maxSendWr, maxRecvWr, maxSendSge, maxRecvSge,
// maxInlineData) at argument `at`, with CQs in slots scq / rcq.
ibv_qp_init_attr QpAttr(const Napi::CallbackInfo& info, size_t at, AddonData* d, uint32_t scq, uint32_t rcq, const char* fn) {
  ibv_qp_init_attr attr;
  std::memset(&attr, 0, sizeof(attr));
  attr.qp_type = IBV_QPT_RC;
  attr.send_cq = static_cast<NativeCq*>(d->objects[scq].ptr)->cq;
  attr.recv_cq = static_cast<NativeCq*>(d->objects[rcq].ptr)->cq;
  attr.cap.max_send_wr = static_cast<uint32_t>(Index(info, at, fn, "maxSendWr", 1 << 20));
  attr.cap.max_recv_wr = static_cast<uint32_t>(Index(info, at + 1, fn, "maxRecvWr", 1 << 20));
  attr.cap.max_send_sge = static_cast<uint32_t>(Index(info, at + 2, fn, "maxSendSge", 64));
  attr.cap.max_recv_sge = static_cast<uint32_t>(Index(info, at + 3, fn, "maxRecvSge", 64));
  attr.cap.max_inline_data = static_cast<uint32_t>(Index(info, at + 4, fn, "maxInlineData", 1 << 16));
  if (attr.cap.max_send_wr == 0 || attr.cap.max_recv_wr == 0 || attr.cap.max_send_sge == 0 || attr.cap.max_recv_sge == 0) {
    Throw(info.Env(), kInvalidArgument, std::string(fn) + ": work-request and scatter-gather capacities must be at least 1");
  }
  return attr;
}

// { handle, qpNum, maxSendWr, … } of the queue pair in `slot`, with the capacities granted.
Napi::Object QpResult(Napi::Env env, AddonData* d, uint32_t slot) {
  NativeQp* q = static_cast<NativeQp*>(d->objects[slot].ptr);
  Napi::Object out = Napi::Object::New(env);
  out.Set("handle", HandleOf(d, slot));
  out.Set("qpNum", static_cast<double>(q->qp->qp_num));
  out.Set("maxSendWr", static_cast<double>(q->cap.max_send_wr));
  out.Set("maxRecvWr", static_cast<double>(q->cap.max_recv_wr));
  out.Set("maxSendSge", static_cast<double>(q->cap.max_send_sge));
  out.Set("maxRecvSge", static_cast<double>(q->cap.max_recv_sge));
  out.Set("maxInlineData", static_cast<double>(q->cap.max_inline_data));
  return out;
}

// createQp(pd, sendCq, recvCq, maxSendWr, maxRecvWr, maxSendSge, maxRecvSge, maxInlineData)
// -> { handle, qpNum, maxSendWr, maxRecvWr, maxSendSge, maxRecvSge, maxInlineData } (granted).
Napi::Value CreateQp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "createQp", 8, 8);
  uint32_t pd = Arg(info, 0, Kind::kPd, "createQp");
  uint32_t scq = Arg(info, 1, Kind::kCq, "createQp");
  uint32_t rcq = Arg(info, 2, Kind::kCq, "createQp");
  AddonData* d = Data(env);
  ibv_qp_init_attr attr = QpAttr(info, 3, d, scq, rcq, "createQp");
  errno = 0;
  ibv_qp* qp = V().create_qp(static_cast<ibv_pd*>(d->objects[pd].ptr), &attr);
  if (qp == nullptr) Throw(env, kVerbs, Errno("createQp: ibv_create_qp", errno != 0 ? errno : EINVAL));
  NativeQp* q = new NativeQp();
  q->qp = qp;
  q->context = d->objects[pd].parent - 1;
  q->send_cq = scq;
  q->recv_cq = rcq;
  q->cap = attr.cap;  // what the provider granted
  uint32_t slot;
  try {
    slot = Store(env, Kind::kQp, q, pd + 1);
  } catch (...) {
    V().destroy_qp(qp);
    delete q;
    throw;
  }
  d->objects[scq].users++;
  d->objects[rcq].users++;
  return QpResult(env, d, slot);
}

Napi::Value DestroyQp(const Napi::CallbackInfo& info) {
  return Destroy(info, Kind::kQp, "destroyQp", "memory windows bound");
}

// Slots of the typed-array records (verbs.ts SWR / SGE).
constexpr uint32_t kWrStride = 8;  // wr_id, opcode, flags, imm, sge_start, sge_count, remote_addr, rkey
constexpr uint32_t kSgeStride = 3;  // addr, length, lkey
constexpr uint32_t kMaxBatch = 4096;
constexpr double kMax53 = 9007199254740991.0;

bool IsU(double v, double max) { return v >= 0 && v <= max && std::floor(v) == v; }

struct Batch {
  const double* wr;
  uint32_t count;
  const double* sge;
  uint32_t sge_count;
};

// Reads (qp, wr, count, sge, sgeCount) and checks the arrays' shapes.
Batch BatchArgs(const Napi::CallbackInfo& info, const char* fn) {
  Napi::Env env = info.Env();
  for (size_t i : {1u, 3u}) {
    if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
      Throw(env, kInvalidArgument, std::string(fn) + ": argument " + std::to_string(i + 1) + " must be a Float64Array");
    }
  }
  Napi::Float64Array wr = info[1].As<Napi::Float64Array>();
  Napi::Float64Array sge = info[3].As<Napi::Float64Array>();
  uint64_t count = Index(info, 2, fn, "count", kMaxBatch);
  uint64_t sge_count = Index(info, 4, fn, "sgeCount", kMaxBatch * 64);
  if (count * kWrStride > wr.ElementLength() || sge_count * kSgeStride > sge.ElementLength()) {
    Throw(env, kInvalidArgument, std::string(fn) + ": count or sgeCount is past the end of its array");
  }
  return Batch{wr.Data(), static_cast<uint32_t>(count), sge.Data(), static_cast<uint32_t>(sge_count)};
}

// Converts the scatter-gather entries of one record, each checked against a live region.
void Sges(Napi::Env env, AddonData* d, const Batch& b, const double* r, const NativeQp* q, uint32_t max_sge, const char* fn, uint32_t index,
          std::vector<ibv_sge>* out, size_t* first, uint64_t* total) {
  double start = r[4], n = r[5];
  if (!IsU(start, b.sge_count) || !IsU(n, max_sge) || start + n > b.sge_count) {
    Throw(env, kInvalidArgument, std::string(fn) + ": work request " + std::to_string(index) + " names scatter-gather entries outside the batch or more than the queue pair allows");
  }
  *first = out->size();
  *total = 0;
  for (uint32_t k = 0; k < static_cast<uint32_t>(n); k++) {
    const double* g = b.sge + (static_cast<uint32_t>(start) + k) * kSgeStride;
    if (!IsU(g[0], kMax53) || !IsU(g[1], 4294967295.0) || !IsU(g[2], 4294967295.0)) {
      Throw(env, kInvalidArgument, std::string(fn) + ": work request " + std::to_string(index) + ": a scatter-gather entry is not (address, length, lkey) in range");
    }
    auto it = d->by_lkey.find(LkeyKey(q->context, static_cast<uint32_t>(g[2])));
    uint64_t addr = static_cast<uint64_t>(g[0]), len = static_cast<uint64_t>(g[1]);
    if (it == d->by_lkey.end() || addr < it->second.addr || len > it->second.length || addr - it->second.addr > it->second.length - len) {
      Throw(env, kInvalidArgument, std::string(fn) + ": work request " + std::to_string(index) + ": a scatter-gather entry is not inside a registered region of its lkey");
    }
    // A transferred (detached) buffer's memory may already be owned, or freed, elsewhere.
    if (d->objects[it->second.slot].keep.Value().IsDetached()) {
      Throw(env, kInvalidArgument, std::string(fn) + ": work request " + std::to_string(index) + ": the registered buffer was detached (transferred); deregister it");
    }
    out->push_back(ibv_sge{addr, static_cast<uint32_t>(len), static_cast<uint32_t>(g[2])});
    *total += len;
  }
}

// What posting sends and receives share: reading (qp, wr, count, sge, sgeCount), building the
// chain (`fill` converts and checks one record), and posting it in one call through the
// context's ops table (`post`; ibv_post_send / ibv_post_recv are inline in verbs.h).
template <typename Wr, typename Fill, typename Post>
Napi::Value PostBatch(const Napi::CallbackInfo& info, const char* fn, Fill fill, Post post) {
  Napi::Env env = info.Env();
  ExpectArgs(info, fn, 5, 5);
  AddonData* d = Data(env);
  NativeQp* q = static_cast<NativeQp*>(d->objects[Arg(info, 0, Kind::kQp, fn)].ptr);
  Batch b = BatchArgs(info, fn);
  if (b.count == 0) return env.Undefined();
  std::vector<Wr> wrs(b.count);
  std::vector<ibv_sge> sges;
  sges.reserve(b.sge_count);
  std::vector<size_t> first(b.count);
  for (uint32_t i = 0; i < b.count; i++) {
    std::memset(&wrs[i], 0, sizeof(Wr));
    fill(env, d, q, b, i, b.wr + i * kWrStride, &wrs[i], &sges, &first[i]);
  }
  for (uint32_t i = 0; i < b.count; i++) {
    wrs[i].sg_list = wrs[i].num_sge > 0 ? &sges[first[i]] : nullptr;
    wrs[i].next = i + 1 < b.count ? &wrs[i + 1] : nullptr;
  }
  Wr* bad = nullptr;
  int rc = post(q->qp, &wrs[0], &bad);
  if (rc != 0) {
    size_t at = bad != nullptr ? static_cast<size_t>(bad - &wrs[0]) : 0;
    Throw(env, kVerbs, Errno((std::string(fn) + ": the provider refused work request " + std::to_string(at) + " (those before it were posted)").c_str(), rc));
  }
  return env.Undefined();
}

// postSend(qp, wr, count, sge, sgeCount): posts `count` send work requests (verbs.ts SWR records).
Napi::Value PostSend(const Napi::CallbackInfo& info) {
  auto fill = [](Napi::Env env, AddonData* d, NativeQp* q, const Batch& b, uint32_t i, const double* r, ibv_send_wr* w,
                 std::vector<ibv_sge>* sges, size_t* first) {
    if (!IsU(r[0], kMax53) || !IsU(r[1], IBV_WR_RDMA_READ) || !IsU(r[2], 15) || !IsU(r[3], 4294967295.0) || !IsU(r[6], kMax53) || !IsU(r[7], 4294967295.0)) {
      Throw(env, kInvalidArgument, "postSend: work request " + std::to_string(i) + " has a field out of range");
    }
    uint64_t total = 0;
    Sges(env, d, b, r, q, q->cap.max_send_sge, "postSend", i, sges, first, &total);
    w->wr_id = static_cast<uint64_t>(r[0]);
    w->opcode = static_cast<ibv_wr_opcode>(static_cast<int>(r[1]));
    w->send_flags = static_cast<unsigned int>(r[2]);
    if ((w->send_flags & IBV_SEND_INLINE) != 0 && total > q->cap.max_inline_data) {
      Throw(env, kInvalidArgument, "postSend: work request " + std::to_string(i) + " is " + std::to_string(total) + " bytes inline, more than the queue pair's " + std::to_string(q->cap.max_inline_data));
    }
    if (w->opcode == IBV_WR_SEND_WITH_IMM || w->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) w->imm_data = htonl(static_cast<uint32_t>(r[3]));
    if (w->opcode == IBV_WR_RDMA_WRITE || w->opcode == IBV_WR_RDMA_WRITE_WITH_IMM || w->opcode == IBV_WR_RDMA_READ) {
      w->wr.rdma.remote_addr = static_cast<uint64_t>(r[6]);
      w->wr.rdma.rkey = static_cast<uint32_t>(r[7]);
    }
    w->num_sge = static_cast<int>(r[5]);
  };
  auto post = [](ibv_qp* qp, ibv_send_wr* wr, ibv_send_wr** bad) { return qp->context->ops.post_send(qp, wr, bad); };
  return PostBatch<ibv_send_wr>(info, "postSend", fill, post);
}

// postRecv(qp, wr, count, sge, sgeCount): posts `count` receive work requests (RWR records).
Napi::Value PostRecv(const Napi::CallbackInfo& info) {
  auto fill = [](Napi::Env env, AddonData* d, NativeQp* q, const Batch& b, uint32_t i, const double* r, ibv_recv_wr* w,
                 std::vector<ibv_sge>* sges, size_t* first) {
    if (!IsU(r[0], kMax53)) Throw(env, kInvalidArgument, "postRecv: work request " + std::to_string(i) + " has a wr_id out of range");
    uint64_t total = 0;
    Sges(env, d, b, r, q, q->cap.max_recv_sge, "postRecv", i, sges, first, &total);
    w->wr_id = static_cast<uint64_t>(r[0]);
    w->num_sge = static_cast<int>(r[5]);
  };
  auto post = [](ibv_qp* qp, ibv_recv_wr* wr, ibv_recv_wr** bad) { return qp->context->ops.post_recv(qp, wr, bad); };
  return PostBatch<ibv_recv_wr>(info, "postRecv", fill, post);
}

// ---- memory windows ------------------------------------------------------------------------

// wr_id of the (unsignaled) bind work requests: never one of the transport's, so an error
// completion of a bind is not taken for another request's.
constexpr uint64_t kBindWrId = 9007199254740991ull;  // 2^53 - 1

// bindMw(qp, mr, addr, length, access) -> { handle, rkey }: allocates a type-2 window on the
// QP's PD and binds it over [addr, addr + length) of `mr` with remote `access` (REMOTE_READ,
// REMOTE_WRITE) by an unsignaled IBV_WR_BIND_MW posted on the QP's send queue, ahead of anything
// posted after it. The rkey returned is the binding's; only this QP accepts it.
Napi::Value BindMw(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "bindMw", 5, 5);
  AddonData* d = Data(env);
  uint32_t qp_slot = Arg(info, 0, Kind::kQp, "bindMw");
  uint32_t mr_slot = Arg(info, 1, Kind::kMr, "bindMw");
  uint64_t addr = Index(info, 2, "bindMw", "addr", kMax53);
  uint64_t length = Index(info, 3, "bindMw", "length", kMax53);
  uint64_t access = Index(info, 4, "bindMw", "access", 255);
  NativeQp* q = static_cast<NativeQp*>(d->objects[qp_slot].ptr);
  ibv_mr* mr = static_cast<ibv_mr*>(d->objects[mr_slot].ptr);
  if (d->objects[qp_slot].parent != d->objects[mr_slot].parent) {
    Throw(env, kInvalidArgument, "bindMw: the memory region and the queue pair belong to different protection domains");
  }
  auto range = d->by_lkey.find(LkeyKey(q->context, mr->lkey));
  if (range == d->by_lkey.end() || range->second.slot != mr_slot) Throw(env, kVerbs, "bindMw: the memory region is not known to its device");
  const MrRange& r = range->second;
  if ((r.access & IBV_ACCESS_MW_BIND) == 0) Throw(env, kInvalidArgument, "bindMw: the memory region was not registered with MW_BIND");
  if ((access & ~static_cast<uint64_t>(IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE)) != 0) {
    Throw(env, kInvalidArgument, "bindMw: a window grants REMOTE_READ and REMOTE_WRITE only");
  }
  if ((access & IBV_ACCESS_REMOTE_WRITE) != 0 && (r.access & IBV_ACCESS_LOCAL_WRITE) == 0) {
    Throw(env, kInvalidArgument, "bindMw: REMOTE_WRITE needs a region registered with LOCAL_WRITE");
  }
  if (addr < r.addr || length > r.length || addr - r.addr > r.length - length) {
    Throw(env, kInvalidArgument, "bindMw: the window is not inside the memory region");
  }
  if (d->objects[mr_slot].keep.Value().IsDetached()) Throw(env, kInvalidArgument, "bindMw: the registered buffer was detached (transferred)");
  ibv_pd* pd = static_cast<ibv_pd*>(d->objects[d->objects[qp_slot].parent - 1].ptr);
  errno = 0;
  ibv_mw* mw = ibv_alloc_mw(pd, IBV_MW_TYPE_2);
  if (mw == nullptr) Throw(env, kVerbs, Errno("bindMw: ibv_alloc_mw", errno != 0 ? errno : ENOMEM));
  ibv_send_wr wr;
  std::memset(&wr, 0, sizeof(wr));
  wr.wr_id = kBindWrId;
  wr.opcode = IBV_WR_BIND_MW;
  wr.send_flags = 0;  // unsignaled: a later signaled request retires it; an error still completes
  wr.bind_mw.mw = mw;
  wr.bind_mw.rkey = ibv_inc_rkey(mw->rkey);
  wr.bind_mw.bind_info.mr = mr;
  wr.bind_mw.bind_info.addr = addr;
  wr.bind_mw.bind_info.length = length;
  wr.bind_mw.bind_info.mw_access_flags = static_cast<unsigned int>(access);
  ibv_send_wr* bad = nullptr;
  int rc = q->qp->context->ops.post_send(q->qp, &wr, &bad);
  if (rc != 0) {
    ibv_dealloc_mw(mw);
    Throw(env, kVerbs, Errno("bindMw: posting the bind work request", rc));
  }
  NativeMw* w = new NativeMw();
  w->mw = mw;
  w->qp = qp_slot;
  w->mr = mr_slot;
  w->rkey = wr.bind_mw.rkey;
  uint32_t slot;
  try {
    slot = Store(env, Kind::kMw, w, d->objects[qp_slot].parent);
  } catch (...) {
    ibv_dealloc_mw(mw);
    delete w;
    throw;
  }
  d->objects[qp_slot].users++;
  d->objects[mr_slot].users++;
  Napi::Object out = Napi::Object::New(env);
  out.Set("handle", HandleOf(d, slot));
  out.Set("rkey", static_cast<double>(w->rkey));
  return out;
}

// invalidateMw(mw): posts an unsignaled IBV_WR_LOCAL_INV of the window's rkey on its QP's send
// queue: the key is refused once the requests posted before it have executed. The window must
// still be deallocated. A second invalidate is refused (on a NIC it would fail the QP).
Napi::Value InvalidateMw(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "invalidateMw", 1, 1);
  AddonData* d = Data(env);
  NativeMw* w = static_cast<NativeMw*>(d->objects[Arg(info, 0, Kind::kMw, "invalidateMw")].ptr);
  if (!w->bound) Throw(env, kInvalidArgument, "invalidateMw: the window was already invalidated");
  NativeQp* q = static_cast<NativeQp*>(d->objects[w->qp].ptr);
  ibv_send_wr wr;
  std::memset(&wr, 0, sizeof(wr));
  wr.wr_id = kBindWrId;
  wr.opcode = IBV_WR_LOCAL_INV;
  wr.send_flags = 0;
  wr.invalidate_rkey = w->rkey;
  ibv_send_wr* bad = nullptr;
  int rc = q->qp->context->ops.post_send(q->qp, &wr, &bad);
  if (rc != 0) Throw(env, kVerbs, Errno("invalidateMw: posting the local invalidate", rc));
  w->bound = false;
  return env.Undefined();
}

// deallocMw(mw): invalidates and frees a window (ibv_dealloc_mw).
Napi::Value DeallocMw(const Napi::CallbackInfo& info) {
  return Destroy(info, Kind::kMw, "deallocMw", "users");
}

// ---- the connection manager ------------------------------------------------------------------

// What JavaScript gets of one CM event, copied before rdma_ack_cm_event frees it.
struct CmEventCopy {
  int type;
  double id;                  // handle of the identifier
  int status;
  bool has_data;
  std::vector<uint8_t> data;  // private data of a request, accept or reject
  double listener;            // handle of the listener of a connect request, or -1
};

// A free slot for an identifier the CM made (a connect request's), or false when this thread
// has no slot left. Never throws: it runs from the event loop.
bool TakeSlot(AddonData* d, uint32_t* slot) {
  if (!d->free_slots.empty()) {
    *slot = d->free_slots.back();
    d->free_slots.pop_back();
    return true;
  }
  if (d->objects.size() >= kMaxSlots) return false;
  d->objects.emplace_back();
  *slot = static_cast<uint32_t>(d->objects.size() - 1);
  return true;
}

// The CM event channel is readable: read every queued event (the fd is non-blocking), copy what
// JavaScript needs, acknowledge each at once (so rdma_destroy_id never waits), then hand the
// copies to JavaScript in order.
void OnCmReadable(uv_poll_t* handle, int status, int events) {
  (void)status;
  (void)events;
  AddonData* d = static_cast<AddonData*>(handle->data);
  if (d == nullptr || d->cm_channel == nullptr) return;
  std::vector<CmEventCopy> got;
  rdma_cm_event* ev = nullptr;
  while (Cm().get_cm_event(d->cm_channel, &ev) == 0) {
    CmEventCopy c{static_cast<int>(ev->event), -1, ev->status, false, {}, -1};
    bool conn = ev->event == RDMA_CM_EVENT_CONNECT_REQUEST || ev->event == RDMA_CM_EVENT_ESTABLISHED || ev->event == RDMA_CM_EVENT_REJECTED;
    if (conn && ev->param.conn.private_data != nullptr) {
      const uint8_t* p = static_cast<const uint8_t*>(ev->param.conn.private_data);
      c.data.assign(p, p + ev->param.conn.private_data_len);
      c.has_data = true;
    }
    rdma_cm_id* refuse = nullptr;
    if (ev->event == RDMA_CM_EVENT_CONNECT_REQUEST) {
      // event->id is a new identifier, ours from now on; event->listen_id the listener.
      auto l = d->by_cm_id.find(ev->listen_id);
      uint32_t slot = 0;
      if (l == d->by_cm_id.end() || !TakeSlot(d, &slot)) {
        refuse = ev->id;
      } else {
        Object& o = d->objects[slot];
        o.kind = Kind::kCmId;
        NativeCmId* nid = new NativeCmId();
        nid->id = ev->id;
        o.ptr = nid;
        o.parent = d->objects[l->second].parent;
        o.users = 0;
        if (o.parent != 0) d->objects[o.parent - 1].users++;
        d->by_cm_id[ev->id] = slot;
        c.id = HandleOf(d, slot);
        c.listener = HandleOf(d, l->second);
      }
    } else {
      auto it = d->by_cm_id.find(ev->id);
      if (it != d->by_cm_id.end()) c.id = HandleOf(d, it->second);
    }
    Cm().ack_cm_event(ev);
    if (refuse != nullptr) {
      // A request for a listener already closed, or no slot left: refused and forgotten.
      Cm().reject(refuse, nullptr, 0);
      Cm().destroy_id(refuse);
      continue;
    }
    if (c.id >= 0) got.push_back(std::move(c));
  }
  if (got.empty() || d->on_cm_event.IsEmpty()) return;
  Napi::Env env(d->env);
  Napi::HandleScope scope(env);
  for (CmEventCopy& c : got) {
    Napi::Value data = env.Undefined();
    if (c.has_data) {
      Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::Copy(env, c.data.data(), c.data.size());
      data = b;
    }
    Napi::Value listener = c.listener >= 0 ? Napi::Number::New(env, c.listener) : env.Undefined();
    try {
      d->on_cm_event.MakeCallback(env.Global(), {Napi::Number::New(env, c.type), Napi::Number::New(env, c.id), Napi::Number::New(env, c.status), data, listener});
    } catch (const Napi::Error& e) {
      napi_fatal_exception(env, e.Value());
    }
    if (d->on_cm_event.IsEmpty()) return;
  }
}

// cmInit(onEvent): creates this environment's CM event channel (once) and sends every event to
// onEvent(type, id, status, privateData?, listener?): type an rdma_cm_event_type number, id the
// identifier's handle (for CONNECT_REQUEST a new one), status the event's, privateData a copy
// (a Buffer) for requests, accepts and rejects, listener the handle a request came through.
// The channel's watch does not keep the event loop alive until cmRef(true).
Napi::Value CmInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "cmInit", 1, 1);
  if (!info[0].IsFunction()) Throw(env, kInvalidArgument, "cmInit: onEvent must be a function");
  RequireLoaded(env, "cmInit");
  AddonData* d = Data(env);
  if (d->cm_channel == nullptr) {
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) Throw(env, kVerbs, "cmInit: no event loop");
    errno = 0;
    rdma_event_channel* ch = Cm().create_event_channel();
    if (ch == nullptr) Throw(env, kVerbs, Errno("cmInit: rdma_create_event_channel", errno != 0 ? errno : ENODEV));
    int flags = fcntl(ch->fd, F_GETFL);
    if (flags < 0 || fcntl(ch->fd, F_SETFL, flags | O_NONBLOCK) < 0) {
      int err = errno;
      Cm().destroy_event_channel(ch);
      Throw(env, kVerbs, Errno("cmInit: making the CM event channel non-blocking", err));
    }
    uv_poll_t* poll = new uv_poll_t();
    int rc = uv_poll_init(loop, poll, ch->fd);
    if (rc != 0) {
      delete poll;
      Cm().destroy_event_channel(ch);
      Throw(env, kVerbs, std::string("cmInit: uv_poll_init: ") + uv_strerror(rc));
    }
    poll->data = d;
    d->env = env;
    d->cm_channel = ch;
    d->cm_poll = poll;
    uv_poll_start(poll, UV_READABLE, OnCmReadable);
    uv_unref(reinterpret_cast<uv_handle_t*>(poll));
  }
  d->on_cm_event = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

// cmRef(on): whether the CM watch keeps the event loop (the process or the thread) alive.
Napi::Value CmRef(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "cmRef", 1, 1);
  if (!info[0].IsBoolean()) Throw(env, kInvalidArgument, "cmRef: on must be a boolean");
  AddonData* d = Data(env);
  if (d->cm_poll == nullptr) Throw(env, kVerbs, "cmRef: the connection manager is not set up (call cmInit() first)");
  if (info[0].As<Napi::Boolean>().Value()) uv_ref(reinterpret_cast<uv_handle_t*>(d->cm_poll));
  else uv_unref(reinterpret_cast<uv_handle_t*>(d->cm_poll));
  return env.Undefined();
}

rdma_event_channel* Channel(Napi::Env env, const char* fn) {
  AddonData* d = Data(env);
  if (d->cm_channel == nullptr) Throw(env, kVerbs, std::string(fn) + ": the connection manager is not set up (call cmInit() first)");
  return d->cm_channel;
}

// An IPv4 address and port from arguments i (dotted text) and i + 1.
sockaddr_in SockAddr(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  Napi::Env env = info.Env();
  if (!info[i].IsString()) Throw(env, kInvalidArgument, std::string(fn) + ": host must be a string");
  std::string host = info[i].As<Napi::String>().Utf8Value();
  sockaddr_in sin;
  std::memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  if (host.size() > 15 || host.find('\0') != std::string::npos || inet_pton(AF_INET, host.c_str(), &sin.sin_addr) != 1) {
    Throw(env, kInvalidArgument, std::string(fn) + ": host must be an IPv4 address in dotted form");
  }
  sin.sin_port = htons(static_cast<uint16_t>(Index(info, i + 1, fn, "port", 65535)));
  return sin;
}

// A new identifier on this environment's channel, stored as `kind` under device context `ctx`.
uint32_t NewCmId(Napi::Env env, Kind kind, uint32_t ctx, const char* fn, rdma_cm_id** out) {
  rdma_event_channel* ch = Channel(env, fn);
  rdma_cm_id* id = nullptr;
  errno = 0;
  if (Cm().create_id(ch, &id, nullptr, RDMA_PS_TCP) != 0 || id == nullptr) Throw(env, kVerbs, Errno((std::string(fn) + ": rdma_create_id").c_str(), errno != 0 ? errno : ENOMEM));
  NativeCmId* c = new NativeCmId();
  c->id = id;
  uint32_t slot;
  try {
    slot = Store(env, kind, c, ctx + 1);
  } catch (...) {
    delete c;
    Cm().destroy_id(id);
    throw;
  }
  AddonData* d = Data(env);
  d->by_cm_id[id] = slot;
  *out = id;
  return slot;
}

// The code of a failed rdma_bind_addr / rdma_resolve_addr.
const char* AddrCode(int err) {
  switch (err) {
    case EADDRINUSE: return "KOALA_ERR_ADDRESS_IN_USE";
    case EADDRNOTAVAIL:
    case ENODEV:
    case ENETUNREACH:
    case EHOSTUNREACH: return "KOALA_ERR_HOST_NOT_FOUND";
    case EACCES:
    case EPERM: return "KOALA_ERR_ACCESS_DENIED";
    default: return kVerbs;
  }
}

// listen(context, host, port, backlog) -> { handle, port }: a listener bound to host:port (port 0:
// any free one) with rdma_bind_addr and rdma_listen; `port` is the one bound.
Napi::Value Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "listen", 4, 4);
  uint32_t ctx = Arg(info, 0, Kind::kContext, "listen");
  sockaddr_in sin = SockAddr(info, 1, "listen");
  uint64_t backlog = Index(info, 3, "listen", "backlog", 65535);
  if (backlog == 0) Throw(env, kInvalidArgument, "listen: backlog must be at least 1");
  rdma_cm_id* id = nullptr;
  uint32_t slot = NewCmId(env, Kind::kListener, ctx, "listen", &id);
  AddonData* d = Data(env);
  errno = 0;
  if (Cm().bind_addr(id, reinterpret_cast<sockaddr*>(&sin)) != 0) {
    int err = errno != 0 ? errno : EINVAL;
    Release(d, slot);
    char text[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &sin.sin_addr, text, sizeof(text));
    Throw(env, AddrCode(err), Errno(("listen: rdma_bind_addr " + std::string(text) + ":" + std::to_string(ntohs(sin.sin_port))).c_str(), err));
  }
  errno = 0;
  if (Cm().listen(id, static_cast<int>(backlog)) != 0) {
    int err = errno != 0 ? errno : EINVAL;
    Release(d, slot);
    Throw(env, kVerbs, Errno("listen: rdma_listen", err));
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("handle", HandleOf(d, slot));
  out.Set("port", static_cast<double>(ntohs(Cm().get_src_port(id))));
  return out;
}

// createId(context) -> handle of a new identifier for an outgoing connection.
Napi::Value CreateId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "createId", 1, 1);
  uint32_t ctx = Arg(info, 0, Kind::kContext, "createId");
  rdma_cm_id* id = nullptr;
  return Napi::Number::New(env, HandleOf(Data(env), NewCmId(env, Kind::kCmId, ctx, "createId", &id)));
}

NativeCmId* CmIdArg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  return static_cast<NativeCmId*>(Data(info.Env())->objects[Arg(info, i, Kind::kCmId, fn)].ptr);
}

int TimeoutArg(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  uint64_t ms = Index(info, i, fn, "timeoutMs", 2147483647.0);
  if (ms == 0) Throw(info.Env(), kInvalidArgument, std::string(fn) + ": timeoutMs must be at least 1");
  return static_cast<int>(ms);
}

// resolveAddr(id, host, port, timeoutMs): rdma_resolve_addr; ends in ADDR_RESOLVED or ADDR_ERROR.
Napi::Value ResolveAddr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "resolveAddr", 4, 4);
  NativeCmId* c = CmIdArg(info, 0, "resolveAddr");
  sockaddr_in dst = SockAddr(info, 1, "resolveAddr");
  int timeout = TimeoutArg(info, 3, "resolveAddr");
  errno = 0;
  if (Cm().resolve_addr(c->id, nullptr, reinterpret_cast<sockaddr*>(&dst), timeout) != 0) {
    int err = errno != 0 ? errno : EINVAL;
    Throw(env, AddrCode(err), Errno("resolveAddr: rdma_resolve_addr", err));
  }
  return env.Undefined();
}

// resolveRoute(id, timeoutMs): rdma_resolve_route; ends in ROUTE_RESOLVED or ROUTE_ERROR.
Napi::Value ResolveRoute(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "resolveRoute", 2, 2);
  NativeCmId* c = CmIdArg(info, 0, "resolveRoute");
  int timeout = TimeoutArg(info, 1, "resolveRoute");
  errno = 0;
  if (Cm().resolve_route(c->id, timeout) != 0) Throw(env, kVerbs, Errno("resolveRoute: rdma_resolve_route", errno != 0 ? errno : EINVAL));
  return env.Undefined();
}

// createCmQp(id, pd, sendCq, recvCq, maxSendWr, maxRecvWr, maxSendSge, maxRecvSge, maxInlineData)
// -> as createQp: an RC queue pair on the identifier (rdma_create_qp), which must be resolved
// (or requested) on the PD's device. librdmacm moves it through its states.
Napi::Value CreateCmQp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "createCmQp", 9, 9);
  AddonData* d = Data(env);
  uint32_t id_slot = Arg(info, 0, Kind::kCmId, "createCmQp");
  uint32_t pd = Arg(info, 1, Kind::kPd, "createCmQp");
  uint32_t scq = Arg(info, 2, Kind::kCq, "createCmQp");
  uint32_t rcq = Arg(info, 3, Kind::kCq, "createCmQp");
  ibv_qp_init_attr attr = QpAttr(info, 4, d, scq, rcq, "createCmQp");
  NativeCmId* c = static_cast<NativeCmId*>(d->objects[id_slot].ptr);
  if (c->qp != 0) Throw(env, kInvalidArgument, "createCmQp: the identifier already has a queue pair");
  if (c->id->verbs == nullptr) Throw(env, kVerbs, "createCmQp: the identifier is not resolved to a device yet (resolve it first)");
  ibv_pd* p = static_cast<ibv_pd*>(d->objects[pd].ptr);
  if (p->context != c->id->verbs || attr.send_cq->context != c->id->verbs || attr.recv_cq->context != c->id->verbs) {
    // On a host with several devices the address may route through another one than was opened.
    const char* want = c->id->verbs->device != nullptr ? V().get_device_name(c->id->verbs->device) : nullptr;
    const char* have = p->context->device != nullptr ? V().get_device_name(p->context->device) : nullptr;
    Throw(env, kInvalidArgument, std::string("createCmQp: the identifier is on device ") + (want != nullptr ? want : "?") + "; the protection domain and completion queues must be of that device's librdmacm context (openDevice(name, true)), not " +
                                     (have != nullptr ? have : "?") + "'s" + (p->context == c->id->verbs ? " (a completion queue is of another context)" : ""));
  }
  errno = 0;
  if (Cm().create_qp(c->id, p, &attr) != 0 || c->id->qp == nullptr) Throw(env, kVerbs, Errno("createCmQp: rdma_create_qp", errno != 0 ? errno : EINVAL));
  NativeQp* q = new NativeQp();
  q->qp = c->id->qp;
  q->context = d->objects[pd].parent - 1;
  q->send_cq = scq;
  q->recv_cq = rcq;
  q->cm_id = id_slot + 1;
  q->cap = attr.cap;  // what the provider granted
  uint32_t slot;
  try {
    slot = Store(env, Kind::kQp, q, pd + 1);
  } catch (...) {
    Cm().destroy_qp(c->id);
    delete q;
    throw;
  }
  d->objects[scq].users++;
  d->objects[rcq].users++;
  d->objects[id_slot].users++;
  c->qp = slot + 1;
  return QpResult(env, d, slot);
}

// Private data (a Uint8Array of at most 56 bytes, the least every transport carries) at argument i.
std::pair<const uint8_t*, uint8_t> PrivateData(const Napi::CallbackInfo& info, size_t i, const char* fn) {
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Throw(info.Env(), kInvalidArgument, std::string(fn) + ": privateData must be a Uint8Array");
  }
  Napi::Uint8Array a = info[i].As<Napi::Uint8Array>();
  if (a.ElementLength() > 56) Throw(info.Env(), kInvalidArgument, std::string(fn) + ": privateData is at most 56 bytes");
  return {a.ElementLength() > 0 ? a.Data() : nullptr, static_cast<uint8_t>(a.ElementLength())};
}

rdma_conn_param ConnParam(std::pair<const uint8_t*, uint8_t> data) {
  rdma_conn_param p;
  std::memset(&p, 0, sizeof(p));
  p.private_data = data.first;
  p.private_data_len = data.second;
  // As many outstanding RDMA READs as the device allows, both ways (librdmacm clamps these).
  p.responder_resources = RDMA_MAX_RESP_RES;
  p.initiator_depth = RDMA_MAX_INIT_DEPTH;
  p.retry_count = 7;
  p.rnr_retry_count = 7;  // 7: retry a receiver-not-ready answer without limit, as on InfiniBand
  return p;
}

NativeCmId* ConnectedIdArg(const Napi::CallbackInfo& info, const char* fn) {
  NativeCmId* c = CmIdArg(info, 0, fn);
  if (c->qp == 0) Throw(info.Env(), kInvalidArgument, std::string(fn) + ": create the identifier's queue pair first");
  return c;
}

// fn(id, privateData) for connect and accept, which differ only in the librdmacm call `cm`
// (named `what` in errors): the identifier must have its queue pair.
Napi::Value Establish(const Napi::CallbackInfo& info, const char* fn, const char* what, int (*cm)(rdma_cm_id*, rdma_conn_param*)) {
  Napi::Env env = info.Env();
  ExpectArgs(info, fn, 2, 2);
  NativeCmId* c = ConnectedIdArg(info, fn);
  rdma_conn_param p = ConnParam(PrivateData(info, 1, fn));
  errno = 0;
  if (cm(c->id, &p) != 0) Throw(env, kVerbs, Errno(what, errno != 0 ? errno : EINVAL));
  return env.Undefined();
}

// connect(id, privateData): rdma_connect; ends in ESTABLISHED, REJECTED, UNREACHABLE or CONNECT_ERROR.
Napi::Value Connect(const Napi::CallbackInfo& info) {
  return Establish(info, "connect", "connect: rdma_connect", Cm().connect);
}

// accept(id, privateData): rdma_accept of a connect request; ends in ESTABLISHED.
Napi::Value Accept(const Napi::CallbackInfo& info) {
  return Establish(info, "accept", "accept: rdma_accept", Cm().accept);
}

// reject(id, privateData): rdma_reject of a connect request.
Napi::Value Reject(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "reject", 2, 2);
  NativeCmId* c = CmIdArg(info, 0, "reject");
  auto data = PrivateData(info, 1, "reject");
  errno = 0;
  if (Cm().reject(c->id, data.first, data.second) != 0) Throw(env, kVerbs, Errno("reject: rdma_reject", errno != 0 ? errno : EINVAL));
  return env.Undefined();
}

// disconnect(id): rdma_disconnect; the QP goes to the error state (flushing), both ends get DISCONNECTED.
Napi::Value Disconnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "disconnect", 1, 1);
  NativeCmId* c = CmIdArg(info, 0, "disconnect");
  errno = 0;
  if (Cm().disconnect(c->id) != 0) Throw(env, kVerbs, Errno("disconnect: rdma_disconnect", errno != 0 ? errno : EINVAL));
  return env.Undefined();
}

// destroyId(id): rdma_destroy_id; KOALA_ERR_HANDLE_IN_USE while its queue pair exists.
Napi::Value DestroyId(const Napi::CallbackInfo& info) {
  return Destroy(info, Kind::kCmId, "destroyId", "queue pair (destroy it first)");
}

// closeListener(listener): rdma_destroy_id of a listener.
Napi::Value CloseListener(const Napi::CallbackInfo& info) {
  return Destroy(info, Kind::kListener, "closeListener", "users");
}

std::string AddrText(const sockaddr* sa) {
  if (sa == nullptr || sa->sa_family != AF_INET) return "";
  const sockaddr_in* sin = reinterpret_cast<const sockaddr_in*>(sa);
  char text[INET_ADDRSTRLEN];
  if (inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text)) == nullptr) return "";
  return std::string(text) + ":" + std::to_string(ntohs(sin->sin_port));
}

// cmAddresses(id) -> [local, remote]: "a.b.c.d:port" of each end as the CM knows them ("" when
// not known yet, or not IPv4).
Napi::Value CmAddresses(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "cmAddresses", 1, 1);
  NativeCmId* c = CmIdArg(info, 0, "cmAddresses");
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, AddrText(rdma_get_local_addr(c->id)));
  out.Set(1u, AddrText(rdma_get_peer_addr(c->id)));
  return out;
}

// cmEventName(type) -> rdma_event_str's name of an event type.
Napi::Value CmEventName(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ExpectArgs(info, "cmEventName", 1, 1);
  uint64_t type = Index(info, 0, "cmEventName", "type", 64);
  RequireLoaded(env, "cmEventName");
  const char* name = Cm().event_str(static_cast<rdma_cm_event_type>(type));
  return Napi::String::New(env, name != nullptr ? name : "UNKNOWN");
}

Napi::Object Register(Napi::Env env, Napi::Object exports) {
  AddonData* data = new AddonData();
  data->tag = static_cast<uint16_t>(std::random_device{}());
  data->env = env;
  env.SetInstanceData(data);
  env.AddCleanupHook([data]() { CleanupEnv(data); });
  struct Export {
    const char* name;
    Napi::Value (*fn)(const Napi::CallbackInfo&);
  };
  static constexpr Export kExports[] = {
      {"init", Init},           {"load", LoadLibs},         {"devices", Devices},         {"openDevice", OpenDevice},
      {"closeDevice", CloseDevice}, {"allocPd", AllocPd},   {"deallocPd", DeallocPd},     {"regMr", RegMr},
      {"deregMr", DeregMr},     {"createCq", CreateCq},     {"resizeCq", ResizeCq},       {"reqNotifyCq", ReqNotifyCq}, {"pollCq", PollCq},
      {"destroyCq", DestroyCq}, {"createQp", CreateQp},     {"destroyQp", DestroyQp},     {"postSend", PostSend},
      {"postRecv", PostRecv},   {"bindMw", BindMw},         {"deallocMw", DeallocMw},     {"invalidateMw", InvalidateMw}, {"cmInit", CmInit}, {"cmRef", CmRef},
      {"listen", Listen},       {"closeListener", CloseListener}, {"createId", CreateId}, {"resolveAddr", ResolveAddr},
      {"resolveRoute", ResolveRoute}, {"createCmQp", CreateCmQp}, {"connect", Connect},   {"accept", Accept},
      {"reject", Reject},       {"disconnect", Disconnect}, {"destroyId", DestroyId},     {"cmAddresses", CmAddresses},
      {"cmEventName", CmEventName},
  };
  for (const Export& e : kExports) exports.Set(e.name, Napi::Function::New(env, e.fn, e.name));
  exports.Set("abiVersion", Napi::Number::New(env, 2));
  return exports;
}

}  // namespace
}  // namespace koala

static Napi::Object RegisterKoalaRdma(Napi::Env env, Napi::Object exports) { return koala::Register(env, exports); }

NODE_API_MODULE(koala_rdma, RegisterKoalaRdma)
