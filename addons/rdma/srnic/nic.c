/*
 * srnic's NIC: one service thread per process, blocked in epoll_wait on the listening sockets,
 * the links to peers and a wake-up eventfd. It reads packets, executes requests against
 * registered memory (the responder), completes work requests from the answers (the requester),
 * retransmits after "receiver not ready", and runs the CM's timers. Application threads post
 * work requests directly (building and queueing packets under srnic_lock) and ring a doorbell;
 * only the service thread writes sockets, as on a NIC the posting CPU never does the transfer.
 * Nothing ever blocks on a socket while holding srnic_lock: output that does not fit a socket
 * is buffered and written when the socket is writable.
 *
 * Data path of a connected RC QP: each SEND / WRITE / READ gets the next sequence number. The
 * responder executes only the sequence number it expects (go-back-N): a SEND or WRITE_WITH_IMM
 * that finds no posted receive is answered RNR NAK and not executed, and what follows it is
 * dropped until the requester retransmits from it: first the refused request alone, after
 * RNR_DELAY_MS (doubling while it is refused again, up to 64 ms), then, once it is ACKed,
 * everything after it (so a receiver that stays not ready costs one packet per retry, not the
 * whole send queue). Every executed request is
 * answered in order: ACK, READ response, or NAK (an access violation, after which the responder
 * QP goes to the error state; the requester's does when the NAK'ed request completes).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "srnic.h"

#define RNR_DELAY_MS 2
#define MAX_PACKET ((1u << 31) + 4096) /* the largest message (max_msg_sz 2^31) and its header */
#define READ_CHUNK (256 * 1024)

static int ep = -1, wake_fd = -1;
static int wake_kind = KIND_WAKE;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int start_errno;
static struct srnic_link *graveyard; /* closed links, freed by the service thread */
static struct srnic_link *dirty;     /* links with output queued, written by the service thread */
static int doorbell;                 /* set: the service thread was woken for `dirty` and has not taken it yet */
static __thread int on_service_thread;
/* SRNIC_POLL_US: how long the service thread keeps polling after its last activity before it
 * sleeps in epoll_wait (0, the default: it sleeps at once). A NIC never sleeps: with this set,
 * a post costs no doorbell system call and a packet no thread wake-up while traffic flows,
 * which is what a NIC gives; the polling burns a core, as a NIC's own processor would. */
static int64_t poll_ns;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t srnic_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *service(void *arg);
static void link_flush(struct srnic_link *l);

/* Creates the epoll set and the wake-up eventfd and starts the service thread, with every
 * signal blocked in it (signals stay the application's). */
static void start_once(void) {
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &wake_kind};
  sigset_t all, old;
  pthread_t t;
  pthread_attr_t attr;
  const char *poll = getenv("SRNIC_POLL_US");
  if (poll != NULL) {
    long us = strtol(poll, NULL, 10);
    poll_ns = us > 0 && us <= 1000000 ? (int64_t)us * 1000 : 0;
  }
  ep = epoll_create1(EPOLL_CLOEXEC);
  wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (ep < 0 || wake_fd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, wake_fd, &ev) != 0) {
    start_errno = errno;
    return;
  }
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  start_errno = pthread_create(&t, &attr, service, NULL);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* Starts the service thread once per process; -1 (errno) if it could not be. */
int nic_start(void) {
  pthread_once(&once, start_once);
  if (start_errno != 0) errno = start_errno;
  return start_errno == 0 ? 0 : -1;
}

/* Makes the service thread recompute its timers (a new deadline) and free closed links. */
void nic_wake(void) {
  uint64_t one = 1;
  if (wake_fd >= 0 && write(wake_fd, &one, sizeof(one)) < 0) { /* already signalled */ }
}

/* Watches `fd` for input (and output when `out`); `ptr` starts with its KIND_*. */
int nic_add_fd(int fd, void *ptr, int out) {
  struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = ptr};
  return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

/* A link (or listener) for `fd`, watched by the service thread (under srnic_lock). */
struct srnic_link *nic_link_new(int fd, int kind) {
  struct srnic_link *l = calloc(1, sizeof(*l));
  if (l == NULL) return NULL;
  l->kind = kind;
  l->fd = fd;
  if (nic_add_fd(fd, l, 0) != 0) {
    free(l);
    return NULL;
  }
  return l;
}

