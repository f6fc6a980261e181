/*
 * srnic's librdmacm subset: event channels, CM ids, address and route resolution, listening,
 * connecting, accepting, rejecting and disconnecting, over srnic's network (srnic.c's header
 * comment): port P is the Unix socket SRNIC_NET_DIR/cm-P; a connection is one stream socket.
 *
 * CM exchange on a connection: the active side sends REQ (its source port, QP number, RNR retry
 * count and private data); the passive side's service thread makes a new id and queues
 * CONNECT_REQUEST; rdma_accept answers ACCEPT (QP number, private data) and the active side
 * answers RTU, each side then queueing ESTABLISHED; rdma_reject answers REJECT (private data).
 * rdma_disconnect sends DISCONNECT; a peer's DISCONNECT, or its socket closing (the peer process
 * died), moves the QP to the error state and queues DISCONNECTED, once per side.
 *
 * An event channel's fd is an eventfd in semaphore mode counting the queued events: readable
 * exactly while one is queued; rdma_get_cm_event reads it, so it blocks or fails with EAGAIN as
 * the fd's O_NONBLOCK says.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "srnic.h"

#define REJECT_CONSUMER 28   /* IB CM reject reason: consumer defined (rdma_reject) */
#define REJECT_NO_LISTENER 8 /* IB CM reject reason: invalid service ID (nothing listens) */
#define REJECT_TIMEOUT 1      /* IB CM reject reason: timeout (a request destroyed unanswered) */
#define DEFAULT_TIMEOUT_MS 2000

struct srnic_event {
  struct rdma_cm_event ev; /* first: what the application gets */
  uint8_t data[SRNIC_MAX_PRIVATE];
  int void_; /* its id was destroyed before it was retrieved: skipped */
  struct srnic_event *next;
};
struct srnic_chan {
  struct rdma_event_channel ch; /* first */
  struct srnic_event *head, *tail;
};

static struct srnic_id *ids;             /* every live id (the timers walk them) */
static struct srnic_link *pending_links; /* accepted, waiting for their REQ */

/* ---- event channels ---- */

SRNIC_EXPORT struct rdma_event_channel *rdma_create_event_channel(void) {
  struct srnic_chan *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  c->ch.fd = eventfd(0, EFD_SEMAPHORE | EFD_CLOEXEC);
  if (c->ch.fd < 0) {
    free(c);
    return NULL;
  }
  return &c->ch;
}

SRNIC_EXPORT void rdma_destroy_event_channel(struct rdma_event_channel *channel) {
  struct srnic_chan *c = (struct srnic_chan *)channel;
  if (c == NULL) return;
  pthread_mutex_lock(&srnic_lock);
  while (c->head != NULL) {
    struct srnic_event *e = c->head;
    c->head = e->next;
    free(e);
  }
  pthread_mutex_unlock(&srnic_lock);
  close(c->ch.fd);
  free(c);
}

/* Queues an event for `sid` on its channel (under srnic_lock). */
static void queue_event(struct srnic_id *sid, enum rdma_cm_event_type type, int status, struct srnic_id *listen, const void *data, size_t len) {
  struct srnic_event *e = calloc(1, sizeof(*e));
  uint64_t one = 1;
  if (e == NULL || sid->chan == NULL) {
    fprintf(stderr, "srnic: an event (%s) was lost: %s\n", rdma_event_str(type), e == NULL ? "out of memory" : "no channel");
    free(e);
    return;
  }
  if (len > SRNIC_MAX_PRIVATE) len = SRNIC_MAX_PRIVATE;
  e->ev.id = &sid->id;
  e->ev.listen_id = listen != NULL ? &listen->id : NULL;
  e->ev.event = type;
  e->ev.status = status;
  if (len > 0) memcpy(e->data, data, len);
  e->ev.param.conn.private_data = len > 0 ? e->data : NULL;
  e->ev.param.conn.private_data_len = (uint8_t)len;
  e->ev.param.conn.qp_num = sid->peer_qpn;
  e->ev.param.conn.rnr_retry_count = (uint8_t)sid->rnr_retry;
  if (sid->chan->tail != NULL) sid->chan->tail->next = e;
  else sid->chan->head = e;
  sid->chan->tail = e;
  if (write(sid->chan->ch.fd, &one, sizeof(one)) != (ssize_t)sizeof(one)) fprintf(stderr, "srnic: event channel write: %s\n", strerror(errno));
}

