/*
 * srnic's internal interface between its parts: srnic.c (devices, PD, CQ, MR, MW, QP objects and
 * the loopback QPs), nic.c (the service thread acting as the NIC: links, wire, requester and
 * responder of connected QPs) and cm.c (the librdmacm subset). Nothing here is exported.
 */
#ifndef SRNIC_H
#define SRNIC_H

#include <pthread.h>
#include <stdint.h>
#include <stddef.h>

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#define SRNIC_EXPORT __attribute__((visibility("default")))
#define SRNIC_INTERNAL __attribute__((visibility("hidden")))
#define SRNIC_MAX_INLINE 256
#define SRNIC_MAX_SGE 8
#define SRNIC_MAX_QP_WR 4096
#define SRNIC_MAX_CQE 4194303 /* max_cqe (as ConnectX reports it): create and resize accept 1..this */
#define SRNIC_MAX_PRIVATE 56

/* The NIC lock: every CM id, event queue, link, connected QP (its queues and state) and memory
 * window is read and written under it, by the application threads and the service thread alike.
 * Lock order: srnic_lock, then a loopback QP's lock, then the MR table's lock, then a CQ's lock. */
extern pthread_mutex_t srnic_lock SRNIC_INTERNAL;

/* ---- completion queues (srnic.c) ---- */
struct srnic_cq {
  struct ibv_cq cq;
  pthread_mutex_t lock;
  pthread_cond_t cond; /* SRNIC_CQ_SELFTEST's thread waits on it for arming and room */
  struct ibv_wc *ring;
  int cap, head, count, armed, stop, overrun;
  pthread_t selftest;
  int has_selftest;
};
SRNIC_INTERNAL void srnic_complete(struct ibv_cq *cq, uint64_t wr_id, enum ibv_wc_status status, enum ibv_wc_opcode op, uint32_t len, uint32_t qpn, int with_imm, uint32_t imm);

/* ---- memory regions and windows (srnic.c) ---- */
struct srnic_mr {
  struct ibv_mr mr;
  int access;
  int windows; /* type-2 windows currently bound to it */
  struct srnic_mr *next;
};
struct srnic_qp;
struct srnic_mw {
  struct ibv_mw mw;
  int bound;
  uint32_t bound_rkey;
  struct srnic_qp *qp; /* the QP it is bound to */
  struct srnic_mr *mr;
  uint64_t addr, length;
  int access;
  struct srnic_mw *next;
};
/* Resolves [addr, addr+len) through an lkey of `pd` with `access`; the memory or NULL. Under srnic_lock. */
SRNIC_INTERNAL void *srnic_local_mem(struct ibv_pd *pd, uint32_t lkey, uint64_t addr, uint64_t len, int access);
/* The target's check of a remote access on `qp`: an MR rkey of its PD, or a window bound to it. Under srnic_lock. */
SRNIC_INTERNAL void *srnic_remote_mem(struct srnic_qp *qp, uint32_t rkey, uint64_t addr, uint64_t len, int access);
/* Executes a type-2 bind / a local invalidate posted on `qp`; an IBV_WC status. Under srnic_lock. */
SRNIC_INTERNAL enum ibv_wc_status srnic_bind_mw(struct srnic_qp *qp, const struct ibv_send_wr *wr);
SRNIC_INTERNAL enum ibv_wc_status srnic_local_inv(struct srnic_qp *qp, uint32_t rkey);
/* Unbinds every window bound to `qp` (it is being destroyed). Under srnic_lock. */
SRNIC_INTERNAL void srnic_unbind_qp_windows(struct srnic_qp *qp);

/* ---- queue pairs ---- */
struct srnic_recv {
  uint64_t wr_id;
  int num_sge;
  struct ibv_sge sge[SRNIC_MAX_SGE];
};
/* A send work request of a connected QP, from post until its completion. */
struct srnic_swr {
  uint64_t wr_id;
  enum ibv_wc_opcode wc_op;
  int signaled;
  int wire;   /* travels to the peer (not a local bind / invalidate) */
  int sent;   /* was put on the wire (not when posted behind a local failure) */
  int done;   /* answered (or a local op): completes once at the head */
  enum ibv_wc_status status;
  uint32_t seq, byte_len;
  int rnr_left; /* retries left after "receiver not ready"; -1 = forever */
  uint8_t *pkt; /* the packet's body, kept for a retransmission after RNR */
  size_t pkt_len;
  uint32_t pkt_type;
  int num_sge; /* a READ's local destination */
  struct ibv_sge sge[SRNIC_MAX_SGE];
};
enum srnic_qp_state { QP_INIT, QP_RTS, QP_ERROR };
struct srnic_id;
struct srnic_qp {
  struct ibv_qp qp;
  pthread_mutex_t lock; /* loopback QPs only */
  struct srnic_recv *rq;
  int rq_cap, rq_head, rq_count;
  struct ibv_qp_cap cap;
  int loopback; /* made by ibv_create_qp: connected to itself, executed in the post call */
  /* Connected QPs (rdma_create_qp), under srnic_lock: */
  struct srnic_id *sid;
  enum srnic_qp_state state;
  int rnr_retry;
  struct srnic_swr *sq;
  int sq_cap, sq_head, sq_count;
  uint32_t next_seq, expected;
  int failing;
  int sig_all;
  int64_t rnr_deadline; /* 0 = no retransmission scheduled */
  uint32_t rnr_seq;     /* the request refused "receiver not ready" */
  int rnr_count;        /* refusals of rnr_seq in a row (the delay doubles, up to 64 ms) */
  int rnr_resume;       /* rnr_seq was sent again alone: what follows it goes once it is ACKed */
};
SRNIC_INTERNAL struct srnic_qp *srnic_qp_new(struct ibv_pd *pd, struct ibv_qp_init_attr *attr, int loopback);
SRNIC_INTERNAL void srnic_qp_free(struct srnic_qp *q);
/* Data path of connected QPs (nic.c). */
SRNIC_INTERNAL int nic_post_send(struct srnic_qp *q, struct ibv_send_wr *wr, struct ibv_send_wr **bad);
SRNIC_INTERNAL int nic_post_recv(struct srnic_qp *q, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad);
SRNIC_INTERNAL void nic_qp_error(struct srnic_qp *q);

