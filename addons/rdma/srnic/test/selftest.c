/*
 * srnic's self-test: an application of the public libibverbs / librdmacm API (nothing of srnic's
 * internals), linked against koala_srnic.so in place of both libraries. test/transport/
 * srnic.test.ts builds it and runs it as two processes (`selftest server` prints its port,
 * `selftest client PORT`) and as one (`selftest both`: the server in a thread), and checks the
 * lines it prints: "S ..." from the server side, "C ..." from the client side, "FAIL ..." (and
 * exit status 2) when a step goes wrong.
 *
 * The client runs scenarios one after another, each on its own connection(s), naming the
 * scenario in the first bytes of its REQ private data ("tag|rest"); the server runs its half.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#define TIMEOUT_MS 5000
#define BUF 65536
#define RECV_AT(i) (256 * (i)) /* receive slot i (16 of 256 bytes) */
#define SEND_AT 8192
#define TARGET_AT 16384 /* 16 KiB the peer may write and read */
#define TARGET_LEN 16384
#define ACCESS_ALL (IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_MW_BIND)

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static char side = 'C';
static __thread char my_side = 0;

/* Prints one line, prefixed with this thread's side (S or C). */
static void say(const char *fmt, ...) {
  va_list ap;
  pthread_mutex_lock(&out_lock);
  printf("%c ", my_side ? my_side : side);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  fflush(stdout);
  pthread_mutex_unlock(&out_lock);
}

#define CHECK(cond, ...)                                            \
  do {                                                              \
    if (!(cond)) {                                                  \
      pthread_mutex_lock(&out_lock);                                \
      printf("FAIL %c %s:%d: %s: ", my_side ? my_side : side, __FILE__, __LINE__, #cond); \
      printf(__VA_ARGS__);                                          \
      printf(" (errno %d %s)\n", errno, strerror(errno));           \
      fflush(stdout);                                               \
      exit(2);                                                      \
    }                                                               \
  } while (0)

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) { usleep((useconds_t)ms * 1000); }

/* ---- CM events: waited for with poll() on the channel fd; others of the same channel are kept aside ---- */
struct stash {
  struct rdma_cm_event *ev[32];
  int n;
};

static struct rdma_cm_event *next_event(struct rdma_event_channel *ch, int timeout_ms) {
  struct pollfd p = {.fd = ch->fd, .events = POLLIN};
  struct rdma_cm_event *ev;
  if (poll(&p, 1, timeout_ms) <= 0) return NULL;
  CHECK(rdma_get_cm_event(ch, &ev) == 0, "rdma_get_cm_event after poll said readable");
  return ev;
}

/* The next event of `id` (any id when NULL) of `type`; anything else of another id is kept. */
static struct rdma_cm_event *expect(struct rdma_event_channel *ch, struct stash *st, struct rdma_cm_id *id, enum rdma_cm_event_type type) {
  int64_t end = now_ms() + TIMEOUT_MS;
  for (int i = 0; i < st->n; i++) {
    struct rdma_cm_event *ev = st->ev[i];
    if (id == NULL || ev->id == id) {
      memmove(&st->ev[i], &st->ev[i + 1], sizeof(st->ev[0]) * (size_t)(st->n - i - 1));
      st->n--;
      CHECK(ev->event == type, "expected %s, got %s (status %d)", rdma_event_str(type), rdma_event_str(ev->event), ev->status);
      return ev;
    }
  }
  for (;;) {
    int left = (int)(end - now_ms());
    struct rdma_cm_event *ev = next_event(ch, left > 0 ? left : 0);
    CHECK(ev != NULL, "no %s within %d ms", rdma_event_str(type), TIMEOUT_MS);
    if (id == NULL || ev->id == id) {
      CHECK(ev->event == type, "expected %s, got %s (status %d)", rdma_event_str(type), rdma_event_str(ev->event), ev->status);
      return ev;
    }
    CHECK(st->n < 32, "too many events kept aside");
    st->ev[st->n++] = ev;
  }
}

/* True when no event of `id` comes within `ms` (others are kept aside). */
static int no_event_for(struct rdma_event_channel *ch, struct stash *st, struct rdma_cm_id *id, int ms) {
  int64_t end = now_ms() + ms;
  for (int i = 0; i < st->n; i++)
    if (st->ev[i]->id == id) return 0;
  for (;;) {
    int left = (int)(end - now_ms());
    struct rdma_cm_event *ev;
    if (left <= 0) return 1;
    ev = next_event(ch, left);
    if (ev == NULL) return 1;
    CHECK(st->n < 32, "too many events kept aside");
    st->ev[st->n++] = ev;
    if (ev->id == id) return 0;
  }
}

/* ---- a connection's verbs objects ---- */
struct conn {
  struct rdma_cm_id *id;
  struct ibv_pd *pd;
  struct ibv_cq *scq, *rcq;
  struct ibv_comp_channel *cc;
  struct ibv_mr *mr;
  uint8_t *buf;
};

/* The window / region a server offers, sent as a message. */
struct offer {
  uint64_t mr_addr;
  uint32_t mr_rkey;
  uint32_t win_rkey;
  uint64_t win_addr;
  uint64_t win_len;
};

/* Queue depths of the next QP this thread makes (the bulk scenarios raise them). */
static __thread int qp_send_wr = 64, qp_recv_wr = 16, qp_one_cq = 0;

/* PD, CQs (the receive CQ on a completion channel when `chan`), QP of the connection's id. */
static void setup(struct conn *c, int chan) {
  struct ibv_qp_init_attr a;
  int n;
  struct ibv_context **devs = rdma_get_devices(&n);
  CHECK(devs != NULL && n >= 1, "rdma_get_devices");
  CHECK(c->id->verbs == devs[0], "the id's verbs is rdma_get_devices()[0]");
  rdma_free_devices(devs);
  c->pd = ibv_alloc_pd(c->id->verbs);
  CHECK(c->pd != NULL, "ibv_alloc_pd");
  c->cc = chan ? ibv_create_comp_channel(c->id->verbs) : NULL;
  c->scq = ibv_create_cq(c->id->verbs, 1024, NULL, NULL, 0);
  c->rcq = ibv_create_cq(c->id->verbs, 1024, c, c->cc, 0);
  CHECK(c->scq != NULL && c->rcq != NULL, "ibv_create_cq");
  c->buf = calloc(1, BUF);
  c->mr = ibv_reg_mr(c->pd, c->buf, BUF, ACCESS_ALL);
  CHECK(c->mr != NULL, "ibv_reg_mr");
  memset(&a, 0, sizeof(a));
  a.send_cq = qp_one_cq ? c->rcq : c->scq;
  a.recv_cq = c->rcq;
  a.qp_type = IBV_QPT_RC;
  a.cap.max_send_wr = (uint32_t)qp_send_wr;
  a.cap.max_recv_wr = (uint32_t)qp_recv_wr;
  a.cap.max_send_sge = 4;
  a.cap.max_recv_sge = 2;
  a.cap.max_inline_data = 64;
  CHECK(rdma_create_qp(c->id, c->pd, &a) == 0, "rdma_create_qp");
  CHECK(a.cap.max_inline_data >= 64, "inline granted");
}

static void teardown(struct conn *c) {
  rdma_destroy_qp(c->id);
  CHECK(ibv_dereg_mr(c->mr) == 0, "ibv_dereg_mr");
  ibv_destroy_cq(c->scq);
  ibv_destroy_cq(c->rcq);
  if (c->cc != NULL) ibv_destroy_comp_channel(c->cc);
  ibv_dealloc_pd(c->pd);
  CHECK(rdma_destroy_id(c->id) == 0, "rdma_destroy_id");
  free(c->buf);
  memset(c, 0, sizeof(*c));
}

static void post_recv(struct conn *c, uint64_t wr_id, int slot) {
  struct ibv_sge s = {.addr = (uintptr_t)(c->buf + RECV_AT(slot)), .length = 256, .lkey = c->mr->lkey};
  struct ibv_recv_wr w = {.wr_id = wr_id, .sg_list = &s, .num_sge = 1}, *bad;
  CHECK(ibv_post_recv(c->id->qp, &w, &bad) == 0, "ibv_post_recv");
}

/* Posts one send-queue work request; `data` (len bytes) is copied to the send area first. */
static int post(struct conn *c, uint64_t wr_id, enum ibv_wr_opcode op, unsigned flags, const void *data, uint32_t len, uint64_t raddr, uint32_t rkey, uint32_t imm) {
  struct ibv_sge s = {.addr = (uintptr_t)(c->buf + SEND_AT + (wr_id % 8) * 512), .length = len, .lkey = c->mr->lkey};
  struct ibv_send_wr w, *bad;
  if (data != NULL && op != IBV_WR_RDMA_READ) memcpy((void *)(uintptr_t)s.addr, data, len);
  memset(&w, 0, sizeof(w));
  w.wr_id = wr_id;
  w.sg_list = &s;
  w.num_sge = 1;
  w.opcode = op;
  w.send_flags = flags;
  w.imm_data = htonl(imm);
  w.wr.rdma.remote_addr = raddr;
  w.wr.rdma.rkey = rkey;
  return ibv_post_send(c->id->qp, &w, &bad);
}

/* The next completion of `cq` (polled), or FAIL after TIMEOUT_MS. */
static struct ibv_wc wait_wc(struct ibv_cq *cq, const char *what) {
  struct ibv_wc wc;
  int64_t end = now_ms() + TIMEOUT_MS;
  for (;;) {
    int n = ibv_poll_cq(cq, 1, &wc);
    CHECK(n >= 0, "ibv_poll_cq");
    if (n == 1) return wc;
    CHECK(now_ms() < end, "no completion for %s", what);
    usleep(200);
  }
}

/* True when `cq` stays empty for `ms`. */
static int stays_empty(struct ibv_cq *cq, int ms) {
  struct ibv_wc wc;
  int64_t end = now_ms() + ms;
  while (now_ms() < end) {
    if (ibv_poll_cq(cq, 1, &wc) != 0) return 0;
    usleep(1000);
  }
  return 1;
}

/* A receive of `c` with success; its bytes are at slot (wr_id % 16). */
static struct ibv_wc recv_ok(struct conn *c, const char *what) {
  struct ibv_wc wc = wait_wc(c->rcq, what);
  CHECK(wc.status == IBV_WC_SUCCESS, "%s: receive status %s", what, ibv_wc_status_str(wc.status));
  return wc;
}

