/*
 * srnic: the software RNIC for tests, a shared library that stands in for BOTH libibverbs.so.1
 * and librdmacm.so.1 (select it with KOALA_VERBS_LIB and KOALA_RDMACM_LIB), so the addon's code
 * under test is the code that runs on a NIC. It implements the subset of both ABIs the addon
 * calls, with rdma-core's semantics (and the soft provider's, src/transport/rdma/soft.ts, where
 * the Verbs interface shows them). It is a test device: strict, not fast.
 *
 * Parts: this file (devices, contexts, PD, CQ and completion channels, MR, type-2 memory
 * windows, QP objects and the loopback QPs), nic.c (the NIC: one service thread per process,
 * the wire, the requester and responder of connected QPs) and cm.c (the librdmacm subset).
 *
 * Devices come from SRNIC_DEVICES, a comma-separated list of name:state, state being active,
 * down, init, armed or noopen (ibv_open_device fails with EACCES); default "srnic0:active".
 * Each device has one Ethernet port with a 1024-byte active MTU; an RC QP accepts up to 256
 * bytes of inline data, 8 SGEs, 4096 work requests; a CQ up to 4194303 entries (max_cqe), resizable.
 *
 * The network: srnic reaches only this machine (127.0.0.0/8, 0.0.0.0). An RDMA CM port P is the
 * Unix stream socket `cm-P` in SRNIC_NET_DIR (default /tmp/koala-srnic-<uid>, mode 0700), so
 * srnic's ports never collide with TCP ports. Each connection is one stream socket between the
 * two processes' service threads (or two sockets of the same thread when both ends are in one
 * process), carrying CM messages (REQ, ACCEPT, REJECT, RTU, DISCONNECT) and the data path
 * (SEND, WRITE, READ with sequence numbers; ACK, NAK, RNR NAK, READ response). The target's
 * service thread executes requests against its registered memory with rkey, bounds, access and
 * window checks, as a NIC does. A QP made with ibv_create_qp (no CM id) is connected to itself
 * and executed synchronously in the post call (the first version's loopback, kept for tests).
 *
 * Environment: SRNIC_DEVICES, SRNIC_COMPAT=1 (no extended verbs context), SRNIC_NET_DIR,
 * SRNIC_LEAK_CHECK=1 (objects left open printed at exit), SRNIC_CQ_SELFTEST=N (see the CQ).
 * Its own test: test/selftest.c, run by test/transport/srnic.test.ts.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "srnic.h"

#undef ibv_query_port
#undef ibv_reg_mr

#define SRNIC_MAX_DEVICES 8

pthread_mutex_t srnic_lock = PTHREAD_MUTEX_INITIALIZER;

struct srnic_device {
  struct ibv_device dev; /* first: the addon sees a struct ibv_device */
  enum ibv_port_state state;
  int no_open;
};

struct srnic_context {
  struct verbs_context vctx; /* its `context` member is the ibv_context handed out */
  struct srnic_device *device;
  int cm_owned; /* librdmacm's (rdma_get_devices): lives as long as the process */
};

static struct srnic_device devices[SRNIC_MAX_DEVICES];

static int srnic_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc);
static int srnic_req_notify_cq(struct ibv_cq *cq, int solicited_only);
static int srnic_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad);
static int srnic_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad);
static int mr_check(uint32_t key, int remote, uint64_t addr, uint64_t len, int access);
static struct ibv_mw *srnic_alloc_mw(struct ibv_pd *pd, enum ibv_mw_type type);
static int srnic_dealloc_mw(struct ibv_mw *mw);

/* A completion channel: the read end of a pipe is its fd; the NIC side writes the other. */
struct srnic_channel {
  struct ibv_comp_channel ch;
  int wfd;
};

/* Objects handed out and not yet destroyed; with SRNIC_LEAK_CHECK=1 they are printed at exit,
 * so a test can see that everything the addon opened was released. */
static int live_contexts, live_pds, live_mrs, live_cqs, live_qps;

__attribute__((destructor)) static void report_leaks(void) {
  const char *check = getenv("SRNIC_LEAK_CHECK");
  if (check != NULL && strcmp(check, "1") == 0) {
    fprintf(stderr, "srnic: live at exit: %d contexts, %d pds, %d mrs, %d cqs, %d qps\n", live_contexts, live_pds, live_mrs, live_cqs, live_qps);
  }
}

/* The devices of SRNIC_DEVICES, read once per process (the same ibv_device pointers for its life,
 * and no thread rewrites them while another reads them). */
static int ndevices;
static pthread_once_t devices_once = PTHREAD_ONCE_INIT;
static void parse_devices_once(void) {
  const char *spec = getenv("SRNIC_DEVICES");
  char buf[512];
  int n = 0;
  strncpy(buf, spec != NULL && spec[0] != '\0' ? spec : "srnic0:active", sizeof(buf) - 1);
  buf[sizeof(buf) - 1] = '\0';
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok != NULL && n < SRNIC_MAX_DEVICES; tok = strtok_r(NULL, ",", &save)) {
    struct srnic_device *d = &devices[n];
    char *colon = strchr(tok, ':');
    const char *state = colon != NULL ? colon + 1 : "active";
    if (colon != NULL) *colon = '\0';
    memset(d, 0, sizeof(*d));
    strncpy(d->dev.name, tok, sizeof(d->dev.name) - 1);
    strncpy(d->dev.dev_name, "uverbs-srnic", sizeof(d->dev.dev_name) - 1);
    d->dev.node_type = IBV_NODE_RNIC;
    d->dev.transport_type = IBV_TRANSPORT_IWARP;
    d->state = IBV_PORT_ACTIVE;
    if (strcmp(state, "down") == 0) d->state = IBV_PORT_DOWN;
    else if (strcmp(state, "init") == 0) d->state = IBV_PORT_INIT;
    else if (strcmp(state, "armed") == 0) d->state = IBV_PORT_ARMED;
    else if (strcmp(state, "noopen") == 0) d->no_open = 1;
    n++;
  }
  ndevices = n;
}

