// libibverbs and librdmacm, opened with dlopen at first use and never linked, so the addon
// loads on any Linux host. One copy per process (libraries are process-wide); every thread's
// environment shares it. Nothing here touches JavaScript.
#pragma once

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <string>

namespace koala {

// Exported functions the addon calls, resolved with dlsym. The data-path verbs
// (ibv_post_send, ibv_post_recv, ibv_poll_cq, ibv_req_notify_cq) are static inline in verbs.h
// and go through the context's ops table; they are never looked up here.
struct Verbs {
  decltype(&::ibv_get_device_list) get_device_list;
  decltype(&::ibv_free_device_list) free_device_list;
  decltype(&::ibv_get_device_name) get_device_name;
  decltype(&::ibv_open_device) open_device;
  decltype(&::ibv_close_device) close_device;
  decltype(&::ibv_query_device) query_device;
  // The exported (compat) entry point, used only when the context has no extended query_port.
  decltype(&::ibv_query_port) query_port_compat;
  decltype(&::ibv_query_gid) query_gid;
  decltype(&::ibv_alloc_pd) alloc_pd;
  decltype(&::ibv_dealloc_pd) dealloc_pd;
  decltype(&::ibv_create_cq) create_cq;
  // An exported function (not inline): rdma-core calls the provider's resize_cq through its
  // private ops table; ibv_context_ops' slot of that name is a compat placeholder.
  decltype(&::ibv_resize_cq) resize_cq;
  decltype(&::ibv_destroy_cq) destroy_cq;
  decltype(&::ibv_create_qp) create_qp;
  decltype(&::ibv_destroy_qp) destroy_qp;
  decltype(&::ibv_reg_mr) reg_mr;  // the exported function, not verbs.h's macro of the same name
  decltype(&::ibv_dereg_mr) dereg_mr;
  decltype(&::ibv_create_comp_channel) create_comp_channel;
  decltype(&::ibv_destroy_comp_channel) destroy_comp_channel;
  decltype(&::ibv_get_cq_event) get_cq_event;
  decltype(&::ibv_ack_cq_events) ack_cq_events;
};

// The connection manager (contract-rdma.md, librdmacm). rdma_get_local_addr / rdma_get_peer_addr
// are inline accessors of rdma_cm_id and need no lookup.
struct Rdmacm {
  decltype(&::rdma_create_event_channel) create_event_channel;
  decltype(&::rdma_destroy_event_channel) destroy_event_channel;
  decltype(&::rdma_get_devices) get_devices;
  decltype(&::rdma_free_devices) free_devices;
  decltype(&::rdma_create_id) create_id;
  decltype(&::rdma_destroy_id) destroy_id;
  decltype(&::rdma_bind_addr) bind_addr;
  decltype(&::rdma_listen) listen;
  decltype(&::rdma_get_src_port) get_src_port;
  decltype(&::rdma_resolve_addr) resolve_addr;
  decltype(&::rdma_resolve_route) resolve_route;
  decltype(&::rdma_create_qp) create_qp;
  decltype(&::rdma_destroy_qp) destroy_qp;
  decltype(&::rdma_connect) connect;
  decltype(&::rdma_accept) accept;
  decltype(&::rdma_reject) reject;
  decltype(&::rdma_disconnect) disconnect;
  decltype(&::rdma_get_cm_event) get_cm_event;
  decltype(&::rdma_ack_cm_event) ack_cm_event;
  decltype(&::rdma_event_str) event_str;
};

// Outcome of Load(): ok, or which library failed and why (a sentence for the user).
struct LoadResult {
  bool ok;
  std::string reason;
};

// Opens both libraries from these paths (sonames or absolute paths) once per process. A later
// call with other paths fails: a process cannot switch libraries once they are in use.
LoadResult Load(const std::string& verbs_path, const std::string& rdmacm_path);

// True once Load() succeeded in this process.
bool Loaded();

// The resolved functions; valid only after Load() returned ok.
const Verbs& V();
const Rdmacm& Cm();

// ibv_query_port as verbs.h's inline wrapper does it: the context's extended op when present,
// else the exported compat function.
int QueryPort(ibv_context* ctx, uint8_t port, ibv_port_attr* attr);

}  // namespace koala