/* ---- contexts (srnic.c) ---- */
/* The context librdmacm hands out (rdma_get_devices) and sets on ids; NULL when no device is active. */
SRNIC_INTERNAL struct ibv_context *srnic_cm_context(void);
SRNIC_INTERNAL struct ibv_context **srnic_cm_contexts(int *n);

/* ---- the network and the connection manager (nic.c, cm.c) ---- */
enum srnic_id_state {
  ID_IDLE,
  ID_ADDR_RESOLVED,
  ID_ROUTE_RESOLVED,
  ID_BOUND,
  ID_LISTENING,
  ID_CONNECTING, /* active: REQ sent (or the connect is pending), waiting for ACCEPT / REJECT */
  ID_REQUESTED,  /* passive: CONNECT_REQUEST delivered, waiting for accept / reject */
  ID_ACCEPTING,  /* passive: ACCEPT sent, waiting for RTU */
  ID_CONNECTED,
  ID_DISCONNECTED,
  ID_DONE
};
struct srnic_link;
struct srnic_chan;
struct srnic_id {
  struct rdma_cm_id id; /* first: the application's rdma_cm_id */
  struct srnic_chan *chan;
  enum srnic_id_state state;
  struct srnic_link *link;   /* connected / connecting: the socket to the peer */
  struct srnic_link *listen; /* listening */
  int bound_fd;              /* bound, not yet listening */
  char path[108]; /* a bound id's socket file */
  int timeout_ms;
  int64_t deadline; /* connecting: UNREACHABLE at this time; 0 = none */
  int rnr_retry;
  uint32_t peer_qpn;
  struct srnic_id *next, *prev; /* every live id, for the service thread's timers */
};
/* A socket to a peer (or a connection accepted and waiting for its REQ), or (KIND_LISTENER) a
 * listening socket of the id `id`: what the service thread's epoll watches. */
struct srnic_link {
  int kind; /* KIND_LINK or KIND_LISTENER */
  int fd;
  int dead;
  struct srnic_id *id;
  struct srnic_id *listener; /* accepted, no REQ yet */
  uint8_t *in;
  size_t in_len, in_cap;
  uint8_t *out;
  size_t out_off, out_len, out_cap;
  int want_out;
  int shut_after_flush, shut_done, broken;
  int dirty;                       /* output queued by the service thread, written at the end of its turn */
  struct srnic_link *dirty_next;
  struct srnic_link *next;         /* graveyard */
  struct srnic_link *pending_next; /* accepted links waiting for their REQ */
};

/* Wire: every packet is a header and a body of `len` bytes. */
enum { PKT_CM_REQ = 1, PKT_CM_ACCEPT, PKT_CM_REJECT, PKT_CM_RTU, PKT_CM_DISCONNECT, PKT_SEND = 10, PKT_WRITE, PKT_READ, PKT_ACK = 20, PKT_NAK, PKT_RNR_NAK, PKT_READ_RESP };
struct wire_hdr {
  uint32_t len;
  uint32_t type;
};
struct wire_cm {
  uint32_t qpn;
  uint16_t port;
  uint8_t rnr_retry;
  uint8_t pdlen;
  uint8_t pd[SRNIC_MAX_PRIVATE];
};
struct wire_data {
  uint32_t seq;
  uint32_t op; /* IBV_WR_* of SEND / WRITE; the status of a NAK */
  uint32_t imm; /* as posted (network order) */
  uint32_t rkey;
  uint64_t raddr;
  uint32_t len; /* READ: bytes asked for */
  uint32_t pad;
};

SRNIC_INTERNAL int64_t srnic_now_ms(void);
SRNIC_INTERNAL int nic_start(void);
SRNIC_INTERNAL void nic_wake(void);
SRNIC_INTERNAL int nic_add_fd(int fd, void *ptr, int out);
SRNIC_INTERNAL struct srnic_link *nic_link_new(int fd, int kind);
SRNIC_INTERNAL void nic_link_close(struct srnic_link *l);
SRNIC_INTERNAL void nic_link_send(struct srnic_link *l, uint32_t type, const void *a, size_t alen, const void *b, size_t blen);
SRNIC_INTERNAL void nic_link_shut(struct srnic_link *l);
/* The responder and the requester's answers: a data packet for the QP of `sid` (nic.c). */
SRNIC_INTERNAL void nic_data_packet(struct srnic_qp *q, uint32_t type, const uint8_t *body, size_t len);
/* Retransmits after RNR when due; the next deadline of `q` (0 = none). */
SRNIC_INTERNAL int64_t nic_qp_timer(struct srnic_qp *q, int64_t now);
/* cm.c callbacks from the service thread, under srnic_lock. */
SRNIC_INTERNAL void cm_accept_ready(struct srnic_id *listener);
SRNIC_INTERNAL void cm_packet(struct srnic_link *l, uint32_t type, const uint8_t *body, size_t len);
SRNIC_INTERNAL void cm_link_lost(struct srnic_link *l);
SRNIC_INTERNAL int64_t cm_timers(int64_t now);

#define KIND_WAKE 1
#define KIND_LISTENER 2
#define KIND_LINK 3

#endif