static int parse_devices(void) {
  pthread_once(&devices_once, parse_devices_once);
  return ndevices;
}

SRNIC_EXPORT struct ibv_device **ibv_get_device_list(int *num_devices) {
  int n = parse_devices();
  struct ibv_device **list = calloc((size_t)n + 1, sizeof(*list));
  if (list == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  for (int i = 0; i < n; i++) list[i] = &devices[i].dev;
  if (num_devices != NULL) *num_devices = n;
  return list;
}

SRNIC_EXPORT void ibv_free_device_list(struct ibv_device **list) { free(list); }

SRNIC_EXPORT const char *ibv_get_device_name(struct ibv_device *device) { return device->name; }

/* Port 1 of device `d`: one Ethernet port, 1024-byte active MTU, one GID. */
static void fill_port(const struct srnic_device *d, struct ibv_port_attr *a) {
  memset(a, 0, sizeof(*a));
  a->state = d->state;
  a->max_mtu = IBV_MTU_4096;
  a->active_mtu = IBV_MTU_1024;
  a->gid_tbl_len = 1;
  a->max_msg_sz = 1u << 31;
  a->link_layer = IBV_LINK_LAYER_ETHERNET;
}

static int srnic_query_port(struct ibv_context *context, uint8_t port_num, struct ibv_port_attr *attr, size_t len) {
  struct ibv_port_attr a;
  if (port_num != 1) return EINVAL;
  fill_port(((struct srnic_context *)verbs_get_ctx(context))->device, &a);
  memcpy(attr, &a, len < sizeof(a) ? len : sizeof(a));
  return 0;
}

/* Opens `device`; `cm` marks librdmacm's own context (not counted as the application's). */
static struct ibv_context *open_device(struct ibv_device *device, int cm) {
  struct srnic_device *d = (struct srnic_device *)device;
  struct srnic_context *c;
  if (d->no_open) {
    errno = EACCES;
    return NULL;
  }
  c = calloc(1, sizeof(*c));
  if (c == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  c->device = d;
  c->cm_owned = cm;
  if (!cm) __atomic_add_fetch(&live_contexts, 1, __ATOMIC_RELAXED);
  c->vctx.context.device = device;
  c->vctx.context.cmd_fd = -1;
  c->vctx.context.async_fd = -1;
  c->vctx.context.num_comp_vectors = 1;
  c->vctx.context.ops.poll_cq = srnic_poll_cq;
  c->vctx.context.ops.req_notify_cq = srnic_req_notify_cq;
  c->vctx.context.ops.post_send = srnic_post_send;
  c->vctx.context.ops.post_recv = srnic_post_recv;
  c->vctx.context.ops.alloc_mw = srnic_alloc_mw;
  c->vctx.context.ops.dealloc_mw = srnic_dealloc_mw;
  if (getenv("SRNIC_COMPAT") == NULL || strcmp(getenv("SRNIC_COMPAT"), "1") != 0) {
    c->vctx.sz = sizeof(struct verbs_context);
    c->vctx.context.abi_compat = __VERBS_ABI_IS_EXTENDED;
    c->vctx.query_port = srnic_query_port;
  }
  return &c->vctx.context;
}

SRNIC_EXPORT struct ibv_context *ibv_open_device(struct ibv_device *device) { return open_device(device, 0); }

SRNIC_EXPORT int ibv_close_device(struct ibv_context *context) {
  struct srnic_context *c = (struct srnic_context *)((char *)context - offsetof(struct verbs_context, context));
  if (c->cm_owned) return 0; /* librdmacm's: never closed by an application */
  __atomic_sub_fetch(&live_contexts, 1, __ATOMIC_RELAXED);
  free(c);
  return 0;
}

/* librdmacm's contexts: one per active device, opened once, the same pointers for the life of
 * the process (rdma_get_devices). */
static struct ibv_context *cm_ctx[SRNIC_MAX_DEVICES];
static int cm_ctx_n = -1;

struct ibv_context **srnic_cm_contexts(int *n) {
  pthread_mutex_lock(&srnic_lock);
  if (cm_ctx_n < 0) {
    int nd = parse_devices();
    cm_ctx_n = 0;
    for (int i = 0; i < nd; i++) {
      if (devices[i].state != IBV_PORT_ACTIVE || devices[i].no_open) continue;
      struct ibv_context *c = open_device(&devices[i].dev, 1);
      if (c == NULL) continue;
      /* srnic0 first when present: ids get the first context. */
      if (strcmp(devices[i].dev.name, "srnic0") == 0 && cm_ctx_n > 0) {
        memmove(&cm_ctx[1], &cm_ctx[0], sizeof(cm_ctx[0]) * (size_t)cm_ctx_n);
        cm_ctx[0] = c;
      } else {
        cm_ctx[cm_ctx_n] = c;
      }
      cm_ctx_n++;
    }
  }
  *n = cm_ctx_n;
  pthread_mutex_unlock(&srnic_lock);
  return cm_ctx;
}

struct ibv_context *srnic_cm_context(void) {
  int n;
  struct ibv_context **list = srnic_cm_contexts(&n);
  return n > 0 ? list[0] : NULL;
}

SRNIC_EXPORT int ibv_query_device(struct ibv_context *context, struct ibv_device_attr *attr) {
  (void)context;
  memset(attr, 0, sizeof(*attr));
  strncpy(attr->fw_ver, "srnic 0.1", sizeof(attr->fw_ver) - 1);
  attr->max_mr_size = 1ull << 40;
  attr->max_qp = 1024;
  attr->max_qp_wr = 4096;
  attr->max_sge = 8;
  attr->max_cq = 1024;
  attr->max_cqe = SRNIC_MAX_CQE;
  attr->max_mr = 4096;
  attr->max_pd = 64;
  attr->phys_port_cnt = 1;
  return 0;
}

/* The exported compat entry point: fills the legacy prefix of struct ibv_port_attr. */
SRNIC_EXPORT int ibv_query_port(struct ibv_context *context, uint8_t port_num, struct _compat_ibv_port_attr *attr) {
  struct ibv_port_attr a;
  if (port_num != 1) return EINVAL;
  fill_port((const struct srnic_device *)context->device, &a);
  /* The legacy struct ends before `flags` (added with the extended query). */
  memcpy(attr, &a, offsetof(struct ibv_port_attr, flags));
  return 0;
}

SRNIC_EXPORT int ibv_query_gid(struct ibv_context *context, uint8_t port_num, int index, union ibv_gid *gid) {
  if (port_num != 1 || index != 0) return -1;
  memset(gid, 0, sizeof(*gid));
  gid->raw[0] = 0xfe;
  gid->raw[1] = 0x80;
  gid->raw[15] = (uint8_t)(1 + ((struct srnic_device *)context->device - devices));
  return 0;
}

SRNIC_EXPORT struct ibv_pd *ibv_alloc_pd(struct ibv_context *context) {
  struct ibv_pd *pd = calloc(1, sizeof(*pd));
  if (pd != NULL) {
    pd->context = context;
    __atomic_add_fetch(&live_pds, 1, __ATOMIC_RELAXED);
  }
  return pd;
}

SRNIC_EXPORT int ibv_dealloc_pd(struct ibv_pd *pd) {
  __atomic_sub_fetch(&live_pds, 1, __ATOMIC_RELAXED);
  free(pd);
  return 0;
}

/* A completion queue (struct srnic_cq, srnic.h): a ring of work completions under a lock. When
 * a completion arrives on an armed CQ, the CQ's address is written to its completion channel's
 * pipe, which ibv_get_cq_event reads back. SRNIC_CQ_SELFTEST=N makes a thread (standing in for
 * the NIC) deliver N receive completions to each new CQ (wr_id i, byte_len i, imm i, qp_num 7),
 * from the first time it is armed, while the CQ has room, so the completion path can be tested
 * without queue pairs. */
static void cq_notify_locked(struct srnic_cq *c) {
  if (c->armed && c->cq.channel != NULL) {
    struct ibv_cq *p = &c->cq;
    c->armed = 0;
    /* Non-blocking: a full pipe is readable already, which is all a notification needs. */
    if (write(((struct srnic_channel *)c->cq.channel)->wfd, &p, sizeof(p)) != (ssize_t)sizeof(p)) { /* full */ }
  }
}

static int cq_push(struct srnic_cq *c, const struct ibv_wc *wc) {
  int ok = 0;
  pthread_mutex_lock(&c->lock);
  if (c->count < c->cap) {
    c->ring[(c->head + c->count) % c->cap] = *wc;
    c->count++;
    ok = 1;
    cq_notify_locked(c);
  } else if (!c->overrun) {
    /* A NIC would raise IBV_EVENT_CQ_ERR; there are no async events here: say it, and fail
     * every poll from now on (as the soft provider does), since a completion is lost. */
    c->overrun = 1;
    fprintf(stderr, "srnic: CQ %p overrun: a completion was lost (the CQ holds %d)\n", (void *)c, c->cap);
  }
  pthread_mutex_unlock(&c->lock);
  return ok;
}

static int srnic_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc) {
  struct srnic_cq *c = (struct srnic_cq *)cq;
  int n = 0;
  pthread_mutex_lock(&c->lock);
  if (c->overrun) {
    pthread_mutex_unlock(&c->lock);
    errno = EOVERFLOW;
    return -1;
  }
  while (n < num_entries && c->count > 0) {
    wc[n++] = c->ring[c->head];
    c->head = (c->head + 1) % c->cap;
    c->count--;
  }
  if (n > 0 && c->has_selftest) pthread_cond_broadcast(&c->cond); /* room for the self-test thread */
  pthread_mutex_unlock(&c->lock);
  return n;
}

static int srnic_req_notify_cq(struct ibv_cq *cq, int solicited_only) {
  struct srnic_cq *c = (struct srnic_cq *)cq;
  (void)solicited_only;
  pthread_mutex_lock(&c->lock);
  c->armed = 1;
  pthread_cond_broadcast(&c->cond);
  pthread_mutex_unlock(&c->lock);
  return 0;
}

/* SRNIC_CQ_SELFTEST's thread: waits (on the CQ's condition variable, no polling) until the
 * consumer arms the CQ, then delivers its completions, waiting for room whenever it is full. */
static void *cq_selftest(void *arg) {
  struct srnic_cq *c = arg;
  long n = strtol(getenv("SRNIC_CQ_SELFTEST"), NULL, 10);
  pthread_mutex_lock(&c->lock);
  /* Start once the consumer has armed the CQ, so the first completion is always notified. */
  while (!c->armed && !c->stop) pthread_cond_wait(&c->cond, &c->lock);
  for (long i = 0; i < n && !c->stop; i++) {
    struct ibv_wc *wc;
    while (c->count == c->cap && !c->stop) pthread_cond_wait(&c->cond, &c->lock);
    if (c->stop) break;
    wc = &c->ring[(c->head + c->count) % c->cap];
    memset(wc, 0, sizeof(*wc));
    wc->wr_id = (uint64_t)i;
    wc->status = IBV_WC_SUCCESS;
    wc->opcode = IBV_WC_RECV;
    wc->byte_len = (uint32_t)i;
    wc->imm_data = htonl((uint32_t)i);
    wc->wc_flags = IBV_WC_WITH_IMM;
    wc->qp_num = 7;
    c->count++;
    cq_notify_locked(c);
  }
  pthread_mutex_unlock(&c->lock);
  return NULL;
}

SRNIC_EXPORT struct ibv_comp_channel *ibv_create_comp_channel(struct ibv_context *context) {
  int fds[2];
  struct srnic_channel *ch;
  if (pipe2(fds, O_CLOEXEC) != 0) return NULL;
  if (fcntl(fds[1], F_SETFL, O_NONBLOCK) != 0) {
    close(fds[0]);
    close(fds[1]);
    return NULL;
  }
  ch = calloc(1, sizeof(*ch));
  if (ch == NULL) {
    close(fds[0]);
    close(fds[1]);
    return NULL;
  }
  ch->ch.context = context;
  ch->ch.fd = fds[0];
  ch->wfd = fds[1];
  return &ch->ch;
}

SRNIC_EXPORT int ibv_destroy_comp_channel(struct ibv_comp_channel *channel) {
  close(channel->fd);
  close(((struct srnic_channel *)channel)->wfd);
  free(channel);
  return 0;
}

SRNIC_EXPORT int ibv_get_cq_event(struct ibv_comp_channel *channel, struct ibv_cq **cq, void **cq_context) {
  struct ibv_cq *p;
  if (read(channel->fd, &p, sizeof(p)) != (ssize_t)sizeof(p)) return -1;
  *cq = p;
  *cq_context = p->cq_context;
  return 0;
}

SRNIC_EXPORT void ibv_ack_cq_events(struct ibv_cq *cq, unsigned int nevents) {
  (void)cq;
  (void)nevents;
}

SRNIC_EXPORT struct ibv_cq *ibv_create_cq(struct ibv_context *context, int cqe, void *cq_context, struct ibv_comp_channel *channel, int comp_vector) {
  struct srnic_cq *c;
  (void)comp_vector;
  if (cqe < 1 || cqe > SRNIC_MAX_CQE) {
    errno = EINVAL;
    return NULL;
  }
  c = calloc(1, sizeof(*c));
  if (c == NULL) return NULL;
  c->ring = calloc((size_t)cqe, sizeof(*c->ring));
  if (c->ring == NULL) {
    free(c);
    return NULL;
  }
  pthread_mutex_init(&c->lock, NULL);
  pthread_cond_init(&c->cond, NULL);
  c->cap = cqe;
  c->cq.context = context;
  c->cq.cq_context = cq_context;
  c->cq.channel = channel;
  c->cq.cqe = cqe;
  __atomic_add_fetch(&live_cqs, 1, __ATOMIC_RELAXED);
  if (channel != NULL && getenv("SRNIC_CQ_SELFTEST") != NULL) {
    pthread_mutex_lock(&c->lock); /* has_selftest is read under the lock */
    c->has_selftest = pthread_create(&c->selftest, NULL, cq_selftest, c) == 0;
    pthread_mutex_unlock(&c->lock);
  }
  return &c->cq;
}

/* ibv_resize_cq: a new ring of at least `cqe` entries (exactly `cqe` here) receives the queued
 * completions in order, under the CQ's lock, which is the lock every producer (the service
 * thread, a loopback post, the SRNIC_CQ_SELFTEST thread) holds to add a completion, so none is
 * added or lost meanwhile. EINVAL below the completions queued or above max_cqe (the CQ is then
 * unchanged); ENOMEM when the ring cannot be allocated. Returns 0 or an errno value, as rdma-core. */
SRNIC_EXPORT int ibv_resize_cq(struct ibv_cq *cq, int cqe) {
  struct srnic_cq *c = (struct srnic_cq *)cq;
  struct ibv_wc *ring;
  if (cqe < 1 || cqe > SRNIC_MAX_CQE) return EINVAL;
  ring = calloc((size_t)cqe, sizeof(*ring));
  if (ring == NULL) return ENOMEM;
  pthread_mutex_lock(&c->lock);
  if (cqe < c->count) {
    pthread_mutex_unlock(&c->lock);
    free(ring);
    return EINVAL;
  }
  for (int i = 0; i < c->count; i++) ring[i] = c->ring[(c->head + i) % c->cap];
  free(c->ring);
  c->ring = ring;
  c->head = 0;
  c->cap = cqe;
  c->cq.cqe = cqe;
  if (c->has_selftest) pthread_cond_broadcast(&c->cond); /* maybe room for the self-test thread */
  pthread_mutex_unlock(&c->lock);
  return 0;
}

SRNIC_EXPORT int ibv_destroy_cq(struct ibv_cq *cq) {
  struct srnic_cq *c = (struct srnic_cq *)cq;
  pthread_mutex_lock(&c->lock);
  c->stop = 1;
  pthread_cond_broadcast(&c->cond);
  pthread_mutex_unlock(&c->lock);
  if (c->has_selftest) pthread_join(c->selftest, NULL);
  __atomic_sub_fetch(&live_cqs, 1, __ATOMIC_RELAXED);
  pthread_cond_destroy(&c->cond);
  pthread_mutex_destroy(&c->lock);
  free(c->ring);
  free(c);
  return 0;
}

/* Queue pairs (struct srnic_qp, srnic.h). One made by ibv_create_qp has no CM id and is connected
 * to itself (loopback): a SEND consumes one of its own posted receives, RDMA READ / WRITE name
 * regions of this process by rkey, and work requests are processed in the post call, in order.
 * One made by rdma_create_qp is connected to a peer through its id; nic.c runs its data path. */
static uint32_t next_qpn = 0x100;

/* Pushes one work completion to `cq` (imm in network order, as posted). */
void srnic_complete(struct ibv_cq *cq, uint64_t wr_id, enum ibv_wc_status status, enum ibv_wc_opcode op, uint32_t len, uint32_t qpn, int with_imm, uint32_t imm) {
  struct ibv_wc wc;
  memset(&wc, 0, sizeof(wc));
  wc.wr_id = wr_id;
  wc.status = status;
  wc.opcode = op;
  wc.byte_len = len;
  wc.qp_num = qpn;
  if (with_imm) {
    wc.wc_flags = IBV_WC_WITH_IMM;
    wc.imm_data = imm;
  }
  cq_push((struct srnic_cq *)cq, &wc);
}

static void complete(struct ibv_cq *cq, uint64_t wr_id, enum ibv_wc_status status, enum ibv_wc_opcode op, uint32_t len, uint32_t qpn, int with_imm, __be32 imm) {
  srnic_complete(cq, wr_id, status, op, len, qpn, with_imm, (uint32_t)imm);
}

/* Copies `len` bytes of `data` into the scatter list; 0 on success, else a completion status. */
static enum ibv_wc_status scatter(const struct ibv_sge *sge, int n, const uint8_t *data, uint64_t len) {
  uint64_t room = 0, off = 0;
  for (int i = 0; i < n; i++) {
    if (!mr_check(sge[i].lkey, 0, sge[i].addr, sge[i].length, IBV_ACCESS_LOCAL_WRITE)) return IBV_WC_LOC_PROT_ERR;
    room += sge[i].length;
  }
  if (len > room) return IBV_WC_LOC_LEN_ERR;
  for (int i = 0; i < n && off < len; i++) {
    uint64_t k = sge[i].length < len - off ? sge[i].length : len - off;
    memcpy((void *)(uintptr_t)sge[i].addr, data + off, k);
    off += k;
  }
  return IBV_WC_SUCCESS;
}

static int srnic_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad) {
  struct srnic_qp *q = (struct srnic_qp *)qp;
  int rc = 0;
  if (!q->loopback) return nic_post_recv(q, wr, bad);
  pthread_mutex_lock(&q->lock);
  for (; wr != NULL; wr = wr->next) {
    struct srnic_recv *r;
    if (q->rq_count == q->rq_cap || wr->num_sge > SRNIC_MAX_SGE || wr->num_sge < 0) {
      rc = q->rq_count == q->rq_cap ? ENOMEM : EINVAL;
      *bad = wr;
      break;
    }
    r = &q->rq[(q->rq_head + q->rq_count) % q->rq_cap];
    r->wr_id = wr->wr_id;
    r->num_sge = wr->num_sge;
    memcpy(r->sge, wr->sg_list, sizeof(struct ibv_sge) * (size_t)wr->num_sge);
    q->rq_count++;
  }
  pthread_mutex_unlock(&q->lock);
  return rc;
}