/* Takes the next queued event: blocks, or fails with EAGAIN, as the channel fd says. */
SRNIC_EXPORT int rdma_get_cm_event(struct rdma_event_channel *channel, struct rdma_cm_event **event) {
  struct srnic_chan *c = (struct srnic_chan *)channel;
  if (c == NULL || event == NULL) {
    errno = EINVAL;
    return -1;
  }
  for (;;) {
    uint64_t v;
    struct srnic_event *e;
    /* One count per queued event: blocks, or EAGAIN when O_NONBLOCK, while none is queued. */
    if (read(c->ch.fd, &v, sizeof(v)) != (ssize_t)sizeof(v)) {
      if (errno == EINTR) continue;
      return -1;
    }
    pthread_mutex_lock(&srnic_lock);
    e = c->head;
    if (e != NULL) {
      c->head = e->next;
      if (c->head == NULL) c->tail = NULL;
    }
    pthread_mutex_unlock(&srnic_lock);
    if (e == NULL) continue; /* cannot happen: the count follows the queue */
    if (e->void_) {
      free(e);
      continue;
    }
    *event = &e->ev;
    return 0;
  }
}

SRNIC_EXPORT int rdma_ack_cm_event(struct rdma_cm_event *event) {
  if (event == NULL) {
    errno = EINVAL;
    return -1;
  }
  free(event);
  return 0;
}

SRNIC_EXPORT const char *rdma_event_str(enum rdma_cm_event_type event) {
  static const char *const names[] = {
      "RDMA_CM_EVENT_ADDR_RESOLVED",    "RDMA_CM_EVENT_ADDR_ERROR",     "RDMA_CM_EVENT_ROUTE_RESOLVED",   "RDMA_CM_EVENT_ROUTE_ERROR",
      "RDMA_CM_EVENT_CONNECT_REQUEST",  "RDMA_CM_EVENT_CONNECT_RESPONSE", "RDMA_CM_EVENT_CONNECT_ERROR",  "RDMA_CM_EVENT_UNREACHABLE",
      "RDMA_CM_EVENT_REJECTED",         "RDMA_CM_EVENT_ESTABLISHED",    "RDMA_CM_EVENT_DISCONNECTED",     "RDMA_CM_EVENT_DEVICE_REMOVAL",
      "RDMA_CM_EVENT_MULTICAST_JOIN",   "RDMA_CM_EVENT_MULTICAST_ERROR", "RDMA_CM_EVENT_ADDR_CHANGE",     "RDMA_CM_EVENT_TIMEWAIT_EXIT",
  };
  return (unsigned)event < sizeof(names) / sizeof(names[0]) ? names[event] : "UNKNOWN EVENT";
}

static void destroy_id_locked(struct srnic_id *sid);

/* Removes the queued events of `sid` (its id is being destroyed): taken off the queue when the
 * channel's fd is non-blocking (its count read back), else left as void entries that
 * rdma_get_cm_event skips. A CONNECT_REQUEST of a listener being destroyed takes its new id
 * with it. Under srnic_lock. */
static void drop_events(struct srnic_id *sid) {
  struct srnic_chan *c = sid->chan;
  int nonblocking;
  if (c == NULL) return;
  nonblocking = (fcntl(c->ch.fd, F_GETFL) & O_NONBLOCK) != 0;
  for (struct srnic_event **pp = &c->head, *prev = NULL; *pp != NULL;) {
    struct srnic_event *e = *pp;
    int mine = e->ev.id == &sid->id || e->ev.listen_id == &sid->id;
    uint64_t v;
    if (!mine || e->void_) {
      prev = e;
      pp = &e->next;
      continue;
    }
    /* Void first: destroying the request's new id walks this queue too and must skip it (it
     * removes only events queued after this one, so `pp` and `prev` stay valid). */
    e->void_ = 1;
    if (e->ev.event == RDMA_CM_EVENT_CONNECT_REQUEST && e->ev.listen_id == &sid->id && e->ev.id != &sid->id) destroy_id_locked((struct srnic_id *)e->ev.id);
    if (nonblocking && read(c->ch.fd, &v, sizeof(v)) == (ssize_t)sizeof(v)) {
      *pp = e->next;
      if (c->tail == e) c->tail = prev;
      free(e);
    } else {
      prev = e;
      pp = &e->next;
    }
  }
}

/* ---- devices ---- */

SRNIC_EXPORT struct ibv_context **rdma_get_devices(int *num_devices) {
  int n;
  struct ibv_context **all = srnic_cm_contexts(&n), **list;
  if (num_devices != NULL) *num_devices = n;
  if (n == 0) {
    errno = ENODEV;
    return NULL;
  }
  list = calloc((size_t)n + 1, sizeof(*list));
  if (list == NULL) {
    errno = ENOMEM;
    return NULL;
  }
  memcpy(list, all, sizeof(*list) * (size_t)n);
  return list;
}

SRNIC_EXPORT void rdma_free_devices(struct ibv_context **list) { free(list); }

/* ---- ids ---- */