/* Closes a link or listener (under srnic_lock): out of epoll at once, freed by the service
 * thread after the events it may still hold for it (they see `dead`). */
void nic_link_close(struct srnic_link *l) {
  if (l == NULL || l->dead) return;
  /* What was queued and not yet written by the service thread (a REJECT, a last ACK) leaves
   * first, as far as the socket takes it: the peer sees why the link ends. */
  if (!l->want_out && l->out_off < l->out_len) link_flush(l);
  l->dead = 1;
  epoll_ctl(ep, EPOLL_CTL_DEL, l->fd, NULL);
  close(l->fd);
  l->fd = -1;
  if (l->id != NULL) {
    if (l->id->link == l) l->id->link = NULL;
    if (l->id->listen == l) l->id->listen = NULL;
    l->id = NULL;
  }
  l->next = graveyard;
  graveyard = l;
  nic_wake();
}

/* Sets whether epoll reports `l` writable (only while it has output waiting). */
static void want_out(struct srnic_link *l, int on) {
  struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = l};
  if (l->want_out == on) return;
  l->want_out = on;
  epoll_ctl(ep, EPOLL_CTL_MOD, l->fd, &ev);
}

/* Writes what the socket takes without blocking; the rest waits for EPOLLOUT. A failed socket
 * drops its output: the read side reports the loss. */
static void link_flush(struct srnic_link *l) {
  while (!l->dead && !l->broken && l->out_off < l->out_len) {
    ssize_t n = send(l->fd, l->out + l->out_off, l->out_len - l->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      l->out_off += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      want_out(l, 1);
      return;
    } else {
      l->broken = 1;
    }
  }
  if (l->dead) return;
  l->out_off = l->out_len = 0;
  if (l->out_cap > 4 * READ_CHUNK) { /* give back a large message's room */
    free(l->out);
    l->out = NULL;
    l->out_cap = 0;
  }
  want_out(l, 0);
  if (l->shut_after_flush && !l->shut_done) {
    shutdown(l->fd, SHUT_WR);
    l->shut_done = 1;
  }
}

/* Queues the output of `l` for the service thread, which writes it at the end of its turn (all
 * the answers to one read leave in one write). An application thread only rings the doorbell,
 * as a post on a NIC writes a doorbell register and returns: the socket write, which a NIC does
 * not ask of the CPU that posts, happens on the service thread (the NIC). The doorbell is one
 * eventfd write, and none while the service thread has not yet answered the last one, so the
 * posts of a busy thread mostly cost no system call at all. */
static void later_or_now(struct srnic_link *l) {
  if (l->want_out) return; /* EPOLLOUT will */
  if (!l->dirty) {
    l->dirty = 1;
    l->dirty_next = dirty;
    dirty = l;
  }
  if (!on_service_thread && !doorbell) {
    doorbell = 1;
    nic_wake();
  }
}

/* The service thread's deferred writes (under srnic_lock); returns whether there were any. */
static int flush_dirty(void) {
  int any = dirty != NULL;
  while (dirty != NULL) {
    struct srnic_link *l = dirty;
    dirty = l->dirty_next;
    l->dirty = 0;
    if (!l->dead && !l->want_out) link_flush(l);
  }
  return any;
}

/* Queues a packet of `type` whose body is a then b, and writes what the socket takes now; the
 * rest goes when it is writable. Never blocks. Under srnic_lock. */
void nic_link_send(struct srnic_link *l, uint32_t type, const void *a, size_t alen, const void *b, size_t blen) {
  struct wire_hdr h;
  size_t need;
  if (l == NULL || l->dead || l->broken || l->shut_after_flush) return;
  need = sizeof(h) + alen + blen;
  if (l->out_off > 0 && l->out_off == l->out_len) l->out_off = l->out_len = 0;
  if (l->out_len + need > l->out_cap) {
    if (l->out_off > 0) { /* compact first */
      memmove(l->out, l->out + l->out_off, l->out_len - l->out_off);
      l->out_len -= l->out_off;
      l->out_off = 0;
    }
    if (l->out_len + need > l->out_cap) {
      size_t cap = l->out_cap ? l->out_cap : 4096;
      uint8_t *p;
      while (cap < l->out_len + need) cap *= 2;
      p = realloc(l->out, cap);
      if (p == NULL) {
        l->broken = 1;
        return;
      }
      l->out = p;
      l->out_cap = cap;
    }
  }
  h.len = (uint32_t)(alen + blen);
  h.type = type;
  memcpy(l->out + l->out_len, &h, sizeof(h));
  if (alen) memcpy(l->out + l->out_len + sizeof(h), a, alen);
  if (blen) memcpy(l->out + l->out_len + sizeof(h) + alen, b, blen);
  l->out_len += need;
  later_or_now(l);
}