static int pop_recv(struct srnic_qp *q, struct srnic_recv *out) {
  int ok = 0;
  pthread_mutex_lock(&q->lock);
  if (q->rq_count > 0) {
    *out = q->rq[q->rq_head];
    q->rq_head = (q->rq_head + 1) % q->rq_cap;
    q->rq_count--;
    ok = 1;
  }
  pthread_mutex_unlock(&q->lock);
  return ok;
}

static void process_send(struct srnic_qp *q, const struct ibv_send_wr *wr) {
  enum ibv_wc_status st = IBV_WC_SUCCESS;
  enum ibv_wc_opcode op = wr->opcode == IBV_WR_RDMA_READ ? IBV_WC_RDMA_READ : (wr->opcode == IBV_WR_RDMA_WRITE || wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) ? IBV_WC_RDMA_WRITE : IBV_WC_SEND;
  uint64_t len = 0, off = 0;
  uint8_t *data;
  for (int i = 0; i < wr->num_sge; i++) len += wr->sg_list[i].length;
  data = malloc(len > 0 ? len : 1);
  if (data == NULL) {
    st = IBV_WC_GENERAL_ERR;
    goto done;
  }
  if (wr->opcode != IBV_WR_RDMA_READ) { /* gather */
    for (int i = 0; i < wr->num_sge && st == IBV_WC_SUCCESS; i++) {
      const struct ibv_sge *g = &wr->sg_list[i];
      if (!mr_check(g->lkey, 0, g->addr, g->length, 0)) st = IBV_WC_LOC_PROT_ERR;
      else memcpy(data + off, (void *)(uintptr_t)g->addr, g->length);
      off += g->length;
    }
  }
  if (st == IBV_WC_SUCCESS && wr->opcode == IBV_WR_RDMA_READ) {
    if (!mr_check(wr->wr.rdma.rkey, 1, wr->wr.rdma.remote_addr, len, IBV_ACCESS_REMOTE_READ)) st = IBV_WC_REM_ACCESS_ERR;
    else {
      memcpy(data, (void *)(uintptr_t)wr->wr.rdma.remote_addr, len);
      st = scatter(wr->sg_list, wr->num_sge, data, len);
    }
  } else if (st == IBV_WC_SUCCESS && (wr->opcode == IBV_WR_RDMA_WRITE || wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM)) {
    if (!mr_check(wr->wr.rdma.rkey, 1, wr->wr.rdma.remote_addr, len, IBV_ACCESS_REMOTE_WRITE)) st = IBV_WC_REM_ACCESS_ERR;
    else memcpy((void *)(uintptr_t)wr->wr.rdma.remote_addr, data, len);
  }
  if (st == IBV_WC_SUCCESS && wr->opcode != IBV_WR_RDMA_READ && wr->opcode != IBV_WR_RDMA_WRITE) {
    struct srnic_recv r;
    if (!pop_recv(q, &r)) st = IBV_WC_RNR_RETRY_EXC_ERR;
    else {
      int imm = wr->opcode == IBV_WR_SEND_WITH_IMM || wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM;
      enum ibv_wc_status rs = wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM ? IBV_WC_SUCCESS : scatter(r.sge, r.num_sge, data, len);
      complete(q->qp.recv_cq, r.wr_id, rs, wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM ? IBV_WC_RECV_RDMA_WITH_IMM : IBV_WC_RECV, (uint32_t)len, q->qp.qp_num, imm, wr->imm_data);
      if (rs != IBV_WC_SUCCESS) st = IBV_WC_REM_OP_ERR;
    }
  }
done:
  free(data);
  if (st != IBV_WC_SUCCESS || (wr->send_flags & IBV_SEND_SIGNALED)) complete(q->qp.send_cq, wr->wr_id, st, op, (uint32_t)len, q->qp.qp_num, 0, 0);
}