SRNIC_EXPORT int rdma_create_id(struct rdma_event_channel *channel, struct rdma_cm_id **id, void *context, enum rdma_port_space ps) {
  struct srnic_id *sid;
  if (channel == NULL || id == NULL || (ps != RDMA_PS_TCP && ps != RDMA_PS_IB)) { /* no synchronous mode */
    errno = EINVAL;
    return -1;
  }
  if (nic_start() != 0) return -1;
  sid = calloc(1, sizeof(*sid));
  if (sid == NULL) {
    errno = ENOMEM;
    return -1;
  }
  sid->id.channel = channel;
  sid->id.context = context;
  sid->id.ps = ps;
  sid->id.qp_type = IBV_QPT_RC;
  sid->id.port_num = 1;
  sid->chan = (struct srnic_chan *)channel;
  sid->bound_fd = -1;
  sid->rnr_retry = 7;
  pthread_mutex_lock(&srnic_lock);
  sid->next = ids;
  if (ids != NULL) ids->prev = sid;
  ids = sid;
  pthread_mutex_unlock(&srnic_lock);
  *id = &sid->id;
  return 0;
}

/* Closes and forgets everything of `sid` and frees it (under srnic_lock). */
static void destroy_id_locked(struct srnic_id *sid) {
  drop_events(sid);
  if (sid->state == ID_REQUESTED && sid->link != NULL) { /* never answered: refused, as the IB CM does */
    struct wire_cm m;
    memset(&m, 0, sizeof(m));
    m.port = REJECT_TIMEOUT;
    nic_link_send(sid->link, PKT_CM_REJECT, &m, sizeof(m), NULL, 0);
  }
  nic_link_close(sid->link);
  if (sid->listen != NULL) {
    /* Connections accepted for this listener and still waiting for their REQ go too. */
    for (struct srnic_link **pp = &pending_links; *pp != NULL;) {
      struct srnic_link *l = *pp;
      if (l->listener == sid) {
        *pp = l->pending_next;
        l->listener = NULL;
        nic_link_close(l);
      } else {
        pp = &l->pending_next;
      }
    }
    nic_link_close(sid->listen);
  }
  if (sid->bound_fd >= 0) close(sid->bound_fd);
  if (sid->path[0] != '\0') unlink(sid->path);
  if (sid->prev != NULL) sid->prev->next = sid->next;
  else ids = sid->next;
  if (sid->next != NULL) sid->next->prev = sid->prev;
  if (sid->id.qp != NULL) ((struct srnic_qp *)sid->id.qp)->sid = NULL;
  free(sid);
}

SRNIC_EXPORT int rdma_destroy_id(struct rdma_cm_id *id) {
  struct srnic_id *sid = (struct srnic_id *)id;
  if (id == NULL) {
    errno = EINVAL;
    return -1;
  }
  pthread_mutex_lock(&srnic_lock);
  if (id->qp != NULL) { /* rdma_destroy_qp first */
    pthread_mutex_unlock(&srnic_lock);
    errno = EBUSY;
    return -1;
  }
  destroy_id_locked(sid);
  pthread_mutex_unlock(&srnic_lock);
  return 0;
}

/* ---- addresses ---- */

/* The network folder, created 0700 on first use; NULL (errno) when unusable. */
static const char *net_dir(void) {
  static char dir[80];
  static int done;
  const char *env = getenv("SRNIC_NET_DIR");
  struct stat st;
  if (done) return dir;
  if (env != NULL && env[0] != '\0') {
    if (strlen(env) >= sizeof(dir)) {
      errno = ENAMETOOLONG;
      return NULL;
    }
    strcpy(dir, env);
  } else {
    snprintf(dir, sizeof(dir), "/tmp/koala-srnic-%u", (unsigned)getuid());
  }
  if (mkdir(dir, 0700) != 0 && errno != EEXIST) return NULL;
  /* Not a folder somebody else made for us to use (or a link to one). */
  if (lstat(dir, &st) != 0) return NULL;
  if (!S_ISDIR(st.st_mode) || st.st_uid != getuid()) {
    fprintf(stderr, "srnic: %s is not a folder of this user\n", dir);
    errno = EACCES;
    return NULL;
  }
  done = 1;
  return dir;
}

/* The socket address of srnic port `port`; -1 (errno) when the folder is unusable. */
static int port_addr(unsigned port, struct sockaddr_un *a) {
  const char *dir = net_dir();
  if (dir == NULL) return -1;
  memset(a, 0, sizeof(*a));
  a->sun_family = AF_UNIX;
  snprintf(a->sun_path, sizeof(a->sun_path), "%s/cm-%u", dir, port);
  return 0;
}

/* True for an address srnic reaches: 127.0.0.0/8, 0.0.0.0, ::1, ::. */
static int reachable(const struct sockaddr *a) {
  if (a == NULL) return 0;
  if (a->sa_family == AF_INET) {
    uint32_t ip = ntohl(((const struct sockaddr_in *)a)->sin_addr.s_addr);
    return ip == 0 || (ip >> 24) == 127;
  }
  if (a->sa_family == AF_INET6) {
    const struct in6_addr *ip = &((const struct sockaddr_in6 *)a)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(ip) || IN6_IS_ADDR_UNSPECIFIED(ip);
  }
  return 0;
}