static const char *recv_text(struct conn *c, const struct ibv_wc *wc) {
  static __thread char t[257];
  memcpy(t, c->buf + RECV_AT(wc->wr_id % 16), wc->byte_len < 256 ? wc->byte_len : 256);
  t[wc->byte_len < 256 ? wc->byte_len : 256] = '\0';
  return t;
}

static const char *pd_text(const struct rdma_cm_event *ev) {
  static __thread char t[64];
  size_t n = ev->param.conn.private_data_len;
  memcpy(t, ev->param.conn.private_data, n < 63 ? n : 63);
  t[n < 63 ? n : 63] = '\0';
  return t;
}

/* ======================================================================================== */
/* The server: one listener; each CONNECT_REQUEST's tag says which scenario to play.         */

static struct rdma_event_channel *sch;
static struct stash sst;
static struct rdma_cm_id *listener;
static int port;

/* Accepts the next request (its tag in *tag, rest of its data in *rest), with `nrecv` receives
 * posted before accept and `data` as the accept's private data. */
static void s_accept(struct conn *c, char *tag, char *rest, int nrecv, const char *data, int chan) {
  struct rdma_cm_event *ev = expect(sch, &sst, NULL, RDMA_CM_EVENT_CONNECT_REQUEST);
  struct rdma_conn_param p;
  const char *t = pd_text(ev), *bar = strchr(t, '|');
  CHECK(ev->listen_id == listener, "listen_id is the listener");
  CHECK(ev->id != listener && ev->id->verbs != NULL, "a new id with verbs");
  CHECK(ev->id->context == listener->context, "the new id has the listener's context");
  memset(c, 0, sizeof(*c));
  c->id = ev->id;
  snprintf(tag, 32, "%.*s", bar ? (int)(bar - t) : (int)strlen(t), t);
  snprintf(rest, 64, "%s", bar ? bar + 1 : "");
  rdma_ack_cm_event(ev);
  setup(c, chan);
  for (int i = 0; i < nrecv; i++) post_recv(c, (uint64_t)i, i);
  memset(&p, 0, sizeof(p));
  p.private_data = data;
  p.private_data_len = data ? (uint8_t)strlen(data) : 0;
  p.responder_resources = 1;
  p.rnr_retry_count = 7;
  CHECK(rdma_accept(c->id, &p) == 0, "rdma_accept");
}

static void s_established(struct conn *c) { rdma_ack_cm_event(expect(sch, &sst, c->id, RDMA_CM_EVENT_ESTABLISHED)); }
static void s_disconnected(struct conn *c) { rdma_ack_cm_event(expect(sch, &sst, c->id, RDMA_CM_EVENT_DISCONNECTED)); }

/* Binds a type-2 window over the target area [off, off+len) of `c` (unsignaled) and sends the offer (signaled). */
/* The rkey of this thread's last bind (the binder keeps it: mw->rkey stays as allocated). */
static __thread uint32_t bound_rkey;

/* Posts an unsignaled type-2 bind of `mw` over [buf+off, +len) with `access` and key `rkey`. */
static void bind_window(struct conn *c, struct ibv_mw *mw, uint32_t rkey, uint64_t off, uint64_t len, unsigned access) {
  struct ibv_send_wr w, *bad;
  memset(&w, 0, sizeof(w));
  w.wr_id = 900;
  w.opcode = IBV_WR_BIND_MW;
  w.send_flags = 0;
  w.bind_mw.mw = mw;
  w.bind_mw.rkey = rkey;
  w.bind_mw.bind_info.mr = c->mr;
  w.bind_mw.bind_info.addr = (uintptr_t)(c->buf + off);
  w.bind_mw.bind_info.length = len;
  w.bind_mw.bind_info.mw_access_flags = access;
  CHECK(ibv_post_send(c->id->qp, &w, &bad) == 0, "post BIND_MW");
  bound_rkey = rkey;
}