static int srnic_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad) {
  struct srnic_qp *q = (struct srnic_qp *)qp;
  if (!q->loopback) return nic_post_send(q, wr, bad);
  for (; wr != NULL; wr = wr->next) {
    if (wr->num_sge < 0 || wr->num_sge > (int)q->cap.max_send_sge || wr->opcode > IBV_WR_RDMA_READ) {
      *bad = wr;
      return EINVAL;
    }
    process_send(q, wr);
  }
  return 0;
}

/* Makes a QP of `pd` as `attr` asks (caps checked, the granted ones written back): a loopback one
 * (ibv_create_qp) or one for a CM id (rdma_create_qp), in the INIT state. NULL and errno. */
struct srnic_qp *srnic_qp_new(struct ibv_pd *pd, struct ibv_qp_init_attr *attr, int loopback) {
  struct srnic_qp *q;
  uint32_t max_wr = loopback ? 65536 : SRNIC_MAX_QP_WR;
  if (attr->qp_type != IBV_QPT_RC || attr->cap.max_inline_data > SRNIC_MAX_INLINE || attr->cap.max_send_sge > SRNIC_MAX_SGE || attr->cap.max_recv_sge > SRNIC_MAX_SGE || attr->cap.max_recv_wr > max_wr ||
      (!loopback && (attr->cap.max_send_wr > max_wr || attr->send_cq == NULL || attr->recv_cq == NULL || attr->send_cq->context != pd->context || attr->recv_cq->context != pd->context || attr->srq != NULL))) {
    errno = EINVAL;
    return NULL;
  }
  q = calloc(1, sizeof(*q));
  if (q == NULL) return NULL;
  q->rq_cap = attr->cap.max_recv_wr > 0 ? (int)attr->cap.max_recv_wr : 1;
  q->rq = calloc((size_t)q->rq_cap, sizeof(*q->rq));
  q->sq_cap = attr->cap.max_send_wr > 0 ? (int)attr->cap.max_send_wr : 1;
  q->sq = loopback ? NULL : calloc((size_t)q->sq_cap, sizeof(*q->sq));
  if (q->rq == NULL || (!loopback && q->sq == NULL)) {
    free(q->rq);
    free(q->sq);
    free(q);
    errno = ENOMEM;
    return NULL;
  }
  q->loopback = loopback;
  q->state = QP_INIT;
  q->qp.qp_context = attr->qp_context;
  pthread_mutex_init(&q->lock, NULL);
  q->qp.context = pd->context;
  q->qp.pd = pd;
  q->qp.send_cq = attr->send_cq;
  q->qp.recv_cq = attr->recv_cq;
  q->qp.qp_type = attr->qp_type;
  q->qp.state = loopback ? IBV_QPS_RTS : IBV_QPS_INIT;
  q->qp.qp_num = __atomic_add_fetch(&next_qpn, 1, __ATOMIC_RELAXED);
  attr->cap.max_inline_data = SRNIC_MAX_INLINE; /* what a provider grants is written back */
  q->cap = attr->cap;
  __atomic_add_fetch(&live_qps, 1, __ATOMIC_RELAXED);
  return q;
}