static size_t addr_len(const struct sockaddr *a) { return a->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in); }
static unsigned addr_port(const struct sockaddr *a) { return ntohs(((const struct sockaddr_in *)a)->sin_port); }
static void set_port(struct sockaddr *a, unsigned port) { ((struct sockaddr_in *)a)->sin_port = htons((uint16_t)port); }

/* A loopback address of `family` with `port`. */
static void loopback_addr(struct sockaddr_storage *out, int family, unsigned port) {
  memset(out, 0, sizeof(*out));
  if (family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_loopback;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)out;
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  }
  set_port((struct sockaddr *)out, port);
}

/* Binds a new socket to port `port`'s file, taking over a stale one (nobody accepts on it);
 * the fd, or -1 with errno (EADDRINUSE when a listener has it). */
static int bind_port(unsigned port, int take_stale, char *path) {
  struct sockaddr_un a;
  int fd;
  if (port_addr(port, &a) != 0) return -1;
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  for (int attempt = 0; attempt < 3; attempt++) {
    int probe, r, e;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
      strcpy(path, a.sun_path);
      return fd;
    }
    if (errno != EADDRINUSE || !take_stale) break;
    probe = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (probe < 0) break;
    r = connect(probe, (struct sockaddr *)&a, sizeof(a));
    e = errno;
    close(probe);
    if (r == 0 || e == EAGAIN) { /* a live listener */
      errno = EADDRINUSE;
      break;
    }
    if (e == ECONNREFUSED) unlink(a.sun_path); /* stale: its process is gone */
  }
  {
    int e = errno;
    close(fd);
    errno = e;
  }
  return -1;
}

/* Binds the id to srnic port P (its socket file cm-P; port 0: a free one): EADDRINUSE when a
 * live listener has it, a stale file taken over; EADDRNOTAVAIL for an address not of this host. */
SRNIC_EXPORT int rdma_bind_addr(struct rdma_cm_id *id, struct sockaddr *addr) {
  struct srnic_id *sid = (struct srnic_id *)id;
  struct ibv_context *ctx = srnic_cm_context();
  unsigned port;
  int fd = -1;
  if (id == NULL || addr == NULL || (addr->sa_family != AF_INET && addr->sa_family != AF_INET6)) {
    errno = EINVAL;
    return -1;
  }
  if (!reachable(addr)) {
    errno = EADDRNOTAVAIL;
    return -1;
  }
  if (ctx == NULL) {
    errno = ENODEV;
    return -1;
  }
  pthread_mutex_lock(&srnic_lock);
  if (sid->state != ID_IDLE) {
    pthread_mutex_unlock(&srnic_lock);
    errno = EINVAL;
    return -1;
  }
  port = addr_port(addr);
  if (port != 0) {
    fd = bind_port(port, 1, sid->path);
  } else { /* a free port of the dynamic range */
    unsigned seed = (unsigned)getpid() * 2654435761u ^ (unsigned)srnic_now_ms();
    for (int attempt = 0; attempt < 256 && fd < 0; attempt++) {
      port = 20000 + rand_r(&seed) % 40000;
      fd = bind_port(port, 0, sid->path);
      if (fd < 0 && errno != EADDRINUSE) break;
    }
  }
  if (fd < 0) {
    int e = errno;
    pthread_mutex_unlock(&srnic_lock);
    errno = e;
    return -1;
  }
  sid->bound_fd = fd;
  memcpy(&sid->id.route.addr.src_storage, addr, addr_len(addr));
  set_port(&sid->id.route.addr.src_addr, port);
  sid->id.verbs = ctx;
  sid->state = ID_BOUND;
  pthread_mutex_unlock(&srnic_lock);
  return 0;
}

SRNIC_EXPORT int rdma_listen(struct rdma_cm_id *id, int backlog) {
  struct srnic_id *sid = (struct srnic_id *)id;
  struct srnic_link *l;
  pthread_mutex_lock(&srnic_lock);
  if (sid->state != ID_BOUND) {
    pthread_mutex_unlock(&srnic_lock);
    errno = EINVAL;
    return -1;
  }
  if (listen(sid->bound_fd, backlog > 128 ? backlog : 128) != 0 || (l = nic_link_new(sid->bound_fd, KIND_LISTENER)) == NULL) {
    int e = errno;
    pthread_mutex_unlock(&srnic_lock);
    errno = e;
    return -1;
  }
  l->id = sid;
  sid->listen = l;
  sid->bound_fd = -1;
  sid->state = ID_LISTENING;
  pthread_mutex_unlock(&srnic_lock);
  return 0;
}

SRNIC_EXPORT __be16 rdma_get_src_port(struct rdma_cm_id *id) { return id->route.addr.src_sin.sin_port; }
SRNIC_EXPORT __be16 rdma_get_dst_port(struct rdma_cm_id *id) { return id->route.addr.dst_sin.sin_port; }

