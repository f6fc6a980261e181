// koala_rdma: the native verbs addon. A thin binding: JavaScript validates every argument
// first and this file validates it again, throwing the KoalaError the JavaScript side handed
// to init() (never aborting). No global JavaScript state: each environment (main thread,
// worker) has its own instance data, so the addon is context-aware.
#include <arpa/inet.h>
#include <napi.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "libs.h"

namespace koala {
namespace {

constexpr const char* kInvalidArgument = "KOALA_ERR_INVALID_ARGUMENT";
constexpr const char* kVerbs = "KOALA_ERR_VERBS";
constexpr size_t kMaxPathBytes = 4095;

struct AddonData {
  Napi::FunctionReference make_error;  // (code, message) => KoalaError
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

Napi::Object Register(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  exports.Set("init", Napi::Function::New(env, Init, "init"));
  exports.Set("load", Napi::Function::New(env, LoadLibs, "load"));
  exports.Set("devices", Napi::Function::New(env, Devices, "devices"));
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  return exports;
}

}  // namespace
}  // namespace koala

static Napi::Object RegisterKoalaRdma(Napi::Env env, Napi::Object exports) { return koala::Register(env, exports); }

NODE_API_MODULE(koala_rdma, RegisterKoalaRdma)