SRNIC_EXPORT struct ibv_qp *ibv_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *attr) {
  struct srnic_qp *q = srnic_qp_new(pd, attr, 1);
  return q != NULL ? &q->qp : NULL;
}

/* Frees a QP. A connected one is first moved to the error state (its outstanding work
 * requests flush, as soft.ts does), its windows unbound and its id detached. */
void srnic_qp_free(struct srnic_qp *q) {
  if (!q->loopback) {
    pthread_mutex_lock(&srnic_lock);
    nic_qp_error(q);
    srnic_unbind_qp_windows(q);
    if (q->sid != NULL && q->sid->id.qp == &q->qp) q->sid->id.qp = NULL;
    q->sid = NULL;
    pthread_mutex_unlock(&srnic_lock);
    for (int i = 0; i < q->sq_count; i++) free(q->sq[(q->sq_head + i) % q->sq_cap].pkt);
  }
  __atomic_sub_fetch(&live_qps, 1, __ATOMIC_RELAXED);
  pthread_mutex_destroy(&q->lock);
  free(q->rq);
  free(q->sq);
  free(q);
}

SRNIC_EXPORT int ibv_destroy_qp(struct ibv_qp *qp) {
  srnic_qp_free((struct srnic_qp *)qp);
  return 0;
}

static uint32_t next_key = 0x1000;