/* Queues ADDR_RESOLVED for a local address (the id gets librdmacm's context), else ADDR_ERROR. */
SRNIC_EXPORT int rdma_resolve_addr(struct rdma_cm_id *id, struct sockaddr *src_addr, struct sockaddr *dst_addr, int timeout_ms) {
  struct srnic_id *sid = (struct srnic_id *)id;
  struct ibv_context *ctx = srnic_cm_context();
  if (id == NULL || dst_addr == NULL || (dst_addr->sa_family != AF_INET && dst_addr->sa_family != AF_INET6)) {
    errno = EINVAL;
    return -1;
  }
  pthread_mutex_lock(&srnic_lock);
  if (sid->state != ID_IDLE && sid->state != ID_ADDR_RESOLVED && sid->state != ID_BOUND) {
    pthread_mutex_unlock(&srnic_lock);
    errno = EINVAL;
    return -1;
  }
  if (sid->state == ID_BOUND) { /* an active id bound first: its address stays, its port file goes */
    close(sid->bound_fd);
    sid->bound_fd = -1;
    unlink(sid->path);
    sid->path[0] = '\0';
    if (src_addr == NULL) src_addr = &sid->id.route.addr.src_addr;
  }
  sid->timeout_ms = timeout_ms;
  if (!reachable(dst_addr) || ctx == NULL) {
    queue_event(sid, RDMA_CM_EVENT_ADDR_ERROR, ctx == NULL ? -ENODEV : -EHOSTUNREACH, NULL, NULL, 0);
  } else {
    memcpy(&sid->id.route.addr.dst_storage, dst_addr, addr_len(dst_addr));
    if (src_addr != NULL && reachable(src_addr)) memmove(&sid->id.route.addr.src_storage, src_addr, addr_len(src_addr));
    else loopback_addr(&sid->id.route.addr.src_storage, dst_addr->sa_family, 0);
    sid->id.verbs = ctx;
    sid->state = ID_ADDR_RESOLVED;
    queue_event(sid, RDMA_CM_EVENT_ADDR_RESOLVED, 0, NULL, NULL, 0);
  }
  pthread_mutex_unlock(&srnic_lock);
  return 0;
}

SRNIC_EXPORT int rdma_resolve_route(struct rdma_cm_id *id, int timeout_ms) {
  struct srnic_id *sid = (struct srnic_id *)id;
  pthread_mutex_lock(&srnic_lock);
  if (sid->state != ID_ADDR_RESOLVED) {
    pthread_mutex_unlock(&srnic_lock);
    errno = EINVAL;
    return -1;
  }
  /* rdma_connect's answer is awaited for the longer of the two timeouts (an application that
   * gives the route what is left of the address's budget still gets its whole budget). */
  if (timeout_ms > sid->timeout_ms) sid->timeout_ms = timeout_ms;
  sid->state = ID_ROUTE_RESOLVED;
  queue_event(sid, RDMA_CM_EVENT_ROUTE_RESOLVED, 0, NULL, NULL, 0);
  pthread_mutex_unlock(&srnic_lock);
  return 0;
}

/* ---- queue pairs ---- */

SRNIC_EXPORT int rdma_create_qp(struct rdma_cm_id *id, struct ibv_pd *pd, struct ibv_qp_init_attr *attr) {
  struct srnic_id *sid = (struct srnic_id *)id;
  struct srnic_qp *q;
  if (id == NULL || pd == NULL || attr == NULL || id->verbs == NULL || pd->context != id->verbs || id->qp != NULL) {
    errno = EINVAL;
    return -1;
  }
  q = srnic_qp_new(pd, attr, 0);
  if (q == NULL) return -1;
  pthread_mutex_lock(&srnic_lock);
  q->sid = sid;
  q->sig_all = attr->sq_sig_all;
  q->rnr_retry = 7;
  id->qp = &q->qp;
  id->pd = pd;
  id->send_cq = attr->send_cq;
  id->recv_cq = attr->recv_cq;
  id->send_cq_channel = attr->send_cq->channel;
  id->recv_cq_channel = attr->recv_cq->channel;
  pthread_mutex_unlock(&srnic_lock);
  return 0;
}

/* Destroys the id's QP (srnic_qp_free detaches it from the id under srnic_lock). */
SRNIC_EXPORT void rdma_destroy_qp(struct rdma_cm_id *id) {
  if (id == NULL || id->qp == NULL) return;
  srnic_qp_free((struct srnic_qp *)id->qp);
}

/* The QP of `sid` goes to RTS with the RNR retry count of this side's connection parameters. */
static void qp_ready(struct srnic_id *sid) {
  struct srnic_qp *q = (struct srnic_qp *)sid->id.qp;
  if (q == NULL || q->state != QP_INIT) return;
  q->state = QP_RTS;
  q->qp.state = IBV_QPS_RTS;
  q->rnr_retry = sid->rnr_retry;
}