static struct ibv_mw *s_offer_access(struct conn *c, uint64_t off, uint64_t len, int with_window, unsigned access) {
  struct ibv_mw *mw = NULL;
  struct offer o;
  memset(&o, 0, sizeof(o));
  o.mr_addr = (uintptr_t)c->buf;
  o.mr_rkey = c->mr->rkey;
  if (with_window) {
    mw = ibv_alloc_mw(c->pd, IBV_MW_TYPE_2);
    CHECK(mw != NULL, "ibv_alloc_mw");
    bind_window(c, mw, ibv_inc_rkey(mw->rkey), off, len, access);
    o.win_rkey = bound_rkey;
    o.win_addr = (uintptr_t)(c->buf + off);
    o.win_len = len;
  }
  CHECK(post(c, 901, IBV_WR_SEND, IBV_SEND_SIGNALED, &o, sizeof(o), 0, 0, 0) == 0, "post offer");
  {
    struct ibv_wc wc = wait_wc(c->scq, "offer sent");
    CHECK(wc.status == IBV_WC_SUCCESS && wc.wr_id == 901 && wc.opcode == IBV_WC_SEND, "the offer's completion only (the bind is unsignaled): wr %llu status %s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
  }
  return mw;
}

static struct ibv_mw *s_offer(struct conn *c, uint64_t off, uint64_t len, int with_window) { return s_offer_access(c, off, len, with_window, IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE); }

static void s_connect(void) {
  struct conn c;
  char tag[32], rest[64];
  s_accept(&c, tag, rest, 1, "hello-from-server:0123456789abcdefghijklmnopqrstuvwxyzAB", 0); /* 56 bytes, the most */
  say("connect: request tag=%s data=%s", tag, rest);
  s_established(&c);
  say("connect: established src_port=%u listener_port=%u", ntohs(rdma_get_src_port(c.id)), ntohs(rdma_get_src_port(listener)));
  s_disconnected(&c);
  say("connect: disconnected");
  teardown(&c);
}

static void s_reject(void) {
  struct rdma_cm_event *ev = expect(sch, &sst, NULL, RDMA_CM_EVENT_CONNECT_REQUEST);
  struct rdma_cm_id *id = ev->id;
  say("reject: request data=%s", pd_text(ev));
  rdma_ack_cm_event(ev);
  CHECK(rdma_reject(id, "no-thanks", 9) == 0, "rdma_reject");
  CHECK(rdma_destroy_id(id) == 0, "destroy the rejected id");
}

static void s_data(void) {
  struct conn c;
  char tag[32], rest[64];
  struct ibv_mw *mw;
  struct ibv_wc wc;
  uint8_t *target;
  s_accept(&c, tag, rest, 9, "data-ok", 0);
  target = c.buf + TARGET_AT;
  memset(target, 'S', 64);
  s_established(&c);
  mw = s_offer(&c, TARGET_AT + 4096, 1024, 1);
  /* SEND_WITH_IMM gathered from two entries */
  wc = recv_ok(&c, "ping");
  say("data: recv op=%s len=%u imm=0x%x with_imm=%d qp_ok=%d text=%s", wc.opcode == IBV_WC_RECV ? "RECV" : "?", wc.byte_len, ntohl(wc.imm_data), !!(wc.wc_flags & IBV_WC_WITH_IMM), wc.qp_num == c.id->qp->qp_num, recv_text(&c, &wc));
  wc = recv_ok(&c, "inline");
  say("data: inline text=%s with_imm=%d", recv_text(&c, &wc), !!(wc.wc_flags & IBV_WC_WITH_IMM));
  for (int i = 0; i < 3; i++) {
    wc = recv_ok(&c, "three");
    say("data: three #%d text=%s", i, recv_text(&c, &wc));
  }
  wc = recv_ok(&c, "write with imm");
  say("data: write-imm op=%s len=%u imm=0x%x", wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM ? "RECV_RDMA_WITH_IMM" : "?", wc.byte_len, ntohl(wc.imm_data));
  wc = recv_ok(&c, "zero-length write with imm");
  say("data: zero-length write-imm op=%s len=%u imm=0x%x", wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM ? "RECV_RDMA_WITH_IMM" : "?", wc.byte_len, ntohl(wc.imm_data));
  wc = recv_ok(&c, "check");
  say("data: target mr=%.13s window=%.17s wimm=%.4s", (char *)target + 100, (char *)target + 4096, (char *)target + 4096 + 512);
  /* Invalidate the window (unsignaled), bind it again elsewhere with the next key (unsignaled),
   * offer that: the client reads through the new key, then through the old one, which fails. */
  {
    struct ibv_send_wr w, *bad;
    struct offer o;
    uint32_t old = bound_rkey;
    memset(&w, 0, sizeof(w));
    w.wr_id = 902;
    w.opcode = IBV_WR_LOCAL_INV;
    w.invalidate_rkey = old;
    CHECK(ibv_post_send(c.id->qp, &w, &bad) == 0, "post LOCAL_INV");
    memcpy(target + 8192, "rebound!", 8);
    bind_window(&c, mw, ibv_inc_rkey(old), TARGET_AT + 8192, 64, IBV_ACCESS_REMOTE_READ);
    memset(&o, 0, sizeof(o));
    o.win_rkey = bound_rkey;
    o.win_addr = (uintptr_t)(target + 8192);
    o.win_len = 64;
    CHECK(post(&c, 903, IBV_WR_SEND, IBV_SEND_SIGNALED, &o, sizeof(o), 0, 0, 0) == 0, "post");
    wc = wait_wc(c.scq, "second offer sent");
    CHECK(wc.wr_id == 903 && wc.status == IBV_WC_SUCCESS, "only the signaled send completes");
  }
  /* The client's READ through the dead window: this QP goes to the error state too, and the
   * receives left flush. */
  wc = wait_wc(c.rcq, "flush after the access error");
  say("data: after access error recv status=%s", ibv_wc_status_str(wc.status));
  s_disconnected(&c);
  say("data: disconnected");
  CHECK(ibv_dealloc_mw(mw) == 0, "dealloc_mw");
  teardown(&c);
}

static void s_window_other_qp(void) {
  struct conn a, b;
  char tag[32], rest[64];
  struct ibv_mw *mw;
  struct ibv_wc wc;
  s_accept(&a, tag, rest, 2, NULL, 0);
  CHECK(strcmp(tag, "winA") == 0, "winA first");
  s_established(&a);
  s_accept(&b, tag, rest, 2, NULL, 0);
  CHECK(strcmp(tag, "winB") == 0, "then winB");
  s_established(&b);
  mw = s_offer(&a, TARGET_AT, 256, 1); /* bound on A, offered on A */
  wc = wait_wc(b.rcq, "B flushes");
  say("window-other-qp: B recv status=%s", ibv_wc_status_str(wc.status));
  wc = recv_ok(&a, "A done");
  say("window-other-qp: A target=%.9s", (char *)a.buf + TARGET_AT);
  s_disconnected(&a);
  s_disconnected(&b);
  CHECK(ibv_dealloc_mw(mw) == 0, "dealloc_mw");
  /* dealloc_mw unbound it: the region can go */
  teardown(&a);
  teardown(&b);
}

/* Offers its region and a read-only window over 256 bytes of it; the client breaks a rule
 * (the QPs go to the error state: this side's receives flush). */
static void s_fault(void) {
  struct conn c;
  char tag[32], rest[64];
  struct ibv_wc wc;
  struct ibv_mw *mw;
  s_accept(&c, tag, rest, 2, NULL, 0);
  s_established(&c);
  mw = s_offer_access(&c, TARGET_AT, 256, 1, IBV_ACCESS_REMOTE_READ);
  wc = wait_wc(c.rcq, "flush");
  say("fault %s: recv status=%s", rest, ibv_wc_status_str(wc.status));
  s_disconnected(&c);
  CHECK(ibv_dealloc_mw(mw) == 0, "dealloc_mw");
  teardown(&c);
}

static void s_rnr(int late) {
  struct conn c;
  char tag[32], rest[64];
  struct ibv_wc wc;
  s_accept(&c, tag, rest, 0, NULL, 0);
  s_established(&c);
  if (late) {
    sleep_ms(300); /* the sender meets "receiver not ready" for a while */
    post_recv(&c, 5, 5);
    wc = recv_ok(&c, "late");
    say("rnr7: late recv text=%s", recv_text(&c, &wc));
  }
  s_disconnected(&c);
  if (!late) {
    say("rnr2: nothing received=%d", stays_empty(c.rcq, 10));
    /* The responder is not at fault: its QP still takes receives (no flush). */
  }
  teardown(&c);
}

static void s_disconnect(void) {
  struct conn c;
  char tag[32], rest[64];
  s_accept(&c, tag, rest, 3, NULL, 0);
  s_established(&c);
  s_disconnected(&c);
  for (int i = 0; i < 3; i++) {
    struct ibv_wc wc = wait_wc(c.rcq, "flush");
    say("disc: flushed wr=%llu status=%s op=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status), wc.opcode == IBV_WC_RECV ? "RECV" : "?");
  }
  say("disc: no second event=%d", no_event_for(sch, &sst, c.id, 300));
  teardown(&c);
}

/* The passive side disconnects (sdisc), or both sides at once (bothdisc): each side hears
 * DISCONNECTED exactly once, whoever was first. */
static void s_disconnect_from_here(int both) {
  struct conn c;
  char tag[32], rest[64];
  s_accept(&c, tag, rest, both, NULL, 0);
  s_established(&c);
  if (both) recv_ok(&c, "go"); /* the client disconnects right after sending it */
  CHECK(rdma_disconnect(c.id) == 0, "rdma_disconnect");
  s_disconnected(&c);
  say("%s: once=%d", both ? "bothdisc" : "sdisc", no_event_for(sch, &sst, c.id, 200));
  teardown(&c);
}

static void s_chan(void) {
  struct conn c;
  char tag[32], rest[64];
  s_accept(&c, tag, rest, 2, NULL, 0);
  s_established(&c);
  recv_ok(&c, "go");
  CHECK(post(&c, 1, IBV_WR_SEND, IBV_SEND_SIGNALED, "notify-me", 9, 0, 0, 0) == 0, "post");
  wait_wc(c.scq, "sent");
  recv_ok(&c, "again");
  CHECK(post(&c, 2, IBV_WR_SEND, IBV_SEND_SIGNALED, "unarmed", 7, 0, 0, 0) == 0, "post");
  wait_wc(c.scq, "sent");
  s_disconnected(&c);
  teardown(&c);
}

static void s_death(const char *pid) {
  struct conn c;
  char tag[32], rest[64];
  s_accept(&c, tag, rest, 3, NULL, 0);
  s_established(&c);
  recv_ok(&c, "kill me"); /* the client has said its last line */
  CHECK(kill((pid_t)atoi(rest[0] ? rest : pid), SIGKILL) == 0, "kill the client");
  say("death: killed the client");
  s_disconnected(&c);
  for (int i = 0; i < 2; i++) {
    struct ibv_wc wc = wait_wc(c.rcq, "flush");
    say("death: flushed wr=%llu status=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
  }
  CHECK(post(&c, 3, IBV_WR_SEND, 0, "x", 1, 0, 0, 0) == 0, "post after death");
  {
    struct ibv_wc wc = wait_wc(c.scq, "flush");
    say("death: send after it status=%s", ibv_wc_status_str(wc.status));
  }
  teardown(&c);
}

#define FLOOD 2000

/* Both directions at once, driven by the completion channel the way an event loop does (arm,
 * drain, wait for the fd, take the event, re-arm, drain): FLOOD numbered SENDs each way with at
 * most 32 outstanding, receives reposted as they complete. Returns "sent/received/in order/events". */
/* Set when the peer's 4-byte "done" (sent after its own flood) arrived during this side's flood. */
static __thread int flood_peer_done;

static void flood(struct conn *c, const char *who) {
  int sent = 0, send_done = 0, received = 0, in_order = 1, events = 0;
  struct pollfd p = {.fd = c->cc->fd, .events = POLLIN};
  int64_t end = now_ms() + 30000;
  CHECK(ibv_req_notify_cq(c->rcq, 0) == 0, "arm");
  for (;;) {
    struct ibv_wc wc[16];
    struct ibv_cq *cq;
    void *ctx;
    int n;
    while (sent < FLOOD && sent - send_done < 32) {
      uint64_t v = (uint64_t)sent;
      CHECK(post(c, (uint64_t)sent, IBV_WR_SEND_WITH_IMM, IBV_SEND_SIGNALED | IBV_SEND_INLINE, &v, 8, 0, 0, (uint32_t)sent) == 0, "post %d", sent);
      sent++;
    }
    /* Drain (armed before: whatever comes after this drain wakes the channel). */
    while ((n = ibv_poll_cq(c->rcq, 16, wc)) > 0) {
      for (int i = 0; i < n; i++) {
        CHECK(wc[i].status == IBV_WC_SUCCESS, "%s: %s", who, ibv_wc_status_str(wc[i].status));
        if (wc[i].opcode == IBV_WC_SEND) {
          in_order &= wc[i].wr_id == (uint64_t)send_done;
          send_done++;
        } else if (wc[i].byte_len == 4) { /* the peer's "done": it finished first */
          flood_peer_done = 1;
        } else {
          in_order &= ntohl(wc[i].imm_data) == (uint32_t)received;
          received++;
          post_recv(c, wc[i].wr_id, (int)(wc[i].wr_id % 16));
        }
      }
    }
    CHECK(n == 0, "ibv_poll_cq");
    if (send_done == FLOOD && received == FLOOD) break;
    if (sent < FLOOD && sent - send_done < 32) continue;
    CHECK(poll(&p, 1, (int)(end - now_ms())) == 1, "%s: no completion event (sent %d, done %d, received %d)", who, sent, send_done, received);
    CHECK(ibv_get_cq_event(c->cc, &cq, &ctx) == 0 && cq == c->rcq, "ibv_get_cq_event");
    ibv_ack_cq_events(cq, 1);
    events++;
    CHECK(ibv_req_notify_cq(c->rcq, 0) == 0, "re-arm");
  }
  say("flood: sent=%d received=%d in_order=%d woken_by_events=%d", send_done, received, in_order, events > 0);
}

static void s_flood(void) {
  struct conn c;
  char tag[32], rest[64];
  qp_one_cq = 1;
  s_accept(&c, tag, rest, 16, NULL, 1);
  qp_one_cq = 0;
  s_established(&c);
  flood(&c, "server");
  CHECK(post(&c, 1, IBV_WR_SEND, IBV_SEND_SIGNALED, "done", 4, 0, 0, 0) == 0, "post");
  CHECK(wait_wc(c.rcq, "done sent").status == IBV_WC_SUCCESS, "done sent");
  s_disconnected(&c);
  teardown(&c);
}

#define BIG_WRITE (8u << 20)
#define BIG_SEND (1u << 20)

/* A byte of the bulk pattern at `i` for `seed`. */
static uint8_t pattern(uint64_t i, unsigned seed) { return (uint8_t)((i * 2654435761u + seed) >> 13); }

static int pattern_ok(const uint8_t *p, uint64_t n, unsigned seed) {
  for (uint64_t i = 0; i < n; i++)
    if (p[i] != pattern(i, seed)) return 0;
  return 1;
}

/* An 8 MiB WRITE and a 1 MiB SEND, far more than a socket holds: both land whole. */
static void s_big(void) {
  struct conn c;
  char tag[32], rest[64];
  uint8_t *region = calloc(1, BIG_WRITE), *inbox = calloc(1, BIG_SEND);
  struct ibv_mr *rmr, *imr;
  struct ibv_sge sge;
  struct ibv_recv_wr w, *bad;
  struct offer o;
  struct ibv_wc wc;
  s_accept(&c, tag, rest, 0, NULL, 0);
  rmr = ibv_reg_mr(c.pd, region, BIG_WRITE, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
  imr = ibv_reg_mr(c.pd, inbox, BIG_SEND, IBV_ACCESS_LOCAL_WRITE);
  CHECK(rmr != NULL && imr != NULL, "ibv_reg_mr");
  sge = (struct ibv_sge){.addr = (uintptr_t)inbox, .length = BIG_SEND, .lkey = imr->lkey};
  w = (struct ibv_recv_wr){.wr_id = 77, .sg_list = &sge, .num_sge = 1};
  CHECK(ibv_post_recv(c.id->qp, &w, &bad) == 0, "post the big receive");
  s_established(&c);
  memset(&o, 0, sizeof(o));
  o.mr_addr = (uintptr_t)region;
  o.mr_rkey = rmr->rkey;
  CHECK(post(&c, 1, IBV_WR_SEND, IBV_SEND_SIGNALED, &o, sizeof(o), 0, 0, 0) == 0, "post");
  wait_wc(c.scq, "offer");
  wc = wait_wc(c.rcq, "the big send");
  say("big: recv wr=%llu status=%s len=%u send_ok=%d write_ok=%d", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status), wc.byte_len, pattern_ok(inbox, BIG_SEND, 2), pattern_ok(region, BIG_WRITE, 1));
  s_disconnected(&c);
  CHECK(ibv_dereg_mr(rmr) == 0 && ibv_dereg_mr(imr) == 0, "dereg");
  free(region);
  free(inbox);
  teardown(&c);
}

#define TRICKLE 300

/* Receives posted 30 at a time while the peer has 300 SENDs in flight: receiver-not-ready and
 * go-back-N retransmission all along, yet every message arrives once, in order. */
static void s_trickle(void) {
  struct conn c;
  char tag[32], rest[64];
  int in_order = 1, got = 0;
  qp_recv_wr = 512;
  s_accept(&c, tag, rest, 0, NULL, 0);
  qp_recv_wr = 16;
  s_established(&c);
  while (got < TRICKLE) {
    struct ibv_wc wc;
    for (int i = 0; i < 30; i++) post_recv(&c, (uint64_t)(got + i), (got + i) % 16);
    sleep_ms(10);
    for (int i = 0; i < 30; i++) {
      wc = recv_ok(&c, "trickle");
      in_order &= ntohl(wc.imm_data) == (uint32_t)got && wc.wr_id == (uint64_t)got && wc.byte_len == 8;
      got++;
    }
  }
  say("trickle: received=%d in_order=%d nothing_more=%d", got, in_order, stays_empty(c.rcq, 20));
  s_disconnected(&c);
  teardown(&c);
}

/* Binds the listener on port 0 (a free one), checks EADDRINUSE and the stale-file takeover. */
static void s_listen(void) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct rdma_cm_id *other;
  sch = rdma_create_event_channel();
  CHECK(sch != NULL, "rdma_create_event_channel");
  CHECK(rdma_create_id(sch, &listener, (void *)0x5eed, RDMA_PS_TCP) == 0, "rdma_create_id");
  CHECK(rdma_bind_addr(listener, (struct sockaddr *)&a) == 0, "rdma_bind_addr port 0");
  port = ntohs(rdma_get_src_port(listener));
  CHECK(port != 0, "a port was chosen");
  CHECK(rdma_listen(listener, 16) == 0, "rdma_listen");
  CHECK(rdma_create_id(sch, &other, NULL, RDMA_PS_TCP) == 0, "rdma_create_id");
  a.sin_port = htons((uint16_t)port);
  say("listen: second bind errno=%s", rdma_bind_addr(other, (struct sockaddr *)&a) == -1 && errno == EADDRINUSE ? "EADDRINUSE" : strerror(errno));
  CHECK(rdma_destroy_id(other) == 0, "destroy");
  /* A stale socket file (its process gone) is taken over. */
  {
    const char *dir = getenv("SRNIC_NET_DIR");
    struct sockaddr_un u = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM, 0), stale_port = port + 7;
    snprintf(u.sun_path, sizeof(u.sun_path), "%s/cm-%d", dir, stale_port);
    CHECK(dir != NULL && fd >= 0 && bind(fd, (struct sockaddr *)&u, sizeof(u)) == 0, "a stale socket file");
    close(fd);
    CHECK(rdma_create_id(sch, &other, NULL, RDMA_PS_TCP) == 0, "rdma_create_id");
    a.sin_port = htons((uint16_t)stale_port);
    say("listen: bind over a stale file=%d", rdma_bind_addr(other, (struct sockaddr *)&a));
    CHECK(rdma_destroy_id(other) == 0, "destroy");
  }
  say("listening port=%d", port);
}

static void server(void) {
  for (;;) {
    struct rdma_cm_event *ev = expect(sch, &sst, NULL, RDMA_CM_EVENT_CONNECT_REQUEST);
    char tag[32];
    const char *t = pd_text(ev), *bar = strchr(t, '|');
    snprintf(tag, sizeof(tag), "%.*s", bar ? (int)(bar - t) : (int)strlen(t), t);
    /* Put it back for the scenario to take. */
    sst.ev[sst.n++] = ev;
    if (strcmp(tag, "connect") == 0) s_connect();
    else if (strcmp(tag, "reject") == 0) s_reject();
    else if (strcmp(tag, "data") == 0) s_data();
    else if (strcmp(tag, "winA") == 0) s_window_other_qp();
    else if (strcmp(tag, "fault") == 0) s_fault();
    else if (strcmp(tag, "rnr7") == 0) s_rnr(1);
    else if (strcmp(tag, "rnr2") == 0) s_rnr(0);
    else if (strcmp(tag, "disc") == 0) s_disconnect();
    else if (strcmp(tag, "chan") == 0) s_chan();
    else if (strcmp(tag, "sdisc") == 0) s_disconnect_from_here(0);
    else if (strcmp(tag, "bothdisc") == 0) s_disconnect_from_here(1);
    else if (strcmp(tag, "big") == 0) s_big();
    else if (strcmp(tag, "flood") == 0) s_flood();
    else if (strcmp(tag, "trickle") == 0) s_trickle();
    else if (strcmp(tag, "death") == 0) {
      s_death("");
      say("end");
      return;
    }
    else if (strcmp(tag, "end") == 0) {
      ev = expect(sch, &sst, NULL, RDMA_CM_EVENT_CONNECT_REQUEST);
      CHECK(rdma_reject(ev->id, NULL, 0) == 0, "reject end");
      CHECK(rdma_destroy_id(ev->id) == 0, "destroy");
      rdma_ack_cm_event(ev);
      say("end");
      return;
    } else CHECK(0, "unknown tag %s", tag);
  }
}

/* ======================================================================================== */
/* The client.                                                                               */

static struct rdma_event_channel *cch;
static struct stash cst;

/* Resolves 127.0.0.1:`to` on a new id; the id. */
static struct rdma_cm_id *c_resolve(int to, int timeout) {
  struct rdma_cm_id *id;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)to), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  CHECK(rdma_create_id(cch, &id, NULL, RDMA_PS_TCP) == 0, "rdma_create_id");
  CHECK(rdma_resolve_addr(id, NULL, (struct sockaddr *)&a, timeout) == 0, "rdma_resolve_addr");
  rdma_ack_cm_event(expect(cch, &cst, id, RDMA_CM_EVENT_ADDR_RESOLVED));
  CHECK(id->verbs != NULL, "a resolved id has verbs");
  CHECK(rdma_resolve_route(id, timeout) == 0, "rdma_resolve_route");
  rdma_ack_cm_event(expect(cch, &cst, id, RDMA_CM_EVENT_ROUTE_RESOLVED));
  return id;
}