/* Every registered region, for the "NIC" to check keys, bounds and access against when it
 * processes a work request (not when it was posted: a region deregistered meanwhile fails).
 * The list is guarded by mrs_lock; a region is removed under srnic_lock too, so the service
 * thread may use a region's memory for as long as it holds srnic_lock. */
static struct srnic_mr *mrs;
static pthread_mutex_t mrs_lock = PTHREAD_MUTEX_INITIALIZER;

/* True when the region `key` (an lkey, or an rkey when `remote`) covers [addr, addr+len) with `access`. */
static int mr_check(uint32_t key, int remote, uint64_t addr, uint64_t len, int access) {
  int ok = 0;
  pthread_mutex_lock(&mrs_lock);
  for (struct srnic_mr *m = mrs; m != NULL; m = m->next) {
    uint64_t base = (uint64_t)(uintptr_t)m->mr.addr;
    if ((remote ? m->mr.rkey : m->mr.lkey) != key) continue;
    ok = addr >= base && len <= m->mr.length && addr - base <= m->mr.length - len && (m->access & access) == access;
    break;
  }
  pthread_mutex_unlock(&mrs_lock);
  return ok;
}

SRNIC_EXPORT struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access) {
  struct ibv_mr *mr;
  /* As libibverbs: remote write (or atomic) access needs local write. */
  if (addr == NULL || length == 0 || (access & ~0x1f) != 0 || ((access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC)) && !(access & IBV_ACCESS_LOCAL_WRITE))) {
    errno = EINVAL;
    return NULL;
  }
  struct srnic_mr *m = calloc(1, sizeof(*m));
  if (m == NULL) return NULL;
  mr = &m->mr;
  m->access = access;
  mr->context = pd->context;
  mr->pd = pd;
  mr->addr = addr;
  mr->length = length;
  mr->lkey = __atomic_add_fetch(&next_key, 1, __ATOMIC_RELAXED);
  mr->rkey = mr->lkey | 0x80000000u;
  __atomic_add_fetch(&live_mrs, 1, __ATOMIC_RELAXED);
  pthread_mutex_lock(&mrs_lock);
  m->next = mrs;
  mrs = m;
  pthread_mutex_unlock(&mrs_lock);
  return mr;
}