/* Fills a CM message. */
static void cm_msg(struct wire_cm *m, const struct srnic_id *sid, unsigned port, const void *data, size_t len) {
  memset(m, 0, sizeof(*m));
  m->qpn = sid->id.qp != NULL ? sid->id.qp->qp_num : 0;
  m->port = (uint16_t)port;
  m->rnr_retry = (uint8_t)sid->rnr_retry;
  m->pdlen = (uint8_t)len;
  if (len > 0) memcpy(m->pd, data, len);
}

/* Connects to the listener of the destination port: sends REQ; ESTABLISHED, REJECTED or
 * UNREACHABLE follows (REJECTED with status 8 at once when nothing listens there). */
SRNIC_EXPORT int rdma_connect(struct rdma_cm_id *id, struct rdma_conn_param *param) {
  struct srnic_id *sid = (struct srnic_id *)id;
  struct sockaddr_un a;
  struct wire_cm m;
  unsigned src_port;
  int fd, r, e = 0;
  pthread_mutex_lock(&srnic_lock);
  if (sid->state != ID_ROUTE_RESOLVED || id->qp == NULL || (param != NULL && param->private_data_len > SRNIC_MAX_PRIVATE) ||
      (param != NULL && param->private_data_len > 0 && param->private_data == NULL)) {
    pthread_mutex_unlock(&srnic_lock);
    errno = EINVAL;
    return -1;
  }
  if (port_addr(addr_port(&id->route.addr.dst_addr), &a) != 0 || (fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0) {
    e = errno;
    pthread_mutex_unlock(&srnic_lock);
    errno = e;
    return -1;
  }
  sid->rnr_retry = param == NULL || param->rnr_retry_count > 7 ? 7 : param->rnr_retry_count;
  /* A source port, as the CM allocates one, for the addresses each side sees. */
  src_port = 32768 + (unsigned)(((uintptr_t)sid >> 4) ^ (unsigned)getpid() * 7919u) % 28000;
  set_port(&id->route.addr.src_addr, src_port);
  sid->state = ID_CONNECTING;
  sid->deadline = srnic_now_ms() + (sid->timeout_ms > 0 ? sid->timeout_ms : DEFAULT_TIMEOUT_MS);
  r = connect(fd, (struct sockaddr *)&a, sizeof(a));
  if (r != 0) e = errno;
  if (r == 0 && (sid->link = nic_link_new(fd, KIND_LINK)) != NULL) {
    sid->link->id = sid;
    cm_msg(&m, sid, src_port, param != NULL ? param->private_data : NULL, param != NULL ? param->private_data_len : 0);
    nic_link_send(sid->link, PKT_CM_REQ, &m, sizeof(m), NULL, 0);
  } else if (r != 0 && (e == ENOENT || e == ECONNREFUSED)) { /* nothing listens on that port */
    close(fd);
    sid->state = ID_DONE;
    sid->deadline = 0;
    queue_event(sid, RDMA_CM_EVENT_REJECTED, REJECT_NO_LISTENER, NULL, NULL, 0);
  } else { /* the listener's backlog is full (EAGAIN), or no link: no answer, UNREACHABLE at the deadline */
    close(fd);
  }
  nic_wake(); /* the deadline */
  pthread_mutex_unlock(&srnic_lock);
  return 0;
}

/* Accepts a connect request: the QP is ready, ACCEPT goes out; ESTABLISHED follows its RTU. */
SRNIC_EXPORT int rdma_accept(struct rdma_cm_id *id, struct rdma_conn_param *param) {
  struct srnic_id *sid = (struct srnic_id *)id;
  struct wire_cm m;
  pthread_mutex_lock(&srnic_lock);
  if (sid->state != ID_REQUESTED || id->qp == NULL || sid->link == NULL || (param != NULL && param->private_data_len > SRNIC_MAX_PRIVATE) ||
      (param != NULL && param->private_data_len > 0 && param->private_data == NULL)) {
    pthread_mutex_unlock(&srnic_lock);
    errno = EINVAL;
    return -1;
  }
  sid->rnr_retry = param == NULL || param->rnr_retry_count > 7 ? 7 : param->rnr_retry_count;
  /* The responder takes requests from here on: the initiator sends only after ACCEPT. */
  qp_ready(sid);
  sid->state = ID_ACCEPTING;
  cm_msg(&m, sid, 0, param != NULL ? param->private_data : NULL, param != NULL ? param->private_data_len : 0);
  nic_link_send(sid->link, PKT_CM_ACCEPT, &m, sizeof(m), NULL, 0);
  pthread_mutex_unlock(&srnic_lock);
  return 0;
}

/* Refuses a connect request: the active side gets REJECTED, status 28, with this data. */
SRNIC_EXPORT int rdma_reject(struct rdma_cm_id *id, const void *private_data, uint8_t private_data_len) {
  struct srnic_id *sid = (struct srnic_id *)id;
  struct wire_cm m;
  pthread_mutex_lock(&srnic_lock);
  if (sid->state != ID_REQUESTED || private_data_len > SRNIC_MAX_PRIVATE || (private_data_len > 0 && private_data == NULL)) {
    pthread_mutex_unlock(&srnic_lock);
    errno = EINVAL;
    return -1;
  }
  sid->state = ID_DONE;
  cm_msg(&m, sid, REJECT_CONSUMER, private_data, private_data_len); /* a REJECT's port field is the reason */
  nic_link_send(sid->link, PKT_CM_REJECT, &m, sizeof(m), NULL, 0);
  nic_link_shut(sid->link);
  pthread_mutex_unlock(&srnic_lock);
  return 0;
}

/* The connection of `sid` ended (the peer disconnected or died): its QP goes to the error
 * state and the application hears DISCONNECTED, once. */
static void peer_gone(struct srnic_id *sid) {
  if (sid->id.qp != NULL) nic_qp_error((struct srnic_qp *)sid->id.qp);
  sid->state = ID_DISCONNECTED;
  nic_link_close(sid->link);
  queue_event(sid, RDMA_CM_EVENT_DISCONNECTED, 0, NULL, NULL, 0);
}

/* Disconnects: the QP goes to the error state, the peer hears DISCONNECT, this side gets
 * DISCONNECTED (once). Nothing happens on an id already disconnected. */
SRNIC_EXPORT int rdma_disconnect(struct rdma_cm_id *id) {
  struct srnic_id *sid = (struct srnic_id *)id;
  int rc = 0;
  pthread_mutex_lock(&srnic_lock);
  switch (sid->state) {
    case ID_CONNECTED:
    case ID_ACCEPTING:
      if (id->qp != NULL) nic_qp_error((struct srnic_qp *)id->qp);
      sid->state = ID_DISCONNECTED;
      nic_link_send(sid->link, PKT_CM_DISCONNECT, NULL, 0, NULL, 0);
      nic_link_shut(sid->link); /* closed when the peer closes its side */
      queue_event(sid, RDMA_CM_EVENT_DISCONNECTED, 0, NULL, NULL, 0);
      break;
    case ID_CONNECTING:
    case ID_REQUESTED: /* not connected yet: the attempt is abandoned, without an event */
      if (id->qp != NULL) nic_qp_error((struct srnic_qp *)id->qp);
      sid->state = ID_DONE;
      sid->deadline = 0;
      nic_link_close(sid->link);
      break;
    case ID_DISCONNECTED:
    case ID_DONE:
      break;
    default:
      rc = EINVAL;
  }
  pthread_mutex_unlock(&srnic_lock);
  if (rc != 0) errno = rc;
  return rc == 0 ? 0 : -1;
}

/* ---- the service thread's side ---- */

void cm_accept_ready(struct srnic_id *listener) {
  for (;;) {
    int fd = accept4(listener->listen->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    struct srnic_link *l;
    if (fd < 0) return; /* EAGAIN, or an error the next event will tell again */
    l = nic_link_new(fd, KIND_LINK);
    if (l == NULL) {
      close(fd);
      continue;
    }
    l->listener = listener;
    l->pending_next = pending_links;
    pending_links = l;
  }
}

/* Takes an accepted link off the list of those waiting for a REQ. */
static void unpend(struct srnic_link *l) {
  for (struct srnic_link **pp = &pending_links; *pp != NULL; pp = &(*pp)->pending_next) {
    if (*pp == l) {
      *pp = l->pending_next;
      break;
    }
  }
  l->listener = NULL;
}

/* A REQ on an accepted link: a new id and CONNECT_REQUEST on the listener's channel. */
static void on_request(struct srnic_link *l, const struct wire_cm *m) {
  struct srnic_id *listener = l->listener, *sid;
  unpend(l);
  if (listener->state != ID_LISTENING || (sid = calloc(1, sizeof(*sid))) == NULL) {
    nic_link_close(l);
    return;
  }
  sid->id.channel = listener->id.channel;
  sid->id.context = listener->id.context;
  sid->id.verbs = listener->id.verbs;
  sid->id.ps = listener->id.ps;
  sid->id.qp_type = IBV_QPT_RC;
  sid->id.port_num = 1;
  sid->chan = listener->chan;
  sid->bound_fd = -1;
  sid->rnr_retry = m->rnr_retry;
  sid->peer_qpn = m->qpn;
  /* Local: the listener's address (loopback for a wildcard) and port; remote: the peer's. */
  memcpy(&sid->id.route.addr.src_storage, &listener->id.route.addr.src_storage, sizeof(struct sockaddr_storage));
  if (!reachable(&sid->id.route.addr.src_addr) || (sid->id.route.addr.src_addr.sa_family == AF_INET && sid->id.route.addr.src_sin.sin_addr.s_addr == 0) ||
      (sid->id.route.addr.src_addr.sa_family == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&sid->id.route.addr.src_sin6.sin6_addr)))
    loopback_addr(&sid->id.route.addr.src_storage, sid->id.route.addr.src_addr.sa_family, addr_port(&listener->id.route.addr.src_addr));
  loopback_addr(&sid->id.route.addr.dst_storage, sid->id.route.addr.src_addr.sa_family, m->port);
  sid->state = ID_REQUESTED;
  sid->link = l;
  l->id = sid;
  sid->next = ids;
  if (ids != NULL) ids->prev = sid;
  ids = sid;
  queue_event(sid, RDMA_CM_EVENT_CONNECT_REQUEST, 0, listener, m->pd, m->pdlen);
}

/* A packet on a link (service thread): the CM messages here, the data path to nic.c. */
void cm_packet(struct srnic_link *l, uint32_t type, const uint8_t *body, size_t len) {
  struct srnic_id *sid = l->id;
  struct wire_cm m;
  if (type < PKT_SEND) {
    memset(&m, 0, sizeof(m));
    memcpy(&m, body, len < sizeof(m) ? len : sizeof(m));
    if (m.pdlen > SRNIC_MAX_PRIVATE) m.pdlen = SRNIC_MAX_PRIVATE;
  }
  if (sid == NULL) { /* accepted, waiting for its REQ; anything else ends it */
    if (l->listener != NULL && type == PKT_CM_REQ) on_request(l, &m);
    else {
      if (l->listener != NULL) unpend(l);
      nic_link_close(l);
    }
    return;
  }
  switch (type) {
    case PKT_CM_ACCEPT:
      if (sid->state != ID_CONNECTING) return;
      sid->deadline = 0;
      sid->peer_qpn = m.qpn;
      qp_ready(sid);
      sid->state = ID_CONNECTED;
      nic_link_send(l, PKT_CM_RTU, NULL, 0, NULL, 0);
      queue_event(sid, RDMA_CM_EVENT_ESTABLISHED, 0, NULL, m.pd, m.pdlen);
      return;
    case PKT_CM_REJECT:
      if (sid->state != ID_CONNECTING) return;
      sid->deadline = 0;
      sid->state = ID_DONE;
      nic_link_close(l);
      queue_event(sid, RDMA_CM_EVENT_REJECTED, m.port, NULL, m.pd, m.pdlen);
      return;
    case PKT_CM_RTU:
      if (sid->state != ID_ACCEPTING) return;
      sid->state = ID_CONNECTED;
      queue_event(sid, RDMA_CM_EVENT_ESTABLISHED, 0, NULL, NULL, 0);
      return;
    case PKT_CM_DISCONNECT:
      if (sid->state == ID_CONNECTED || sid->state == ID_ACCEPTING || sid->state == ID_REQUESTED) peer_gone(sid);
      return;
    case PKT_CM_REQ:
      return;
    default:
      if ((sid->state == ID_CONNECTED || sid->state == ID_ACCEPTING) && sid->id.qp != NULL) nic_data_packet((struct srnic_qp *)sid->id.qp, type, body, len);
  }
}

/* The link ended (EOF, reset, or a bad packet): what that means in the id's state. */
void cm_link_lost(struct srnic_link *l) {
  struct srnic_id *sid = l->id;
  if (sid == NULL) {
    if (l->listener != NULL) unpend(l);
  } else if (sid->state == ID_CONNECTING) { /* the listener went away without an answer */
    sid->deadline = 0;
    sid->state = ID_DONE;
    queue_event(sid, RDMA_CM_EVENT_UNREACHABLE, -ECONNRESET, NULL, NULL, 0);
  } else if (sid->state == ID_CONNECTED || sid->state == ID_ACCEPTING || sid->state == ID_REQUESTED) {
    peer_gone(sid);
  }
  nic_link_close(l);
}

/* Runs the due timers (connect deadlines, RNR retransmissions); the next deadline, 0 if none. */
int64_t cm_timers(int64_t now) {
  int64_t next = 0;
  for (struct srnic_id *sid = ids; sid != NULL; sid = sid->next) {
    struct srnic_qp *q = (struct srnic_qp *)sid->id.qp;
    if (sid->deadline != 0 && sid->state == ID_CONNECTING) {
      if (now >= sid->deadline) {
        sid->deadline = 0;
        sid->state = ID_DONE;
        nic_link_close(sid->link);
        queue_event(sid, RDMA_CM_EVENT_UNREACHABLE, -ETIMEDOUT, NULL, NULL, 0);
      } else if (next == 0 || sid->deadline < next) {
        next = sid->deadline;
      }
    }
    if (q != NULL && !q->loopback) {
      int64_t t = nic_qp_timer(q, now);
      if (t != 0 && (next == 0 || t < next)) next = t;
    }
  }
  return next;
}