/* Connects `c` to the server with private data `data` (tag|rest), `nrecv` receives posted
 * first; returns the event that ended the attempt (ESTABLISHED, REJECTED, UNREACHABLE). */
static struct rdma_cm_event *c_connect(struct conn *c, int to, const char *data, int nrecv, int rnr, int chan, int timeout) {
  struct rdma_conn_param p;
  struct rdma_cm_event *ev;
  memset(c, 0, sizeof(*c));
  c->id = c_resolve(to, timeout);
  setup(c, chan);
  for (int i = 0; i < nrecv; i++) post_recv(c, (uint64_t)i, i);
  memset(&p, 0, sizeof(p));
  p.private_data = data;
  p.private_data_len = (uint8_t)strlen(data);
  p.initiator_depth = 1;
  p.retry_count = 7;
  p.rnr_retry_count = (uint8_t)rnr;
  CHECK(rdma_connect(c->id, &p) == 0, "rdma_connect");
  for (;;) {
    ev = next_event(cch, TIMEOUT_MS);
    CHECK(ev != NULL, "no answer to connect");
    if (ev->id == c->id) return ev;
    CHECK(cst.n < 32, "stash");
    cst.ev[cst.n++] = ev;
  }
}

static void c_established(struct conn *c, int to, const char *data, int nrecv, int rnr, int chan) {
  struct rdma_cm_event *ev = c_connect(c, to, data, nrecv, rnr, chan, 2000);
  CHECK(ev->event == RDMA_CM_EVENT_ESTABLISHED, "%s: ESTABLISHED, got %s (status %d)", data, rdma_event_str(ev->event), ev->status);
  rdma_ack_cm_event(ev);
}

static void c_disconnect(struct conn *c) {
  CHECK(rdma_disconnect(c->id) == 0, "rdma_disconnect");
  rdma_ack_cm_event(expect(cch, &cst, c->id, RDMA_CM_EVENT_DISCONNECTED));
}

static struct offer c_offer(struct conn *c) {
  struct offer o;
  struct ibv_wc wc = recv_ok(c, "offer");
  CHECK(wc.byte_len == sizeof(o), "offer size %u", wc.byte_len);
  memcpy(&o, c->buf + RECV_AT(wc.wr_id % 16), sizeof(o));
  return o;
}

static void c_connect_scenario(void) {
  struct conn c;
  struct rdma_cm_event *ev = c_connect(&c, port, "connect|hello-from-client:0123456789abcdefghijklmnopqrst", 0, 7, 0, 2000); /* 56 bytes */
  CHECK(ev->event == RDMA_CM_EVENT_ESTABLISHED, "established");
  say("connect: established data=%s len=%u dst_port_ok=%d", pd_text(ev), ev->param.conn.private_data_len, ntohs(rdma_get_dst_port(c.id)) == port);
  rdma_ack_cm_event(ev);
  c_disconnect(&c);
  say("connect: disconnected");
  teardown(&c);
}

static void c_reject(void) {
  struct conn c;
  struct rdma_cm_event *ev = c_connect(&c, port, "reject|please", 1, 7, 0, 2000);
  say("reject: %s status=%d data=%s", rdma_event_str(ev->event), ev->status, pd_text(ev));
  rdma_ack_cm_event(ev);
  teardown(&c);
}

static void c_no_listener(void) {
  struct conn c;
  struct rdma_cm_event *ev = c_connect(&c, port + 1, "nobody", 0, 7, 0, 2000);
  say("nolistener: %s status=%d len=%u", rdma_event_str(ev->event), ev->status, ev->param.conn.private_data_len);
  rdma_ack_cm_event(ev);
  teardown(&c);
}

static void c_unreachable(void) {
  struct rdma_cm_id *id;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(1), .sin_addr.s_addr = htonl(0x0a010203)};
  struct rdma_cm_event *ev;
  CHECK(rdma_create_id(cch, &id, NULL, RDMA_PS_TCP) == 0, "rdma_create_id");
  CHECK(rdma_resolve_addr(id, NULL, (struct sockaddr *)&a, 500) == 0, "rdma_resolve_addr");
  ev = expect(cch, &cst, id, RDMA_CM_EVENT_ADDR_ERROR);
  say("addr: %s status_negative=%d", rdma_event_str(ev->event), ev->status < 0);
  rdma_ack_cm_event(ev);
  CHECK(rdma_destroy_id(id) == 0, "destroy");
}