/* Ends the output of `l` once what is queued is written (shutdown SHUT_WR); input goes on. */
void nic_link_shut(struct srnic_link *l) {
  if (l == NULL || l->dead) return;
  l->shut_after_flush = 1;
  later_or_now(l);
}

/* Reads what the socket has and dispatches every whole packet (service thread). */
static void link_read(struct srnic_link *l) {
  size_t pos = 0;
  ssize_t n;
  size_t want = READ_CHUNK;
  /* A packet begun: room for all of it, so one read can finish a large message. */
  if (l->in_len >= sizeof(struct wire_hdr)) {
    struct wire_hdr h;
    memcpy(&h, l->in, sizeof(h));
    if (h.len > MAX_PACKET) {
      fprintf(stderr, "srnic: a packet of %u bytes from a peer: closing the link\n", h.len);
      cm_link_lost(l);
      return;
    }
    if (sizeof(h) + (size_t)h.len > l->in_len + want) want = sizeof(h) + (size_t)h.len - l->in_len;
  }
  if (l->in_cap - l->in_len < want) {
    uint8_t *p = realloc(l->in, l->in_len + want);
    if (p == NULL) {
      cm_link_lost(l);
      return;
    }
    l->in = p;
    l->in_cap = l->in_len + want;
  }
  n = recv(l->fd, l->in + l->in_len, l->in_cap - l->in_len, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (n <= 0) { /* EOF or reset: the peer is gone (or closed its side) */
    cm_link_lost(l);
    return;
  }
  l->in_len += (size_t)n;
  while (!l->dead && l->in_len - pos >= sizeof(struct wire_hdr)) {
    struct wire_hdr h;
    memcpy(&h, l->in + pos, sizeof(h));
    if (h.len > MAX_PACKET) {
      fprintf(stderr, "srnic: a packet of %u bytes from a peer: closing the link\n", h.len);
      cm_link_lost(l);
      return;
    }
    if (l->in_len - pos - sizeof(h) < h.len) break;
    cm_packet(l, h.type, l->in + pos + sizeof(h), h.len);
    pos += sizeof(h) + h.len;
  }
  if (l->dead) return;
  memmove(l->in, l->in + pos, l->in_len - pos);
  l->in_len -= pos;
  if (l->in_cap > 4 * READ_CHUNK && l->in_len < READ_CHUNK) { /* give back a large message's room */
    uint8_t *p = realloc(l->in, READ_CHUNK);
    if (p != NULL) {
      l->in = p;
      l->in_cap = READ_CHUNK;
    }
  }
}

/* The service thread: timers, then epoll_wait until the next deadline, then every event under
 * srnic_lock; closed links are freed at the end of an iteration, when no event refers to them. */
static void *service(void *arg) {
  struct epoll_event evs[64];
  (void)arg;
  on_service_thread = 1;
  int64_t spin_until = 0;
  int spinning = 0;
  for (;;) {
    int64_t now, next;
    int timeout, n, busy;
    pthread_mutex_lock(&srnic_lock);
    now = srnic_now_ms();
    next = cm_timers(now);
    busy = flush_dirty();
    pthread_mutex_unlock(&srnic_lock);
    timeout = spinning ? 0 : next == 0 ? -1 : next <= now ? 0 : (int)(next - now);
    n = epoll_wait(ep, evs, 64, timeout);
    pthread_mutex_lock(&srnic_lock);
    for (int i = 0; i < n; i++) {
      int kind = *(int *)evs[i].data.ptr;
      if (kind == KIND_WAKE) {
        uint64_t v;
        if (read(wake_fd, &v, sizeof(v)) < 0) { /* nothing */ }
      } else if (kind == KIND_LISTENER) {
        struct srnic_link *l = evs[i].data.ptr;
        if (!l->dead && l->id != NULL) cm_accept_ready(l->id);
      } else {
        struct srnic_link *l = evs[i].data.ptr;
        if (!l->dead && (evs[i].events & EPOLLOUT)) link_flush(l);
        if (!l->dead && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) link_read(l);
      }
    }
    if (poll_ns > 0) {
      int64_t t = now_ns();
      if (n > 0 || busy) spin_until = t + poll_ns;
      spinning = t < spin_until;
    }
    /* Under srnic_lock: a post after this rings again, unless this thread polls on (its next
     * turn flushes what was posted meanwhile). */
    doorbell = spinning;
    flush_dirty(); /* before the graveyard: a closed link may still be on the list */
    while (graveyard != NULL) {
      struct srnic_link *l = graveyard;
      graveyard = l->next;
      free(l->in);
      free(l->out);
      free(l);
    }
    pthread_mutex_unlock(&srnic_lock);
    if (spinning) sched_yield(); /* the application threads first, when they have work */
  }
  return NULL;
}

/* ---- the requester ------------------------------------------------------------------------ */

static enum ibv_wc_opcode wc_opcode(enum ibv_wr_opcode op) {
  switch (op) {
    case IBV_WR_RDMA_WRITE:
    case IBV_WR_RDMA_WRITE_WITH_IMM: return IBV_WC_RDMA_WRITE;
    case IBV_WR_RDMA_READ: return IBV_WC_RDMA_READ;
    case IBV_WR_BIND_MW: return IBV_WC_BIND_MW;
    case IBV_WR_LOCAL_INV: return IBV_WC_LOCAL_INV;
    default: return IBV_WC_SEND;
  }
}

static struct srnic_swr *sq_at(struct srnic_qp *q, int i) { return &q->sq[(q->sq_head + i) % q->sq_cap]; }

/* Completes the send queue's head while it is done, in order: success for a signaled one, an
 * error always (and then the QP goes to the error state, flushing the rest). */
static void advance(struct srnic_qp *q) {
  while (q->sq_count > 0 && q->state != QP_ERROR) {
    struct srnic_swr s = *sq_at(q, 0);
    if (!s.done) break;
    q->sq_head = (q->sq_head + 1) % q->sq_cap;
    q->sq_count--;
    free(s.pkt);
    if (s.status != IBV_WC_SUCCESS) {
      srnic_complete(q->qp.send_cq, s.wr_id, s.status, s.wc_op, 0, q->qp.qp_num, 0, 0);
      nic_qp_error(q);
      return;
    }
    if (s.signaled) srnic_complete(q->qp.send_cq, s.wr_id, IBV_WC_SUCCESS, s.wc_op, s.byte_len, q->qp.qp_num, 0, 0);
  }
}

/* Moves a connected QP to the error state: outstanding sends, then posted receives, complete
 * with WR_FLUSH_ERR in order; anything posted later flushes at once. Under srnic_lock. */
void nic_qp_error(struct srnic_qp *q) {
  if (q->loopback || q->state == QP_ERROR) return;
  q->state = QP_ERROR;
  q->qp.state = IBV_QPS_ERR;
  q->rnr_deadline = 0;
  /* Everything outstanding flushes, in order, signaled or not. */
  while (q->sq_count > 0) {
    struct srnic_swr *s = sq_at(q, 0);
    srnic_complete(q->qp.send_cq, s->wr_id, IBV_WC_WR_FLUSH_ERR, s->wc_op, 0, q->qp.qp_num, 0, 0);
    free(s->pkt);
    s->pkt = NULL;
    q->sq_head = (q->sq_head + 1) % q->sq_cap;
    q->sq_count--;
  }
  while (q->rq_count > 0) {
    srnic_complete(q->qp.recv_cq, q->rq[q->rq_head].wr_id, IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, 0, q->qp.qp_num, 0, 0);
    q->rq_head = (q->rq_head + 1) % q->rq_cap;
    q->rq_count--;
  }
}

/* Builds and sends the packet of data work request `wr` as `s`; an IBV_WC status (a local
 * check that failed: nothing was sent). */
static enum ibv_wc_status send_request(struct srnic_qp *q, struct srnic_swr *s, const struct ibv_send_wr *wr, uint64_t total) {
  struct wire_data d;
  uint8_t *body;
  size_t off = sizeof(d);
  memset(&d, 0, sizeof(d));
  d.seq = s->seq;
  d.op = (uint32_t)wr->opcode;
  if (wr->opcode == IBV_WR_RDMA_READ) {
    /* The destination is checked now (and again when the data arrives). */
    for (int i = 0; i < wr->num_sge; i++) {
      const struct ibv_sge *g = &wr->sg_list[i];
      if (srnic_local_mem(q->qp.pd, g->lkey, g->addr, g->length, IBV_ACCESS_LOCAL_WRITE) == NULL) return IBV_WC_LOC_PROT_ERR;
      s->sge[i] = *g;
    }
    s->num_sge = wr->num_sge;
    d.rkey = wr->wr.rdma.rkey;
    d.raddr = wr->wr.rdma.remote_addr;
    d.len = (uint32_t)total;
    s->pkt_type = PKT_READ;
    body = malloc(sizeof(d));
    if (body == NULL) return IBV_WC_GENERAL_ERR;
  } else {
    /* The payload is taken now: inline data from the caller's memory (no lkey), else through
     * the lkeys. */
    body = malloc(sizeof(d) + total);
    if (body == NULL) return IBV_WC_GENERAL_ERR;
    for (int i = 0; i < wr->num_sge; i++) {
      const struct ibv_sge *g = &wr->sg_list[i];
      const void *src = (wr->send_flags & IBV_SEND_INLINE) ? (const void *)(uintptr_t)g->addr : srnic_local_mem(q->qp.pd, g->lkey, g->addr, g->length, 0);
      if (src == NULL && g->length > 0) {
        free(body);
        return IBV_WC_LOC_PROT_ERR;
      }
      if (g->length > 0) memcpy(body + off, src, g->length);
      off += g->length;
    }
    d.imm = wr->imm_data;
    d.len = (uint32_t)total;
    if (wr->opcode == IBV_WR_RDMA_WRITE || wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) {
      d.rkey = wr->wr.rdma.rkey;
      d.raddr = wr->wr.rdma.remote_addr;
      s->pkt_type = PKT_WRITE;
    } else {
      s->pkt_type = PKT_SEND;
    }
  }
  memcpy(body, &d, sizeof(d));
  s->pkt = body;
  s->pkt_len = wr->opcode == IBV_WR_RDMA_READ ? sizeof(d) : sizeof(d) + total;
  s->wire = 1;
  s->sent = 1;
  nic_link_send(q->sid->link, s->pkt_type, s->pkt, s->pkt_len, NULL, 0);
  return IBV_WC_SUCCESS;
}

/* ibv_post_send of a connected QP: checks each work request (EINVAL / ENOMEM stop the list at
 * it, as a provider does), executes binds and invalidates in place, takes a copy of the payload
 * and sends the request. Completions come in posting order. */
int nic_post_send(struct srnic_qp *q, struct ibv_send_wr *wr, struct ibv_send_wr **bad) {
  int rc = 0;
  pthread_mutex_lock(&srnic_lock);
  for (; wr != NULL; wr = wr->next) {
    uint64_t total = 0;
    struct srnic_swr *s;
    enum ibv_wc_status st = IBV_WC_SUCCESS;
    int known = wr->opcode == IBV_WR_SEND || wr->opcode == IBV_WR_SEND_WITH_IMM || wr->opcode == IBV_WR_RDMA_WRITE || wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM || wr->opcode == IBV_WR_RDMA_READ ||
                wr->opcode == IBV_WR_BIND_MW || wr->opcode == IBV_WR_LOCAL_INV;
    int local = wr->opcode == IBV_WR_BIND_MW || wr->opcode == IBV_WR_LOCAL_INV;
    if (!known || (!local && (wr->num_sge < 0 || wr->num_sge > (int)q->cap.max_send_sge || (wr->num_sge > 0 && wr->sg_list == NULL)))) rc = EINVAL;
    if (rc == 0 && !local)
      for (int i = 0; i < wr->num_sge; i++) total += wr->sg_list[i].length;
    if (rc == 0 && (wr->send_flags & IBV_SEND_INLINE) && (wr->opcode == IBV_WR_RDMA_READ || local || total > q->cap.max_inline_data)) rc = EINVAL;
    if (rc == 0 && total > (1u << 31)) rc = EINVAL;
    if (rc == 0 && q->state == QP_ERROR) { /* a QP in error flushes what is posted to it */
      srnic_complete(q->qp.send_cq, wr->wr_id, IBV_WC_WR_FLUSH_ERR, wc_opcode(wr->opcode), 0, q->qp.qp_num, 0, 0);
      continue;
    }
    if (rc == 0 && q->state != QP_RTS) rc = EINVAL;
    if (rc == 0 && q->sq_count == q->sq_cap) rc = ENOMEM;
    if (rc != 0) {
      *bad = wr;
      break;
    }
    s = sq_at(q, q->sq_count);
    memset(s, 0, sizeof(*s));
    q->sq_count++;
    s->wr_id = wr->wr_id;
    s->wc_op = wc_opcode(wr->opcode);
    s->signaled = (wr->send_flags & IBV_SEND_SIGNALED) || q->sig_all;
    s->byte_len = (uint32_t)total;
    s->rnr_left = q->rnr_retry >= 7 ? -1 : q->rnr_retry;
    if (q->failing) continue; /* behind a failed one: never sent, flushed with the rest */
    if (wr->opcode == IBV_WR_BIND_MW) st = srnic_bind_mw(q, wr);
    else if (wr->opcode == IBV_WR_LOCAL_INV) st = srnic_local_inv(q, wr->invalidate_rkey);
    else {
      s->seq = q->next_seq++;
      st = send_request(q, s, wr, total);
      if (st != IBV_WC_SUCCESS) q->next_seq--; /* never sent */
    }
    if (local || st != IBV_WC_SUCCESS) {
      s->done = 1;
      s->status = st;
    }
    if (st != IBV_WC_SUCCESS) q->failing = 1;
  }
  advance(q);
  pthread_mutex_unlock(&srnic_lock);
  return rc;
}

/* ibv_post_recv of a connected QP: the receive queue, consumed in order by incoming SENDs. */
int nic_post_recv(struct srnic_qp *q, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad) {
  int rc = 0;
  pthread_mutex_lock(&srnic_lock);
  for (; wr != NULL; wr = wr->next) {
    struct srnic_recv *r;
    if (wr->num_sge < 0 || wr->num_sge > (int)q->cap.max_recv_sge || (wr->num_sge > 0 && wr->sg_list == NULL)) rc = EINVAL;
    else if (q->state == QP_ERROR) {
      srnic_complete(q->qp.recv_cq, wr->wr_id, IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, 0, q->qp.qp_num, 0, 0);
      continue;
    } else if (q->rq_count == q->rq_cap) rc = ENOMEM;
    if (rc != 0) {
      *bad = wr;
      break;
    }
    r = &q->rq[(q->rq_head + q->rq_count) % q->rq_cap];
    r->wr_id = wr->wr_id;
    r->num_sge = wr->num_sge;
    if (wr->num_sge > 0) memcpy(r->sge, wr->sg_list, sizeof(struct ibv_sge) * (size_t)wr->num_sge);
    q->rq_count++;
  }
  pthread_mutex_unlock(&srnic_lock);
  return rc;
}

/* Marks every sent, unanswered SEND / WRITE up to `seq` answered (an ACK is cumulative; READs
 * are answered only by their response, which precedes any later ACK). */
static void acked(struct srnic_qp *q, uint32_t seq) {
  for (int i = 0; i < q->sq_count; i++) {
    struct srnic_swr *s = sq_at(q, i);
    if (!s->wire || !s->sent || s->done) continue;
    if ((int32_t)(s->seq - seq) > 0) break;
    if (s->wc_op != IBV_WC_RDMA_READ) {
      s->done = 1;
      s->status = IBV_WC_SUCCESS;
    }
  }
}

/* The sent, unanswered work request with sequence number `seq`, or NULL. */
static struct srnic_swr *find_seq(struct srnic_qp *q, uint32_t seq) {
  for (int i = 0; i < q->sq_count; i++) {
    struct srnic_swr *s = sq_at(q, i);
    if (s->wire && s->sent && !s->done && s->seq == seq) return s;
  }
  return NULL;
}

/* "Receiver not ready" for `seq`: retry after a delay (forever with rnr_retry 7), or fail with
 * RNR_RETRY_EXC_ERR once the retries are spent. */
static void on_rnr(struct srnic_qp *q, uint32_t seq) {
  struct srnic_swr *s;
  acked(q, seq - 1);
  advance(q);
  s = find_seq(q, seq);
  if (s == NULL || q->state != QP_RTS || q->rnr_deadline != 0) return;
  if (s->rnr_left == 0) {
    s->done = 1;
    s->status = IBV_WC_RNR_RETRY_EXC_ERR;
    advance(q);
    return;
  }
  if (s->rnr_left > 0) s->rnr_left--;
  q->rnr_count = q->rnr_seq == seq && q->rnr_resume ? q->rnr_count + 1 : 0;
  q->rnr_seq = seq;
  q->rnr_resume = 0;
  q->rnr_deadline = srnic_now_ms() + (RNR_DELAY_MS << (q->rnr_count < 5 ? q->rnr_count : 5));
}

int64_t nic_qp_timer(struct srnic_qp *q, int64_t now) {
  struct srnic_swr *s;
  if (q->rnr_deadline == 0 || q->state != QP_RTS) return 0;
  if (now < q->rnr_deadline) return q->rnr_deadline;
  q->rnr_deadline = 0;
  s = find_seq(q, q->rnr_seq);
  if (s == NULL) return 0;
  /* The refused request alone; what follows it goes when it is ACKed (resume_after_rnr). */
  q->rnr_resume = 1;
  nic_link_send(q->sid->link, s->pkt_type, s->pkt, s->pkt_len, NULL, 0);
  return 0;
}

/* Go-back-N after the refused request was ACKed: everything sent after it (the responder
 * dropped it), again, in order. */
static void resume_after_rnr(struct srnic_qp *q, uint32_t acked_seq) {
  if (!q->rnr_resume || (int32_t)(acked_seq - q->rnr_seq) < 0 || q->state != QP_RTS) return;
  q->rnr_resume = 0;
  q->rnr_count = 0;
  for (int i = 0; i < q->sq_count; i++) {
    struct srnic_swr *s = sq_at(q, i);
    if (s->wire && s->sent && !s->done && (int32_t)(s->seq - q->rnr_seq) > 0) nic_link_send(q->sid->link, s->pkt_type, s->pkt, s->pkt_len, NULL, 0);
  }
}

/* A READ response: the data goes to the READ's local entries (checked again). */
static void on_read_resp(struct srnic_qp *q, uint32_t seq, const uint8_t *data, size_t len) {
  struct srnic_swr *s;
  size_t off = 0;
  acked(q, seq - 1);
  s = find_seq(q, seq);
  if (s == NULL || s->wc_op != IBV_WC_RDMA_READ) return;
  s->done = 1;
  s->status = IBV_WC_SUCCESS;
  for (int i = 0; i < s->num_sge && off < len; i++) {
    size_t k = s->sge[i].length < len - off ? s->sge[i].length : len - off;
    void *dst = srnic_local_mem(q->qp.pd, s->sge[i].lkey, s->sge[i].addr, s->sge[i].length, IBV_ACCESS_LOCAL_WRITE);
    if (dst == NULL) {
      s->status = IBV_WC_LOC_PROT_ERR;
      break;
    }
    memcpy(dst, data + off, k);
    off += k;
  }
  advance(q);
}

/* ---- the responder ------------------------------------------------------------------------ */

/* Sends an answer of `type` for request `seq` (a NAK carries `status`), with `data` if any. */
static void answer(struct srnic_qp *q, uint32_t type, uint32_t seq, uint32_t status, const void *data, size_t len) {
  struct wire_data d;
  memset(&d, 0, sizeof(d));
  d.seq = seq;
  d.op = status;
  nic_link_send(q->sid->link, type, &d, sizeof(d), data, len);
}

/* Refuses request `seq` with `status` (NAK): the responder QP goes to the error state. */
static void refuse(struct srnic_qp *q, uint32_t seq, enum ibv_wc_status status) {
  answer(q, PKT_NAK, seq, status, NULL, 0);
  q->expected++;
  nic_qp_error(q);
}

/* The responder: executes request `d` (SEND, WRITE, READ) if it is the one expected, checking
 * the target memory, and answers (ACK, READ response, RNR NAK or NAK). */
static void respond(struct srnic_qp *q, uint32_t type, const struct wire_data *d, const uint8_t *data, size_t len) {
  int consumes, with_imm;
  struct srnic_recv r;
  if (d->seq != q->expected) return; /* behind a refused request: dropped until retransmitted */
  /* A zero-length READ or WRITE touches no memory: its rkey and address are not checked (IB C9-88). */
  if (type == PKT_READ) {
    void *src = d->len == 0 ? NULL : srnic_remote_mem(q, d->rkey, d->raddr, d->len, IBV_ACCESS_REMOTE_READ);
    if (src == NULL && d->len > 0) return refuse(q, d->seq, IBV_WC_REM_ACCESS_ERR);
    answer(q, PKT_READ_RESP, d->seq, 0, src, d->len);
    q->expected++;
    return;
  }
  consumes = type == PKT_SEND || d->op == IBV_WR_RDMA_WRITE_WITH_IMM;
  with_imm = d->op == IBV_WR_SEND_WITH_IMM || d->op == IBV_WR_RDMA_WRITE_WITH_IMM;
  if (consumes && q->rq_count == 0) {
    answer(q, PKT_RNR_NAK, d->seq, 0, NULL, 0);
    return;
  }
  if (type == PKT_WRITE && len > 0) {
    void *dst = srnic_remote_mem(q, d->rkey, d->raddr, len, IBV_ACCESS_REMOTE_WRITE);
    if (dst == NULL) return refuse(q, d->seq, IBV_WC_REM_ACCESS_ERR);
    memcpy(dst, data, len);
  }
  if (consumes) {
    enum ibv_wc_status st = IBV_WC_SUCCESS;
    r = q->rq[q->rq_head];
    q->rq_head = (q->rq_head + 1) % q->rq_cap;
    q->rq_count--;
    if (type == PKT_SEND) {
      size_t off = 0;
      for (int i = 0; i < r.num_sge && off < len; i++) {
        size_t k = r.sge[i].length < len - off ? r.sge[i].length : len - off;
        void *dst = srnic_local_mem(q->qp.pd, r.sge[i].lkey, r.sge[i].addr, r.sge[i].length, IBV_ACCESS_LOCAL_WRITE);
        if (dst == NULL) {
          st = IBV_WC_LOC_PROT_ERR;
          break;
        }
        memcpy(dst, data + off, k);
        off += k;
      }
      if (st == IBV_WC_SUCCESS && off < len) st = IBV_WC_LOC_LEN_ERR;
    }
    if (st != IBV_WC_SUCCESS) {
      srnic_complete(q->qp.recv_cq, r.wr_id, st, IBV_WC_RECV, 0, q->qp.qp_num, 0, 0);
      return refuse(q, d->seq, IBV_WC_REM_INV_REQ_ERR);
    }
    srnic_complete(q->qp.recv_cq, r.wr_id, IBV_WC_SUCCESS, type == PKT_SEND ? IBV_WC_RECV : IBV_WC_RECV_RDMA_WITH_IMM, (uint32_t)len, q->qp.qp_num, with_imm, d->imm);
  }
  q->expected++;
  answer(q, PKT_ACK, d->seq, 0, NULL, 0);
}

/* A data-path packet for `q`: a request for the responder, or an answer for the requester. */
void nic_data_packet(struct srnic_qp *q, uint32_t type, const uint8_t *body, size_t len) {
  struct wire_data d;
  if (q->state != QP_RTS || len < sizeof(d) || q->sid == NULL) return;
  memcpy(&d, body, sizeof(d));
  body += sizeof(d);
  len -= sizeof(d);
  switch (type) {
    case PKT_SEND:
    case PKT_WRITE:
    case PKT_READ:
      respond(q, type, &d, body, len);
      break;
    case PKT_ACK:
      acked(q, d.seq);
      resume_after_rnr(q, d.seq);
      advance(q);
      break;
    case PKT_READ_RESP:
      on_read_resp(q, d.seq, body, len);
      break;
    case PKT_NAK: {
      struct srnic_swr *s;
      acked(q, d.seq - 1);
      s = find_seq(q, d.seq);
      if (s != NULL) {
        s->done = 1;
        s->status = (enum ibv_wc_status)d.op;
      }
      advance(q);
      break;
    }
    case PKT_RNR_NAK:
      on_rnr(q, d.seq);
      break;
    default:
      break;
  }
}