/* What verbs.h's ibv_reg_mr macro calls when the access flags are not a constant: only a
 * zero-based-free registration (iova == addr) here; the optional flags are hints and dropped. */
SRNIC_EXPORT struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova, unsigned int access) {
  if (iova != (uint64_t)(uintptr_t)addr) {
    errno = EINVAL;
    return NULL;
  }
  return ibv_reg_mr(pd, addr, length, (int)(access & (IBV_ACCESS_OPTIONAL_FIRST - 1)));
}

SRNIC_EXPORT const char *ibv_wc_status_str(enum ibv_wc_status status) {
  static const char *const names[] = {
      "success", "local length error", "local QP operation error", "local EE context operation error", "local protection error", "Work Request Flushed Error", "memory management operation error",
      "bad response error", "local access error", "remote invalid request error", "remote access error", "remote operation error", "transport retry counter exceeded", "RNR retry counter exceeded",
      "local RDD violation error", "remote invalid RD request", "aborted error", "invalid EE context number", "invalid EE context state", "fatal error", "response timeout error", "general error",
  };
  return (unsigned)status < sizeof(names) / sizeof(names[0]) ? names[status] : "unknown";
}

SRNIC_EXPORT int ibv_dereg_mr(struct ibv_mr *mr) {
  struct srnic_mr *m = (struct srnic_mr *)mr;
  pthread_mutex_lock(&srnic_lock);
  if (m->windows > 0) { /* as rdma-core: a region with windows bound stays */
    pthread_mutex_unlock(&srnic_lock);
    return EBUSY;
  }
  pthread_mutex_lock(&mrs_lock);
  for (struct srnic_mr **pp = &mrs; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == m) {
      *pp = m->next;
      break;
    }
  }
  pthread_mutex_unlock(&mrs_lock);
  pthread_mutex_unlock(&srnic_lock);
  __atomic_sub_fetch(&live_mrs, 1, __ATOMIC_RELAXED);
  free(m);
  return 0;
}

/* True when [addr, addr+len) lies within [base, base+size). */
static int within(uint64_t addr, uint64_t len, uint64_t base, uint64_t size) { return addr >= base && len <= size && addr - base <= size - len; }

void *srnic_local_mem(struct ibv_pd *pd, uint32_t lkey, uint64_t addr, uint64_t len, int access) {
  void *p = NULL;
  pthread_mutex_lock(&mrs_lock);
  for (struct srnic_mr *m = mrs; m != NULL; m = m->next) {
    if (m->mr.lkey != lkey) continue;
    if (m->mr.pd == pd && (m->access & access) == access && within(addr, len, (uint64_t)(uintptr_t)m->mr.addr, m->mr.length)) p = (void *)(uintptr_t)addr;
    break;
  }
  pthread_mutex_unlock(&mrs_lock);
  return p;
}