/* A listener that never answers (a plain socket nobody accepts on): UNREACHABLE at the timeout. */
static void c_timeout(void) {
  struct conn c;
  struct sockaddr_un u = {.sun_family = AF_UNIX};
  int fd = socket(AF_UNIX, SOCK_STREAM, 0), silent = port + 3;
  struct rdma_cm_event *ev;
  int64_t t0;
  snprintf(u.sun_path, sizeof(u.sun_path), "%s/cm-%d", getenv("SRNIC_NET_DIR"), silent);
  CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&u, sizeof(u)) == 0 && listen(fd, 4) == 0, "a silent listener");
  t0 = now_ms();
  ev = c_connect(&c, silent, "silence", 0, 7, 0, 400);
  say("timeout: %s status=%d waited_ok=%d", rdma_event_str(ev->event), ev->status, now_ms() - t0 >= 350);
  rdma_ack_cm_event(ev);
  teardown(&c);
  close(fd);
  unlink(u.sun_path);
}

static void c_data(void) {
  struct conn c;
  struct offer o;
  struct ibv_wc wc;
  struct ibv_send_wr w, *bad;
  struct ibv_sge sg[2];
  char inl[32];
  c_established(&c, port, "data|", 1, 7, 0);
  {
    /* The second receive scatters over two entries: 8 bytes in slot 1, the rest in slot 2. */
    struct ibv_sge rs[2] = {{.addr = (uintptr_t)(c.buf + RECV_AT(1)), .length = 8, .lkey = c.mr->lkey}, {.addr = (uintptr_t)(c.buf + RECV_AT(2)), .length = 256, .lkey = c.mr->lkey}};
    struct ibv_recv_wr rw = {.wr_id = 1, .sg_list = rs, .num_sge = 2}, *rbad;
    CHECK(ibv_post_recv(c.id->qp, &rw, &rbad) == 0, "post a two-entry receive");
  }
  o = c_offer(&c);
  /* SEND_WITH_IMM gathered from two entries */
  memcpy(c.buf + SEND_AT, "pi", 2);
  memcpy(c.buf + SEND_AT + 100, "ng", 2);
  sg[0] = (struct ibv_sge){.addr = (uintptr_t)(c.buf + SEND_AT), .length = 2, .lkey = c.mr->lkey};
  sg[1] = (struct ibv_sge){.addr = (uintptr_t)(c.buf + SEND_AT + 100), .length = 2, .lkey = c.mr->lkey};
  memset(&w, 0, sizeof(w));
  w.wr_id = 10;
  w.sg_list = sg;
  w.num_sge = 2;
  w.opcode = IBV_WR_SEND_WITH_IMM;
  w.send_flags = IBV_SEND_SIGNALED;
  w.imm_data = htonl(0x12345678);
  CHECK(ibv_post_send(c.id->qp, &w, &bad) == 0, "post");
  wc = wait_wc(c.scq, "ping");
  say("data: send wr=%llu status=%s op=%s qp_ok=%d", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status), wc.opcode == IBV_WC_SEND ? "SEND" : "?", wc.qp_num == c.id->qp->qp_num);
  /* Inline, from memory in no region, overwritten right after the post. */
  strcpy(inl, "inline-data");
  sg[0] = (struct ibv_sge){.addr = (uintptr_t)inl, .length = 11, .lkey = 0};
  w.wr_id = 11;
  w.num_sge = 1;
  w.opcode = IBV_WR_SEND;
  w.send_flags = IBV_SEND_INLINE; /* unsignaled */
  CHECK(ibv_post_send(c.id->qp, &w, &bad) == 0, "post inline");
  memset(inl, 'X', sizeof(inl));
  /* Three sends, only the last signaled: one completion. */
  CHECK(post(&c, 12, IBV_WR_SEND, 0, "one", 3, 0, 0, 0) == 0, "post");
  CHECK(post(&c, 13, IBV_WR_SEND, 0, "two", 3, 0, 0, 0) == 0, "post");
  CHECK(post(&c, 14, IBV_WR_SEND, IBV_SEND_SIGNALED, "three", 5, 0, 0, 0) == 0, "post");
  wc = wait_wc(c.scq, "three");
  say("data: unsignaled skipped first=%llu empty_after=%d", (unsigned long long)wc.wr_id, stays_empty(c.scq, 20));
  /* WRITE and READ through the region's rkey */
  CHECK(post(&c, 20, IBV_WR_RDMA_WRITE, IBV_SEND_SIGNALED, "written-by-mr", 13, o.mr_addr + TARGET_AT + 100, o.mr_rkey, 0) == 0, "post");
  CHECK(post(&c, 21, IBV_WR_RDMA_READ, IBV_SEND_SIGNALED, NULL, 64, o.mr_addr + TARGET_AT, o.mr_rkey, 0) == 0, "post");
  wc = wait_wc(c.scq, "write");
  say("data: write wr=%llu status=%s op=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status), wc.opcode == IBV_WC_RDMA_WRITE ? "RDMA_WRITE" : "?");
  wc = wait_wc(c.scq, "read");
  {
    int all_s = 1;
    for (int i = 0; i < 64; i++) all_s &= c.buf[SEND_AT + (21 % 8) * 512 + i] == 'S';
    say("data: read wr=%llu status=%s op=%s len=%u bytes_ok=%d", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status), wc.opcode == IBV_WC_RDMA_READ ? "RDMA_READ" : "?", wc.byte_len, all_s);
  }
  /* WRITE, READ and WRITE_WITH_IMM through the window */
  CHECK(post(&c, 30, IBV_WR_RDMA_WRITE, 0, "written-by-window", 17, o.win_addr, o.win_rkey, 0) == 0, "post");
  CHECK(post(&c, 31, IBV_WR_RDMA_READ, IBV_SEND_SIGNALED, NULL, 17, o.win_addr, o.win_rkey, 0) == 0, "post");
  wc = wait_wc(c.scq, "window read");
  say("data: window read status=%s text=%.17s", ibv_wc_status_str(wc.status), (char *)c.buf + SEND_AT + (31 % 8) * 512);
  CHECK(post(&c, 32, IBV_WR_RDMA_WRITE_WITH_IMM, IBV_SEND_SIGNALED, "wimm", 4, o.win_addr + 512, o.win_rkey, 0xabcdef01) == 0, "post");
  wc = wait_wc(c.scq, "write imm");
  say("data: window write-imm status=%s", ibv_wc_status_str(wc.status));
  /* Zero-length READ and WRITE_WITH_IMM name no memory: any rkey and address will do (IB C9-88). */
  CHECK(post(&c, 38, IBV_WR_RDMA_READ, IBV_SEND_SIGNALED, NULL, 0, 0, 0xdeadbeef, 0) == 0, "post");
  CHECK(post(&c, 39, IBV_WR_RDMA_WRITE_WITH_IMM, IBV_SEND_SIGNALED, NULL, 0, 0, 0, 5) == 0, "post");
  wc = wait_wc(c.scq, "zero-length read");
  say("data: zero-length read wr=%llu status=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
  wc = wait_wc(c.scq, "zero-length write");
  say("data: zero-length write-imm wr=%llu status=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
  CHECK(post(&c, 33, IBV_WR_SEND, 0, "check", 5, 0, 0, 0) == 0, "post");
  {
    struct offer o2;
    wc = recv_ok(&c, "second offer");
    CHECK(wc.wr_id == 1 && wc.byte_len == sizeof(o2), "the two-entry receive");
    memcpy(&o2, c.buf + RECV_AT(1), 8);
    memcpy((uint8_t *)&o2 + 8, c.buf + RECV_AT(2), sizeof(o2) - 8);
    say("data: rebound new_key=%d same_index=%d (scattered over two entries)", o2.win_rkey != o.win_rkey, (o2.win_rkey >> 8) == (o.win_rkey >> 8));
    CHECK(post(&c, 37, IBV_WR_RDMA_READ, IBV_SEND_SIGNALED, NULL, 8, o2.win_addr, o2.win_rkey, 0) == 0, "post");
    wc = wait_wc(c.scq, "read through the rebound window");
    say("data: rebound read status=%s text=%.8s", ibv_wc_status_str(wc.status), (char *)c.buf + SEND_AT + (37 % 8) * 512);
  }
  CHECK(post(&c, 34, IBV_WR_RDMA_READ, 0, NULL, 8, o.win_addr, o.win_rkey, 0) == 0, "post");
  CHECK(post(&c, 35, IBV_WR_SEND, IBV_SEND_SIGNALED, "after", 5, 0, 0, 0) == 0, "post");
  wc = wait_wc(c.scq, "read through the invalidated window");
  say("data: read after invalidate wr=%llu status=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
  wc = wait_wc(c.scq, "flush");
  say("data: then wr=%llu status=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
  CHECK(post(&c, 36, IBV_WR_SEND, 0, "later", 5, 0, 0, 0) == 0, "post to a QP in error");
  wc = wait_wc(c.scq, "flush");
  say("data: posted in error wr=%llu status=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
  c_disconnect(&c);
  teardown(&c);
}

static void c_window_other_qp(void) {
  struct conn a, b;
  struct offer o;
  struct ibv_wc wc;
  c_established(&a, port, "winA|", 2, 7, 0);
  c_established(&b, port, "winB|", 2, 7, 0);
  o = c_offer(&a);
  CHECK(post(&b, 1, IBV_WR_RDMA_WRITE, IBV_SEND_SIGNALED, "through-B", 9, o.win_addr, o.win_rkey, 0) == 0, "post");
  CHECK(post(&b, 2, IBV_WR_SEND, IBV_SEND_SIGNALED, "next", 4, 0, 0, 0) == 0, "post");
  wc = wait_wc(b.scq, "B");
  say("window-other-qp: B wr=%llu status=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
  wc = wait_wc(b.scq, "B flush");
  say("window-other-qp: B then wr=%llu status=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
  CHECK(post(&a, 3, IBV_WR_RDMA_WRITE, IBV_SEND_SIGNALED, "through-A", 9, o.win_addr, o.win_rkey, 0) == 0, "post");
  wc = wait_wc(a.scq, "A");
  say("window-other-qp: A status=%s", ibv_wc_status_str(wc.status));
  CHECK(post(&a, 4, IBV_WR_SEND, 0, "done", 4, 0, 0, 0) == 0, "post");
  c_disconnect(&a);
  c_disconnect(&b);
  teardown(&a);
  teardown(&b);
}

/* After a READ of the whole read-only window (which works), breaks a rule of the server's
 * region or window: `how` is mr-oob (a READ of 16 bytes across the region's end), win-oob (a
 * READ inside the region but past the window's end), win-ro (a WRITE through the read-only
 * window). It fails with REM_ACCESS_ERR, the WR after it flushes, and so does this side's
 * receive left. */
static void c_fault(const char *how) {
  struct conn c;
  struct offer o;
  struct ibv_wc wc;
  char tag[32];
  uint64_t addr;
  uint32_t rkey;
  snprintf(tag, sizeof(tag), "fault|%s", how);
  c_established(&c, port, tag, 2, 7, 0);
  o = c_offer(&c);
  CHECK(post(&c, 1, IBV_WR_RDMA_READ, IBV_SEND_SIGNALED, NULL, 256, o.win_addr, o.win_rkey, 0) == 0, "post");
  wc = wait_wc(c.scq, "read through the window");
  CHECK(wc.status == IBV_WC_SUCCESS, "a READ of the whole read-only window works: %s", ibv_wc_status_str(wc.status));
  if (strcmp(how, "mr-oob") == 0) {
    addr = o.mr_addr + BUF - 8;
    rkey = o.mr_rkey;
  } else if (strcmp(how, "win-oob") == 0) {
    addr = o.win_addr + 256 - 8;
    rkey = o.win_rkey;
  } else {
    addr = o.win_addr;
    rkey = o.win_rkey;
  }
  CHECK(post(&c, 2, strcmp(how, "win-ro") == 0 ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ, IBV_SEND_SIGNALED, "0123456789abcdef", 16, addr, rkey, 0) == 0, "post");
  CHECK(post(&c, 3, IBV_WR_RDMA_WRITE, 0, "ok", 2, o.mr_addr, o.mr_rkey, 0) == 0, "post");
  wc = wait_wc(c.scq, how);
  say("fault %s: wr=%llu status=%s", how, (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
  wc = wait_wc(c.scq, "flush");
  say("fault %s: then wr=%llu status=%s", how, (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
  wc = wait_wc(c.rcq, "recv flush");
  say("fault %s: own recv status=%s", how, ibv_wc_status_str(wc.status));
  c_disconnect(&c);
  teardown(&c);
}

static void c_rnr(int late) {
  struct conn c;
  struct ibv_wc wc;
  int64_t t0;
  c_established(&c, port, late ? "rnr7|" : "rnr2|", 0, late ? 7 : 2, 0);
  t0 = now_ms();
  CHECK(post(&c, 1, IBV_WR_SEND, IBV_SEND_SIGNALED, "late", 4, 0, 0, 0) == 0, "post");
  CHECK(post(&c, 2, IBV_WR_SEND, IBV_SEND_SIGNALED, "second", 6, 0, 0, 0) == 0, "post");
  wc = wait_wc(c.scq, "rnr");
  if (late) {
    say("rnr7: send wr=%llu status=%s waited_ok=%d", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status), now_ms() - t0 >= 250);
    /* the second SEND has no receive either: it keeps retrying until the disconnect flushes it */
    c_disconnect(&c);
    wc = wait_wc(c.scq, "flush");
    say("rnr7: second wr=%llu status=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
  } else {
    say("rnr2: send wr=%llu status=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
    wc = wait_wc(c.scq, "flush");
    say("rnr2: then wr=%llu status=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
    c_disconnect(&c);
  }
  teardown(&c);
}

static void c_disconnect_scenario(void) {
  struct conn c;
  c_established(&c, port, "disc|", 2, 7, 0);
  c_disconnect(&c);
  for (int i = 0; i < 2; i++) {
    struct ibv_wc wc = wait_wc(c.rcq, "flush");
    say("disc: flushed wr=%llu status=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
  }
  say("disc: again=%d no second event=%d", rdma_disconnect(c.id), no_event_for(cch, &cst, c.id, 300));
  teardown(&c);
}

static void c_disconnect_from_there(int both) {
  struct conn c;
  c_established(&c, port, both ? "bothdisc|" : "sdisc|", 2, 7, 0);
  if (both) {
    CHECK(post(&c, 1, IBV_WR_SEND, 0, "go", 2, 0, 0, 0) == 0, "post");
    CHECK(rdma_disconnect(c.id) == 0, "rdma_disconnect at the same time as the server");
    rdma_ack_cm_event(expect(cch, &cst, c.id, RDMA_CM_EVENT_DISCONNECTED));
  } else {
    rdma_ack_cm_event(expect(cch, &cst, c.id, RDMA_CM_EVENT_DISCONNECTED));
    for (int i = 0; i < 2; i++) {
      struct ibv_wc wc = wait_wc(c.rcq, "flush");
      say("sdisc: flushed wr=%llu status=%s", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status));
    }
    CHECK(rdma_disconnect(c.id) == 0, "rdma_disconnect after the peer's: nothing to do");
  }
  say("%s: once=%d", both ? "bothdisc" : "sdisc", no_event_for(cch, &cst, c.id, 200));
  teardown(&c);
}

static void c_chan(void) {
  struct conn c;
  struct pollfd p;
  struct ibv_cq *cq;
  void *ctx;
  struct ibv_wc wc;
  int before, after, unarmed;
  c_established(&c, port, "chan|", 0, 7, 1);
  post_recv(&c, 1, 1);
  CHECK(ibv_req_notify_cq(c.rcq, 0) == 0, "req_notify");
  p = (struct pollfd){.fd = c.cc->fd, .events = POLLIN};
  before = poll(&p, 1, 50);
  CHECK(post(&c, 1, IBV_WR_SEND, 0, "go", 2, 0, 0, 0) == 0, "post");
  after = poll(&p, 1, TIMEOUT_MS);
  CHECK(ibv_get_cq_event(c.cc, &cq, &ctx) == 0, "ibv_get_cq_event");
  ibv_ack_cq_events(cq, 1);
  CHECK(ibv_poll_cq(cq, 1, &wc) == 1, "a completion after the event");
  say("chan: before=%d after=%d cq_ok=%d ctx_ok=%d wc=%s text=%s", before, after, cq == c.rcq, ctx == &c, ibv_wc_status_str(wc.status), recv_text(&c, &wc));
  /* not re-armed: the next completion does not make the fd readable */
  post_recv(&c, 2, 2);
  CHECK(post(&c, 2, IBV_WR_SEND, 0, "again", 5, 0, 0, 0) == 0, "post");
  wc = recv_ok(&c, "unarmed");
  unarmed = poll(&p, 1, 50);
  say("chan: unarmed readable=%d text=%s", unarmed, recv_text(&c, &wc));
  c_disconnect(&c);
  teardown(&c);
}

static void c_big(void) {
  struct conn c;
  uint8_t *src = malloc(BIG_WRITE), *msg = malloc(BIG_SEND);
  struct ibv_mr *smr, *mmr;
  struct offer o;
  struct ibv_wc wc;
  struct ibv_sge sge;
  struct ibv_send_wr w, *bad;
  for (uint64_t i = 0; i < BIG_WRITE; i++) src[i] = pattern(i, 1);
  for (uint64_t i = 0; i < BIG_SEND; i++) msg[i] = pattern(i, 2);
  c_established(&c, port, "big|", 1, 7, 0);
  smr = ibv_reg_mr(c.pd, src, BIG_WRITE, 0);
  mmr = ibv_reg_mr(c.pd, msg, BIG_SEND, 0);
  CHECK(smr != NULL && mmr != NULL, "ibv_reg_mr");
  o = c_offer(&c);
  sge = (struct ibv_sge){.addr = (uintptr_t)src, .length = BIG_WRITE, .lkey = smr->lkey};
  memset(&w, 0, sizeof(w));
  w.wr_id = 1;
  w.sg_list = &sge;
  w.num_sge = 1;
  w.opcode = IBV_WR_RDMA_WRITE;
  w.wr.rdma.remote_addr = o.mr_addr;
  w.wr.rdma.rkey = o.mr_rkey;
  CHECK(ibv_post_send(c.id->qp, &w, &bad) == 0, "post the big write");
  {
    struct ibv_sge s2 = {.addr = (uintptr_t)msg, .length = BIG_SEND, .lkey = mmr->lkey};
    struct ibv_send_wr w2 = {.wr_id = 2, .sg_list = &s2, .num_sge = 1, .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED};
    CHECK(ibv_post_send(c.id->qp, &w2, &bad) == 0, "post the big send");
  }
  wc = wait_wc(c.scq, "big");
  say("big: send wr=%llu status=%s len=%u", (unsigned long long)wc.wr_id, ibv_wc_status_str(wc.status), wc.byte_len);
  c_disconnect(&c);
  CHECK(ibv_dereg_mr(smr) == 0 && ibv_dereg_mr(mmr) == 0, "dereg");
  free(src);
  free(msg);
  teardown(&c);
}

static void c_trickle(void) {
  struct conn c;
  int ok = 1;
  qp_send_wr = 512;
  c_established(&c, port, "trickle|", 0, 7, 0);
  qp_send_wr = 64;
  for (int i = 0; i < TRICKLE; i++) {
    uint64_t v = (uint64_t)i;
    /* inline: the send area's slots are reused before completion, which only inline allows */
    CHECK(post(&c, (uint64_t)i, IBV_WR_SEND_WITH_IMM, IBV_SEND_SIGNALED | IBV_SEND_INLINE, &v, 8, 0, 0, (uint32_t)i) == 0, "post %d", i);
  }
  for (int i = 0; i < TRICKLE; i++) {
    struct ibv_wc wc = wait_wc(c.scq, "trickle");
    ok &= wc.status == IBV_WC_SUCCESS && wc.wr_id == (uint64_t)i;
  }
  say("trickle: sent=%d all_ok_in_order=%d", TRICKLE, ok);
  c_disconnect(&c);
  teardown(&c);
}

static void c_flood(void) {
  struct conn c;
  struct ibv_wc wc;
  qp_one_cq = 1;
  c_established(&c, port, "flood|", 16, 7, 1);
  qp_one_cq = 0;
  flood_peer_done = 0;
  flood(&c, "client");
  if (!flood_peer_done) { /* its sends complete when this side has ACKed them: then it says done */
    wc = recv_ok(&c, "the server is done");
    CHECK(wc.byte_len == 4, "done");
  }
  c_disconnect(&c);
  teardown(&c);
}

struct blocker {
  struct rdma_event_channel *ch;
  int64_t got_at;
  int type;
};

static void *block_for_event(void *arg) {
  struct blocker *b = arg;
  struct rdma_cm_event *ev;
  CHECK(rdma_get_cm_event(b->ch, &ev) == 0, "blocking rdma_get_cm_event");
  b->got_at = now_ms();
  b->type = ev->event;
  rdma_ack_cm_event(ev);
  return NULL;
}

/* The CM channel fd: O_NONBLOCK gives EAGAIN; readable exactly while an event is queued; blocking mode blocks. */
static void c_cmfd(void) {
  struct rdma_event_channel *ch = rdma_create_event_channel();
  struct rdma_cm_id *id;
  struct rdma_cm_event *ev;
  struct pollfd p;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int eagain, before, queued, one_left, after;
  struct blocker b;
  pthread_t t;
  int64_t t0;
  CHECK(ch != NULL, "channel");
  CHECK(fcntl(ch->fd, F_SETFL, fcntl(ch->fd, F_GETFL) | O_NONBLOCK) == 0, "O_NONBLOCK");
  p = (struct pollfd){.fd = ch->fd, .events = POLLIN};
  eagain = rdma_get_cm_event(ch, &ev) == -1 && errno == EAGAIN;
  before = poll(&p, 1, 0);
  CHECK(rdma_create_id(ch, &id, NULL, RDMA_PS_TCP) == 0, "id");
  CHECK(rdma_resolve_addr(id, NULL, (struct sockaddr *)&a, 500) == 0, "resolve");
  queued = poll(&p, 1, 1000);
  CHECK(rdma_get_cm_event(ch, &ev) == 0 && ev->event == RDMA_CM_EVENT_ADDR_RESOLVED, "the event");
  rdma_ack_cm_event(ev);
  after = poll(&p, 1, 0);
  CHECK(rdma_resolve_route(id, 500) == 0, "route");
  one_left = poll(&p, 1, 1000);
  CHECK(rdma_get_cm_event(ch, &ev) == 0 && ev->event == RDMA_CM_EVENT_ROUTE_RESOLVED, "route event");
  rdma_ack_cm_event(ev);
  say("cmfd: eagain=%d before=%d queued=%d after=%d again=%d then=%d", eagain, before, queued, after, one_left, poll(&p, 1, 0));
  CHECK(rdma_destroy_id(id) == 0, "destroy");
  rdma_destroy_event_channel(ch);
  /* blocking */
  ch = rdma_create_event_channel();
  memset(&b, 0, sizeof(b));
  b.ch = ch;
  CHECK(pthread_create(&t, NULL, block_for_event, &b) == 0, "thread");
  sleep_ms(200);
  CHECK(rdma_create_id(ch, &id, NULL, RDMA_PS_TCP) == 0, "id");
  t0 = now_ms();
  CHECK(rdma_resolve_addr(id, NULL, (struct sockaddr *)&a, 500) == 0, "resolve");
  pthread_join(t, NULL);
  say("cmfd: blocking got=%s after_post=%d", rdma_event_str((enum rdma_cm_event_type)b.type), b.got_at >= t0);
  CHECK(rdma_destroy_id(id) == 0, "destroy");
  rdma_destroy_event_channel(ch);
}

/* A listener destroyed with a request it never took: the request goes with it (its channel's fd
 * is no longer readable) and the connecting side is refused (IB CM reason 1, timeout). */
static void c_listener_gone(void) {
  struct rdma_event_channel *ch = rdma_create_event_channel();
  struct rdma_cm_id *l;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct conn c;
  struct rdma_conn_param p;
  struct pollfd pf;
  struct rdma_cm_event *ev;
  int requested, after;
  CHECK(ch != NULL && fcntl(ch->fd, F_SETFL, O_NONBLOCK) == 0, "channel");
  CHECK(rdma_create_id(ch, &l, NULL, RDMA_PS_TCP) == 0 && rdma_bind_addr(l, (struct sockaddr *)&a) == 0 && rdma_listen(l, 4) == 0, "listener");
  memset(&c, 0, sizeof(c));
  c.id = c_resolve(ntohs(rdma_get_src_port(l)), 2000);
  setup(&c, 0);
  memset(&p, 0, sizeof(p));
  p.rnr_retry_count = 7;
  CHECK(rdma_connect(c.id, &p) == 0, "connect");
  pf = (struct pollfd){.fd = ch->fd, .events = POLLIN};
  requested = poll(&pf, 1, TIMEOUT_MS);
  CHECK(rdma_destroy_id(l) == 0, "destroy the listener");
  after = poll(&pf, 1, 0);
  ev = expect(cch, &cst, c.id, RDMA_CM_EVENT_REJECTED);
  say("listener-gone: request_readable=%d after_destroy=%d client=%s status=%d", requested, after, rdma_event_str(ev->event), ev->status);
  rdma_ack_cm_event(ev);
  teardown(&c);
  CHECK(rdma_get_cm_event(ch, &ev) == -1 && errno == EAGAIN, "nothing left on the listener's channel");
  rdma_destroy_event_channel(ch);
}

static void c_death(void) {
  struct conn c;
  char data[48];
  snprintf(data, sizeof(data), "death|%d", (int)getpid());
  c_established(&c, port, data, 0, 7, 0);
  say("death: waiting to be killed");
  CHECK(post(&c, 1, IBV_WR_SEND, 0, "kill-me", 7, 0, 0, 0) == 0, "post");
  for (;;) pause();
}

static void client(int with_death) {
  cch = rdma_create_event_channel();
  CHECK(cch != NULL, "channel");
  c_cmfd();
  c_unreachable();
  c_no_listener();
  c_timeout();
  c_listener_gone();
  c_connect_scenario();
  c_reject();
  c_data();
  c_window_other_qp();
  c_fault("mr-oob");
  c_fault("win-oob");
  c_fault("win-ro");
  c_rnr(1);
  c_rnr(0);
  c_disconnect_scenario();
  c_chan();
  c_disconnect_from_there(0);
  c_disconnect_from_there(1);
  c_big();
  c_flood();
  c_trickle();
  if (with_death) c_death();
  {
    struct conn c;
    struct rdma_cm_event *ev = c_connect(&c, port, "end|", 0, 7, 0, 2000);
    CHECK(ev->event == RDMA_CM_EVENT_REJECTED, "end");
    rdma_ack_cm_event(ev);
    teardown(&c);
  }
  say("done");
}

/* Run with SRNIC_DEVICES=mlx5_0:down,srnic1:active,srnic0:active,srnic2:noopen: librdmacm's
 * contexts (active devices, srnic0 first, the same pointers every time), the checks of
 * rdma_create_qp, and calls refused. */
static void devices(void) {
  int n, n2;
  struct ibv_context **list = rdma_get_devices(&n), **again = rdma_get_devices(&n2);
  struct ibv_port_attr pa;
  union ibv_gid gid;
  struct rdma_cm_id *id;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(1), .sin_addr.s_addr = htonl(0x0a000001)};
  struct ibv_qp_init_attr qa;
  struct ibv_pd *pd, *pd1, *pdx;
  struct ibv_cq *cq;
  struct ibv_context *opened;
  struct ibv_device **dl;
  char names[64] = "";
  int refused[7];
  struct rdma_conn_param p;
  uint8_t big[57] = {0};
  CHECK(list != NULL && again != NULL, "rdma_get_devices");
  for (int i = 0; i < n; i++) snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", i ? "," : "", ibv_get_device_name(list[i]->device));
  say("devices: n=%d names=%s same=%d port_active=%d gid=%d", n, names, n == n2 && list[0] == again[0] && list[1] == again[1], ibv_query_port(list[0], 1, &pa) == 0 && pa.state == IBV_PORT_ACTIVE, ibv_query_gid(list[0], 1, 0, &gid) == 0 && gid.raw[0] == 0xfe);
  rdma_free_devices(again);
  cch = rdma_create_event_channel();
  CHECK(rdma_create_id(cch, &id, NULL, RDMA_PS_TCP) == 0, "id");
  refused[0] = rdma_bind_addr(id, (struct sockaddr *)&a) == -1 && errno == EADDRNOTAVAIL;
  CHECK(rdma_destroy_id(id) == 0, "destroy");
  id = c_resolve(9, 500);
  say("devices: bind 10.0.0.1 refused=%d id_verbs_is_first=%d", refused[0], id->verbs == list[0]);
  pd = ibv_alloc_pd(id->verbs);
  pd1 = ibv_alloc_pd(list[1]);
  dl = ibv_get_device_list(NULL);
  opened = ibv_open_device(dl[2]); /* srnic0, opened by the application: another context */
  CHECK(opened != NULL, "ibv_open_device");
  pdx = ibv_alloc_pd(opened);
  cq = ibv_create_cq(id->verbs, 16, NULL, NULL, 0);
  CHECK(pd != NULL && pd1 != NULL && pdx != NULL && cq != NULL, "pd, cq");
#define QA(field, value) (memset(&qa, 0, sizeof(qa)), qa.send_cq = qa.recv_cq = cq, qa.qp_type = IBV_QPT_RC, qa.cap.max_send_wr = qa.cap.max_recv_wr = 4, qa.cap.max_send_sge = qa.cap.max_recv_sge = 1, qa.field = value, &qa)
  refused[0] = rdma_create_qp(id, pd, QA(cap.max_send_sge, 9)) == -1 && errno == EINVAL;
  refused[1] = rdma_create_qp(id, pd, QA(cap.max_inline_data, 257)) == -1 && errno == EINVAL;
  refused[2] = rdma_create_qp(id, pd, QA(cap.max_send_wr, 4097)) == -1 && errno == EINVAL;
  refused[3] = rdma_create_qp(id, pd, QA(qp_type, IBV_QPT_UD)) == -1 && errno == EINVAL;
  refused[4] = rdma_create_qp(id, pd1, QA(cap.max_recv_wr, 4)) == -1 && errno == EINVAL;
  refused[5] = rdma_create_qp(id, pdx, QA(cap.max_recv_wr, 4)) == -1 && errno == EINVAL;
  say("devices: create_qp refused sge=%d inline=%d wr=%d ud=%d other_device_pd=%d opened_context_pd=%d", refused[0], refused[1], refused[2], refused[3], refused[4], refused[5]);
  CHECK(rdma_create_qp(id, pd, QA(cap.max_inline_data, 100)) == 0, "rdma_create_qp");
  say("devices: granted inline=%u qp_ok=%d", qa.cap.max_inline_data, id->qp != NULL && id->qp->pd == pd && id->qp->send_cq == cq);
  memset(&p, 0, sizeof(p));
  p.private_data = big;
  p.private_data_len = 57;
  refused[0] = rdma_connect(id, &p) == -1 && errno == EINVAL;
  refused[1] = rdma_destroy_id(id) == -1 && errno == EBUSY;
  rdma_destroy_qp(id);
  refused[2] = rdma_destroy_id(id) == 0;
  say("devices: connect with 57 bytes refused=%d destroy with a qp refused=%d then=%d", refused[0], refused[1], refused[2]);
  ibv_destroy_cq(cq);
  ibv_dealloc_pd(pd);
  ibv_dealloc_pd(pd1);
  ibv_dealloc_pd(pdx);
  ibv_close_device(opened);
  ibv_free_device_list(dl);
  rdma_free_devices(list);
  rdma_destroy_event_channel(cch);
}

/* Run with SRNIC_DEVICES=srnic0:down: no context for librdmacm; an address resolves to ADDR_ERROR. */
static void no_devices(void) {
  int n = -1;
  struct ibv_context **list = rdma_get_devices(&n);
  struct rdma_cm_id *id;
  struct rdma_cm_event *ev;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int e = errno;
  cch = rdma_create_event_channel();
  CHECK(rdma_create_id(cch, &id, NULL, RDMA_PS_TCP) == 0, "id");
  CHECK(rdma_resolve_addr(id, NULL, (struct sockaddr *)&a, 500) == 0, "resolve");
  ev = expect(cch, &cst, id, RDMA_CM_EVENT_ADDR_ERROR);
  say("nodevices: list=%s n=%d enodev=%d resolve=%s status=%d", list == NULL ? "NULL" : "?", n, e == ENODEV, rdma_event_str(ev->event), ev->status);
  rdma_ack_cm_event(ev);
  rdma_destroy_id(id);
  rdma_destroy_event_channel(cch);
}

/* Run without SRNIC_NET_DIR: a listener's socket file is cm-PORT in /tmp/koala-srnic-UID, and goes with it. */
static void net_dir_default(void) {
  struct rdma_cm_id *id;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
  char path[128];
  int there, gone;
  cch = rdma_create_event_channel();
  CHECK(rdma_create_id(cch, &id, NULL, RDMA_PS_TCP) == 0 && rdma_bind_addr(id, (struct sockaddr *)&a) == 0 && rdma_listen(id, 1) == 0, "listen on 0.0.0.0");
  snprintf(path, sizeof(path), "/tmp/koala-srnic-%u/cm-%u", (unsigned)getuid(), ntohs(rdma_get_src_port(id)));
  there = access(path, F_OK) == 0;
  CHECK(rdma_destroy_id(id) == 0, "destroy");
  gone = access(path, F_OK) != 0;
  say("netdir: socket_file=%d removed=%d", there, gone);
  rdma_destroy_event_channel(cch);
}

/* More completions than a CQ holds (three signaled RDMA WRITEs of a loopback QP, one made with
 * ibv_create_qp, into a CQ of 2): a completion is lost, srnic says so on stderr and every poll
 * of that CQ fails from then on. */
/* An unconnected RC QP of `depth` send and receive entries, one SGE each (a loopback for the
 * CQ tests: srnic completes RDMA WRITEs to its own memory without a peer). */
static struct ibv_qp *loopback_qp(struct ibv_pd *pd, struct ibv_cq *send_cq, struct ibv_cq *recv_cq, uint32_t depth) {
  struct ibv_qp_init_attr a;
  memset(&a, 0, sizeof(a));
  a.send_cq = send_cq;
  a.recv_cq = recv_cq;
  a.qp_type = IBV_QPT_RC;
  a.cap.max_send_wr = a.cap.max_recv_wr = depth;
  a.cap.max_send_sge = a.cap.max_recv_sge = 1;
  return ibv_create_qp(pd, &a);
}

static void overrun(void) {
  int n;
  struct ibv_context **list = rdma_get_devices(&n);
  struct ibv_pd *pd = ibv_alloc_pd(list[0]);
  struct ibv_cq *small = ibv_create_cq(list[0], 2, NULL, NULL, 0), *other = ibv_create_cq(list[0], 8, NULL, NULL, 0);
  uint8_t *buf = calloc(1, 4096);
  struct ibv_mr *mr = ibv_reg_mr(pd, buf, 4096, ACCESS_ALL);
  struct ibv_qp *qp = loopback_qp(pd, small, other, 8);
  struct ibv_wc wc[4];
  int polled;
  CHECK(pd != NULL && small != NULL && other != NULL && mr != NULL && qp != NULL, "objects");
  for (int i = 0; i < 3; i++) {
    struct ibv_sge sg = {.addr = (uintptr_t)buf, .length = 8, .lkey = mr->lkey};
    struct ibv_send_wr w = {.wr_id = (uint64_t)i, .sg_list = &sg, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE, .send_flags = IBV_SEND_SIGNALED}, *bad;
    w.wr.rdma.remote_addr = (uintptr_t)buf + 64;
    w.wr.rdma.rkey = mr->rkey;
    CHECK(ibv_post_send(qp, &w, &bad) == 0, "post");
  }
  polled = ibv_poll_cq(small, 4, wc);
  say("overrun: poll=%d eoverflow=%d other_cq_ok=%d", polled, errno == EOVERFLOW, ibv_poll_cq(other, 4, wc) == 0);
  ibv_destroy_qp(qp);
  ibv_dereg_mr(mr);
  ibv_destroy_cq(small);
  ibv_destroy_cq(other);
  ibv_dealloc_pd(pd);
  rdma_free_devices(list);
  free(buf);
}

/* ibv_resize_cq on a CQ that holds completions, their ring wrapped around (a loopback QP's
 * signaled RDMA WRITEs into a send CQ of 4): below the completions queued and above max_cqe it
 * fails with EINVAL and the CQ is unchanged; grown, it keeps them in order and holds more;
 * emptied, it shrinks. */
static void resize(void) {
  int n, rc_small, rc_big, rc_grow, rc_shrink, cqe_after_fail, cqe_grown, got = 0;
  struct ibv_context **list = rdma_get_devices(&n);
  struct ibv_device_attr attr;
  struct ibv_pd *pd = ibv_alloc_pd(list[0]);
  struct ibv_cq *cq = ibv_create_cq(list[0], 4, NULL, NULL, 0), *rcq = ibv_create_cq(list[0], 4, NULL, NULL, 0);
  uint8_t *buf = calloc(1, 4096);
  struct ibv_mr *mr = ibv_reg_mr(pd, buf, 4096, ACCESS_ALL);
  struct ibv_qp *qp = loopback_qp(pd, cq, rcq, 16);
  struct ibv_wc wc[16];
  char order[128] = "";
  uint64_t next = 0;
  CHECK(ibv_query_device(list[0], &attr) == 0, "ibv_query_device");
  CHECK(pd != NULL && cq != NULL && rcq != NULL && mr != NULL && qp != NULL, "objects");
#define WRITES(k)                                                                                 \
  for (int i = 0; i < (k); i++) {                                                                  \
    struct ibv_sge sg = {.addr = (uintptr_t)buf, .length = 8, .lkey = mr->lkey};                  \
    struct ibv_send_wr w = {.wr_id = next++, .sg_list = &sg, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE, .send_flags = IBV_SEND_SIGNALED}, *bad; \
    w.wr.rdma.remote_addr = (uintptr_t)buf + 64;                                                  \
    w.wr.rdma.rkey = mr->rkey;                                                                    \
    CHECK(ibv_post_send(qp, &w, &bad) == 0, "post");                                              \
  }
  WRITES(4);
  CHECK(ibv_poll_cq(cq, 2, wc) == 2 && wc[0].wr_id == 0 && wc[1].wr_id == 1, "the first two");
  WRITES(2); /* the CQ is full again: 2, 3, 4, 5, wrapped around its ring */
  rc_small = ibv_resize_cq(cq, 3);
  rc_big = ibv_resize_cq(cq, attr.max_cqe + 1);
  cqe_after_fail = cq->cqe;
  rc_grow = ibv_resize_cq(cq, 10);
  cqe_grown = cq->cqe;
  WRITES(6); /* 6..11: 10 queued, more than the CQ held before */
  for (int k; (k = ibv_poll_cq(cq, 16, wc)) > 0;) {
    for (int i = 0; i < k; i++, got++) {
      size_t at = strlen(order);
      CHECK(wc[i].status == IBV_WC_SUCCESS, "status %s", ibv_wc_status_str(wc[i].status));
      snprintf(order + at, sizeof(order) - at, "%s%llu", at > 0 ? "," : "", (unsigned long long)wc[i].wr_id);
    }
  }
  rc_shrink = ibv_resize_cq(cq, 2);
  say("resize: too_small=%d too_big=%d unchanged=%d grow=%d cqe=%d order=%s shrink=%d cqe=%d", rc_small, rc_big, cqe_after_fail, rc_grow, cqe_grown >= 10, order, rc_shrink, cq->cqe);
#undef WRITES
  ibv_destroy_qp(qp);
  ibv_dereg_mr(mr);
  ibv_destroy_cq(cq);
  ibv_destroy_cq(rcq);
  ibv_dealloc_pd(pd);
  rdma_free_devices(list);
  free(buf);
}

static void *server_thread(void *arg) {
  (void)arg;
  my_side = 'S';
  server();
  return NULL;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 2 && strcmp(argv[1], "server") == 0) {
    side = 'S';
    s_listen();
    server();
    rdma_destroy_id(listener);
    rdma_destroy_event_channel(sch);
    return 0;
  }
  if (argc >= 3 && strcmp(argv[1], "client") == 0) {
    port = atoi(argv[2]);
    client(argc >= 4 && strcmp(argv[3], "death") == 0);
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "both") == 0) {
    pthread_t t;
    my_side = 'S';
    s_listen();
    my_side = 'C';
    CHECK(pthread_create(&t, NULL, server_thread, NULL) == 0, "server thread");
    client(0);
    pthread_join(t, NULL);
    rdma_destroy_id(listener);
    rdma_destroy_event_channel(sch);
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "devices") == 0) {
    devices();
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "overrun") == 0) {
    overrun();
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "resize") == 0) {
    resize();
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "netdir") == 0) {
    net_dir_default();
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "nodevices") == 0) {
    no_devices();
    return 0;
  }
  fprintf(stderr, "usage: selftest server | client PORT [death] | both | devices | nodevices | netdir | overrun | resize\n");
  return 1;
}
