#include "libs.h"

#include <dlfcn.h>

#include <cstddef>
#include <cstring>
#include <mutex>

namespace koala {
namespace {

std::mutex g_mutex;
bool g_loaded = false;
std::string g_verbs_path;
std::string g_rdmacm_path;
Verbs g_verbs;
Rdmacm g_cm;

// Resolves `name` into `*slot`; false (with the reason) when the library lacks it.
template <typename Fn>
bool Resolve(void* lib, const char* name, const std::string& path, Fn* slot, std::string* why) {
  dlerror();
  void* sym = dlsym(lib, name);
  if (sym == nullptr) {
    *why = path + " lacks " + name + " (not libibverbs / librdmacm, or too old)";
    return false;
  }
  *slot = reinterpret_cast<Fn>(sym);
  return true;
}

std::string DlError() {
  const char* e = dlerror();
  return e != nullptr ? e : "unknown dlopen error";
}

}  // namespace

LoadResult Load(const std::string& verbs_path, const std::string& rdmacm_path) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_loaded) {
    if (verbs_path != g_verbs_path || rdmacm_path != g_rdmacm_path) {
      return {false, "this process already uses " + g_verbs_path + " and " + g_rdmacm_path +
                         "; KOALA_VERBS_LIB / KOALA_RDMACM_LIB cannot change once loaded"};
    }
    return {true, ""};
  }
  // RTLD_LOCAL: nothing of ours leaks into the global namespace; libibverbs' own provider
  // plugins find it through their DT_NEEDED entry. The handles are kept for the life of the
  // process (another thread's environment may be using them).
  void* verbs = dlopen(verbs_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (verbs == nullptr) return {false, "libibverbs not found (" + DlError() + ")"};
  Verbs v{};
  std::string why;
  bool ok = Resolve(verbs, "ibv_get_device_list", verbs_path, &v.get_device_list, &why) &&
            Resolve(verbs, "ibv_free_device_list", verbs_path, &v.free_device_list, &why) &&
            Resolve(verbs, "ibv_get_device_name", verbs_path, &v.get_device_name, &why) &&
            Resolve(verbs, "ibv_open_device", verbs_path, &v.open_device, &why) &&
            Resolve(verbs, "ibv_close_device", verbs_path, &v.close_device, &why) &&
            Resolve(verbs, "ibv_query_device", verbs_path, &v.query_device, &why) &&
            Resolve(verbs, "ibv_query_port", verbs_path, &v.query_port_compat, &why) &&
            Resolve(verbs, "ibv_query_gid", verbs_path, &v.query_gid, &why) &&
            Resolve(verbs, "ibv_alloc_pd", verbs_path, &v.alloc_pd, &why) &&
            Resolve(verbs, "ibv_dealloc_pd", verbs_path, &v.dealloc_pd, &why) &&
            Resolve(verbs, "ibv_create_cq", verbs_path, &v.create_cq, &why) &&
            Resolve(verbs, "ibv_resize_cq", verbs_path, &v.resize_cq, &why) &&
            Resolve(verbs, "ibv_destroy_cq", verbs_path, &v.destroy_cq, &why) &&
            Resolve(verbs, "ibv_create_qp", verbs_path, &v.create_qp, &why) &&
            Resolve(verbs, "ibv_destroy_qp", verbs_path, &v.destroy_qp, &why) &&
            Resolve(verbs, "ibv_reg_mr", verbs_path, &v.reg_mr, &why) &&
            Resolve(verbs, "ibv_dereg_mr", verbs_path, &v.dereg_mr, &why) &&
            Resolve(verbs, "ibv_create_comp_channel", verbs_path, &v.create_comp_channel, &why) &&
            Resolve(verbs, "ibv_destroy_comp_channel", verbs_path, &v.destroy_comp_channel, &why) &&
            Resolve(verbs, "ibv_get_cq_event", verbs_path, &v.get_cq_event, &why) &&
            Resolve(verbs, "ibv_ack_cq_events", verbs_path, &v.ack_cq_events, &why);
  if (!ok) {
    dlclose(verbs);
    return {false, "libibverbs unusable: " + why};
  }
  void* cm = dlopen(rdmacm_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (cm == nullptr) {
    std::string err = DlError();  // before dlclose, which resets it
    dlclose(verbs);
    return {false, "librdmacm not found (" + err + ")"};
  }
  Rdmacm c{};
  ok = Resolve(cm, "rdma_create_event_channel", rdmacm_path, &c.create_event_channel, &why) &&
       Resolve(cm, "rdma_destroy_event_channel", rdmacm_path, &c.destroy_event_channel, &why) &&
       Resolve(cm, "rdma_get_devices", rdmacm_path, &c.get_devices, &why) &&
       Resolve(cm, "rdma_free_devices", rdmacm_path, &c.free_devices, &why) &&
       Resolve(cm, "rdma_create_id", rdmacm_path, &c.create_id, &why) &&
       Resolve(cm, "rdma_destroy_id", rdmacm_path, &c.destroy_id, &why) &&
       Resolve(cm, "rdma_bind_addr", rdmacm_path, &c.bind_addr, &why) &&
       Resolve(cm, "rdma_listen", rdmacm_path, &c.listen, &why) &&
       Resolve(cm, "rdma_get_src_port", rdmacm_path, &c.get_src_port, &why) &&
       Resolve(cm, "rdma_resolve_addr", rdmacm_path, &c.resolve_addr, &why) &&
       Resolve(cm, "rdma_resolve_route", rdmacm_path, &c.resolve_route, &why) &&
       Resolve(cm, "rdma_create_qp", rdmacm_path, &c.create_qp, &why) &&
       Resolve(cm, "rdma_destroy_qp", rdmacm_path, &c.destroy_qp, &why) &&
       Resolve(cm, "rdma_connect", rdmacm_path, &c.connect, &why) &&
       Resolve(cm, "rdma_accept", rdmacm_path, &c.accept, &why) &&
       Resolve(cm, "rdma_reject", rdmacm_path, &c.reject, &why) &&
       Resolve(cm, "rdma_disconnect", rdmacm_path, &c.disconnect, &why) &&
       Resolve(cm, "rdma_get_cm_event", rdmacm_path, &c.get_cm_event, &why) &&
       Resolve(cm, "rdma_ack_cm_event", rdmacm_path, &c.ack_cm_event, &why) &&
       Resolve(cm, "rdma_event_str", rdmacm_path, &c.event_str, &why);
  if (!ok) {
    dlclose(cm);
    dlclose(verbs);
    return {false, "librdmacm unusable: " + why};
  }
  g_verbs = v;
  g_cm = c;
  g_verbs_path = verbs_path;
  g_rdmacm_path = rdmacm_path;
  g_loaded = true;
  return {true, ""};
}

bool Loaded() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_loaded;
}

const Verbs& V() { return g_verbs; }
const Rdmacm& Cm() { return g_cm; }

int QueryPort(ibv_context* ctx, uint8_t port, ibv_port_attr* attr) {
  std::memset(attr, 0, sizeof(*attr));
  verbs_context* vctx = verbs_get_ctx(ctx);
  if (vctx != nullptr &&
      vctx->sz >= sizeof(*vctx) - offsetof(verbs_context, query_port) &&
      vctx->query_port != nullptr) {
    return vctx->query_port(ctx, port, attr, sizeof(*attr));
  }
  return V().query_port_compat(ctx, port, reinterpret_cast<_compat_ibv_port_attr*>(attr));
}

}  // namespace koala