/* Type-2 memory windows. A window has an index (the upper 24 bits of its rkey) and, while
 * bound, a key (the low 8 bits of the bind's rkey, chosen by the binder, e.g. ibv_inc_rkey), a
 * QP, a region and a range with REMOTE_READ / REMOTE_WRITE. It is bound from the free state only
 * (LOCAL_INV with the bound rkey, or dealloc, frees it). All under srnic_lock. */
static struct srnic_mw *mws;
static uint32_t next_mw_index = 0x100;

void *srnic_remote_mem(struct srnic_qp *qp, uint32_t rkey, uint64_t addr, uint64_t len, int access) {
  void *p = NULL;
  for (struct srnic_mw *w = mws; w != NULL; w = w->next) {
    if (!w->bound || w->bound_rkey != rkey) continue;
    /* A type-2 window answers only on the QP it is bound to. */
    if (w->qp == qp && (w->access & access) == access && within(addr, len, w->addr, w->length)) return (void *)(uintptr_t)addr;
    return NULL;
  }
  pthread_mutex_lock(&mrs_lock);
  for (struct srnic_mr *m = mrs; m != NULL; m = m->next) {
    if (m->mr.rkey != rkey) continue;
    if (m->mr.pd == qp->qp.pd && (m->access & access) == access && within(addr, len, (uint64_t)(uintptr_t)m->mr.addr, m->mr.length)) p = (void *)(uintptr_t)addr;
    break;
  }
  pthread_mutex_unlock(&mrs_lock);
  return p;
}

static struct ibv_mw *srnic_alloc_mw(struct ibv_pd *pd, enum ibv_mw_type type) {
  struct srnic_mw *w;
  if (type != IBV_MW_TYPE_2) { /* type 1 (ibv_bind_mw) is not implemented */
    errno = EOPNOTSUPP;
    return NULL;
  }
  w = calloc(1, sizeof(*w));
  if (w == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  w->mw.context = pd->context;
  w->mw.pd = pd;
  w->mw.type = type;
  pthread_mutex_lock(&srnic_lock);
  w->mw.handle = next_mw_index;
  w->mw.rkey = (next_mw_index++ << 8) | 0x40;
  w->next = mws;
  mws = w;
  pthread_mutex_unlock(&srnic_lock);
  return &w->mw;
}

/* Unbinds `w` (under srnic_lock). */
static void mw_unbind(struct srnic_mw *w) {
  if (!w->bound) return;
  w->bound = 0;
  w->mr->windows--;
  w->mr = NULL;
  w->qp = NULL;
}

static int srnic_dealloc_mw(struct ibv_mw *mw) {
  struct srnic_mw *w = (struct srnic_mw *)mw;
  pthread_mutex_lock(&srnic_lock);
  mw_unbind(w);
  for (struct srnic_mw **pp = &mws; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == w) {
      *pp = w->next;
      break;
    }
  }
  pthread_mutex_unlock(&srnic_lock);
  free(w);
  return 0;
}

enum ibv_wc_status srnic_bind_mw(struct srnic_qp *qp, const struct ibv_send_wr *wr) {
  struct srnic_mw *w = (struct srnic_mw *)wr->bind_mw.mw;
  const struct ibv_mw_bind_info *b = &wr->bind_mw.bind_info;
  struct srnic_mr *m = (struct srnic_mr *)b->mr;
  int found = 0;
  for (struct srnic_mw *x = mws; x != NULL; x = x->next) found |= x == w;
  if (!found || m == NULL || w->mw.type != IBV_MW_TYPE_2) return IBV_WC_MW_BIND_ERR;
  /* A type-2 window is bound from the free state only, by a QP of its PD, to a region of that
   * PD registered with MW_BIND, keeping its index; REMOTE_WRITE needs a writable region. */
  if (w->bound || w->mw.pd != qp->qp.pd || m->mr.pd != qp->qp.pd || !(m->access & IBV_ACCESS_MW_BIND)) return IBV_WC_MW_BIND_ERR;
  if ((wr->bind_mw.rkey & ~0xffu) != (w->mw.rkey & ~0xffu)) return IBV_WC_MW_BIND_ERR;
  if ((b->mw_access_flags & ~(unsigned)(IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE)) != 0) return IBV_WC_MW_BIND_ERR;
  if ((b->mw_access_flags & IBV_ACCESS_REMOTE_WRITE) && !(m->access & IBV_ACCESS_LOCAL_WRITE)) return IBV_WC_MW_BIND_ERR;
  if (!within(b->addr, b->length, (uint64_t)(uintptr_t)m->mr.addr, m->mr.length)) return IBV_WC_MW_BIND_ERR;
  w->bound = 1;
  w->bound_rkey = wr->bind_mw.rkey; /* mw->rkey stays as allocated, as with rxe and mlx5: the binder keeps the key */
  w->qp = qp;
  w->mr = m;
  w->addr = b->addr;
  w->length = b->length;
  w->access = (int)b->mw_access_flags;
  m->windows++;
  return IBV_WC_SUCCESS;
}

enum ibv_wc_status srnic_local_inv(struct srnic_qp *qp, uint32_t rkey) {
  for (struct srnic_mw *w = mws; w != NULL; w = w->next) {
    if (!w->bound || w->bound_rkey != rkey) continue;
    if (w->mw.pd != qp->qp.pd) break;
    mw_unbind(w);
    return IBV_WC_SUCCESS;
  }
  return IBV_WC_MW_BIND_ERR;
}

void srnic_unbind_qp_windows(struct srnic_qp *qp) {
  for (struct srnic_mw *w = mws; w != NULL; w = w->next)
    if (w->bound && w->qp == qp) mw_unbind(w);
}
