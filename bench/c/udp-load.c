/*
 * The client side of the UDP benchmarks: many sockets, each its own source port (one flow, hence one SG session,
 * per socket), every datagram carrying its send time; replies are timed by the kernel (SO_TIMESTAMPNS), so the
 * round trip measured does not include this program's own scheduling.
 *
 *   udp-load mode=open   target=IP:PORT flows=500 mbps=365 size=1200 seconds=5 [warmup-ms=1000 drain-ms=400]
 *            [src-ips=N: flow i sends from 127.1.0.(1 + i % N), as many clients would; src-base=A.B.C.0 moves
 *             that base, e.g. 198.18.1.0 in the three-namespace bench]
 *            [src-port=P: flow i sends from port P + i (with src-ips), so a later run is the same flows: sessions
 *             an SG bound in an earlier run stay bound, as a real SG's long-lived sessions are]
 *     Paced: `mbps` of datagrams offered toward the target, round-robin over the flows; the target (an echo, or
 *     the SG in front of one) sends each back, so the same load also flows the other way. Prints loss and the
 *     round-trip distribution.
 *   udp-load mode=closed target=IP:PORT flows=1 window=64 size=1200 seconds=5
 *     Closed loop: `window` datagrams in flight; each reply sends the next. Prints round trips per second. A
 *     window silent for 100 ms is declared lost and sent afresh (replies of the old window are ignored).
 *
 * Output: one JSON line. Warm-up datagrams (epoch 0) let the SG bind every flow before anything is counted.
 */
#include "common.h"

#include <sys/epoll.h>

#define MAGIC 0x50434f49u /* "PCOI" */
#define RX_BATCH 32
#define MAX_SIZE 9000

typedef struct {
  uint32_t magic;
  uint32_t epoch;
  uint64_t seq;
  uint64_t sent_ns;
  uint32_t flow;
} __attribute__((packed)) payload_t;

typedef struct {
  const char *mode;
  struct sockaddr_storage target;
  socklen_t target_len;
  int flows;
  double mbps;
  int size;
  double seconds;
  int window;
  int warmup_ms;
  int src_ips; /* 0: the kernel picks the source (127.0.0.1); N: flows spread over 127.1.0.1..N */
  int src_port; /* 0: the kernel picks each flow's port; P: flow i binds P + i (with src-ips) */
  uint32_t src_base; /* host order; default 127.1.0.0 (src-base=198.18.1.0 inside the bench's namespaces) */
  int drain_ms;
} config_t;

static int *fds;
static uint64_t *flow_rx; /* measured replies per flow */
static hist_t hist;
static uint32_t epoch = 0;
static uint64_t received = 0, late = 0, foreign = 0, warm_rx = 0;
static uint64_t send_errors = 0, send_blocked = 0;
static uint64_t *warm_flow_rx;
static char tx_buf[MAX_SIZE];

static void parse_target(const char *s, config_t *c) {
  char host[128];
  const char *colon = strrchr(s, ':');
  if (!colon) {
    fprintf(stderr, "target must be IP:PORT\n");
    exit(2);
  }
  size_t n = (size_t)(colon - s);
  if (s[0] == '[') {
    s++;
    n -= 2;
  }
  if (n >= sizeof host) exit(2);
  memcpy(host, s, n);
  host[n] = 0;
  c->target_len = loopback_addr(host, atoi(colon + 1), &c->target);
}

static void parse_args(int argc, char **argv, config_t *c) {
  memset(c, 0, sizeof *c);
  c->src_base = (127u << 24) | (1u << 16);
  c->mode = "open";
  c->flows = 1;
  c->size = 1200;
  c->seconds = 5;
  c->window = 64;
  c->warmup_ms = 1000;
  c->drain_ms = 400;
  int have_target = 0;
  for (int i = 1; i < argc; i++) {
    char *eq = strchr(argv[i], '=');
    if (!eq) {
      fprintf(stderr, "argument %s: expected key=value\n", argv[i]);
      exit(2);
    }
    *eq = 0;
    const char *k = argv[i], *v = eq + 1;
    if (!strcmp(k, "mode")) c->mode = v;
    else if (!strcmp(k, "target")) parse_target(v, c), have_target = 1;
    else if (!strcmp(k, "flows")) c->flows = atoi(v);
    else if (!strcmp(k, "mbps")) c->mbps = atof(v);
    else if (!strcmp(k, "size")) c->size = atoi(v);
    else if (!strcmp(k, "seconds")) c->seconds = atof(v);
    else if (!strcmp(k, "window")) c->window = atoi(v);
    else if (!strcmp(k, "warmup-ms")) c->warmup_ms = atoi(v);
    else if (!strcmp(k, "drain-ms")) c->drain_ms = atoi(v);
    else if (!strcmp(k, "src-ips")) c->src_ips = atoi(v);
    else if (!strcmp(k, "src-port")) c->src_port = atoi(v);
    else if (!strcmp(k, "src-base")) {
      struct sockaddr_storage b;
      loopback_addr(v, 0, &b); /* the same address rule as the target */
      c->src_base = ntohl(((struct sockaddr_in *)&b)->sin_addr.s_addr);
    }
    else {
      fprintf(stderr, "unknown argument %s\n", k);
      exit(2);
    }
  }
  if (!have_target || c->flows < 1 || c->size < (int)sizeof(payload_t) || c->size > MAX_SIZE) {
    fprintf(stderr, "need target=IP:PORT, flows>=1, %d<=size<=%d\n", (int)sizeof(payload_t), MAX_SIZE);
    exit(2);
  }
}

static int open_flows(const config_t *c) {
  int ep = epoll_create1(0);
  if (ep < 0) die("epoll_create1");
  fds = calloc((size_t)c->flows, sizeof(int));
  flow_rx = calloc((size_t)c->flows, sizeof(uint64_t));
  warm_flow_rx = calloc((size_t)c->flows, sizeof(uint64_t));
  for (int i = 0; i < c->flows; i++) {
    int fd = socket(c->target.ss_family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket (raise ulimit -n for many flows)");
    set_buffers(fd, 1 << 20);
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
    if (c->src_ips > 0 && c->target.ss_family == AF_INET) {
      /* Flow i comes from 127.1.0.(1 + i % src_ips): many clients, as an SG sees them, not all one IP. */
      struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(c->src_port ? c->src_port + i : 0))};
      src.sin_addr.s_addr = htonl(c->src_base + (uint32_t)(1 + i % c->src_ips));
      if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) die("bind src-ips");
    }
    if (connect(fd, (struct sockaddr *)&c->target, c->target_len) < 0) die("connect");
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    fds[i] = fd;
  }
  return ep;
}

static int send_one(const config_t *c, int flow, uint64_t seq) {
  payload_t *p = (payload_t *)tx_buf;
  p->magic = MAGIC;
  p->epoch = epoch;
  p->seq = seq;
  p->flow = (uint32_t)flow;
  p->sent_ns = now_real_ns();
  ssize_t n = send(fds[flow], tx_buf, (size_t)c->size, MSG_DONTWAIT);
  if (n == c->size) return 1;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) send_blocked++;
  else send_errors++; /* ECONNREFUSED: an ICMP unreachable for an earlier datagram */
  return 0;
}

/* Called for each reply of the current epoch (closed loop sends the next one from here). */
typedef void (*on_reply_fn)(const config_t *c, int flow);

/* Reads everything waiting on one flow's socket. */
static void drain_socket(const config_t *c, int flow, on_reply_fn on_reply) {
  static char bufs[RX_BATCH][MAX_SIZE];
  static char ctrl[RX_BATCH][CMSG_SPACE(sizeof(struct timespec)) + 64];
  struct mmsghdr msgs[RX_BATCH];
  struct iovec iovs[RX_BATCH];
  for (;;) {
    for (int i = 0; i < RX_BATCH; i++) {
      iovs[i].iov_base = bufs[i];
      iovs[i].iov_len = MAX_SIZE;
      memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
      msgs[i].msg_hdr.msg_iov = &iovs[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_hdr.msg_control = ctrl[i];
      msgs[i].msg_hdr.msg_controllen = sizeof ctrl[i];
    }
    int n = recvmmsg(fds[flow], msgs, RX_BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0) {
      if (n < 0 && errno == ECONNREFUSED) continue; /* a pending ICMP error, reported once */
      return;
    }
    uint64_t fallback = 0;
    for (int i = 0; i < n; i++) {
      const payload_t *p = (const payload_t *)bufs[i];
      if (msgs[i].msg_len < sizeof(payload_t) || p->magic != MAGIC) {
        foreign++;
        continue;
      }
      uint64_t rx_ns = 0;
      for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr); cm; cm = CMSG_NXTHDR(&msgs[i].msg_hdr, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
          struct timespec ts;
          memcpy(&ts, CMSG_DATA(cm), sizeof ts);
          rx_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        }
      }
      if (rx_ns == 0) rx_ns = fallback ? fallback : (fallback = now_real_ns());
      if (p->epoch == 0) {
        warm_rx++;
        if (p->flow < (uint32_t)c->flows) warm_flow_rx[p->flow]++;
        continue;
      }
      if (p->epoch != epoch) {
        late++;
        continue;
      }
      received++;
      if (p->flow < (uint32_t)c->flows) flow_rx[p->flow]++;
      hist_add_ns(&hist, (int64_t)(rx_ns - p->sent_ns));
      if (on_reply) on_reply(c, (int)p->flow);
    }
  }
}

static int poll_once(int ep, const config_t *c, int timeout_ms, on_reply_fn on_reply) {
  struct epoll_event evs[256];
  int n = epoll_wait(ep, evs, 256, timeout_ms);
  if (n < 0 && errno != EINTR) die("epoll_wait");
  for (int i = 0; i < n; i++) drain_socket(c, (int)evs[i].data.u32, on_reply);
  return n < 0 ? 0 : n;
}

/* Warm-up: a few datagrams per flow, so the SG binds every flow and opens every session socket first. */
static int warm_up(int ep, const config_t *c) {
  epoch = 0;
  int rounds = 3;
  for (int r = 0; r < rounds; r++) {
    for (int f = 0; f < c->flows; f++) send_one(c, f, 0);
    uint64_t until = now_mono_ns() + (uint64_t)c->warmup_ms * 1000000ull / (uint64_t)rounds;
    while (now_mono_ns() < until) poll_once(ep, c, 5, NULL);
  }
  int alive = 0;
  for (int f = 0; f < c->flows; f++) alive += warm_flow_rx[f] > 0;
  return alive;
}

static void print_common(const config_t *c, int alive, double elapsed, uint64_t sent) {
  int silent = 0;
  for (int f = 0; f < c->flows; f++) silent += flow_rx[f] == 0;
  printf("\"flows\":%d,\"warmFlowsAnswered\":%d,\"flowsSilent\":%d,\"size\":%d,\"seconds\":%.4f,"
         "\"sent\":%llu,\"received\":%llu,\"late\":%llu,\"foreign\":%llu,\"sendErrors\":%llu,\"sendBlocked\":%llu,"
         "\"p50Us\":%.0f,\"p90Us\":%.0f,\"p99Us\":%.0f,\"p999Us\":%.0f,\"maxUs\":%llu,\"meanUs\":%.1f",
         c->flows, alive, silent, c->size, elapsed, (unsigned long long)sent, (unsigned long long)received,
         (unsigned long long)late, (unsigned long long)foreign, (unsigned long long)send_errors,
         (unsigned long long)send_blocked, hist_quantile(&hist, 0.50), hist_quantile(&hist, 0.90),
         hist_quantile(&hist, 0.99), hist_quantile(&hist, 0.999), (unsigned long long)hist.max_us,
         hist.count ? hist.sum_us / (double)hist.count : 0.0);
}

static int run_open(int ep, const config_t *c) {
  int alive = warm_up(ep, c);
  epoch = 1;
  double pps = c->mbps * 1e6 / ((double)c->size * 8.0);
  uint64_t total = (uint64_t)(pps * c->seconds);
  uint64_t sent = 0, attempts = 0;
  uint64_t start = now_mono_ns();
  uint64_t max_behind = 0;
  while (attempts < total && !stop_requested) {
    double elapsed_s = (double)(now_mono_ns() - start) / 1e9;
    uint64_t due = (uint64_t)(elapsed_s * pps);
    if (due > total) due = total;
    if (due > attempts && due - attempts > max_behind) max_behind = due - attempts;
    /* Send what is due, but read replies in between so this program's own buffers never overflow. */
    int burst = 0;
    while (attempts < due && burst < 512) {
      sent += (uint64_t)send_one(c, (int)(attempts % (uint64_t)c->flows), attempts);
      attempts++;
      burst++;
    }
    poll_once(ep, c, attempts < due ? 0 : 1, NULL);
  }
  double send_seconds = (double)(now_mono_ns() - start) / 1e9;
  uint64_t drain_until = now_mono_ns() + (uint64_t)c->drain_ms * 1000000ull;
  while (received + late < sent && now_mono_ns() < drain_until && !stop_requested) poll_once(ep, c, 5, NULL);
  printf("{\"mode\":\"open\",");
  print_common(c, alive, send_seconds, sent);
  double lost = sent > received ? (double)(sent - received) : 0.0;
  printf(",\"offeredMbps\":%.1f,\"achievedMbps\":%.1f,\"lossPct\":%.4f,\"maxBehind\":%llu}\n", c->mbps,
         (double)sent * (double)c->size * 8.0 / send_seconds / 1e6, sent ? 100.0 * lost / (double)sent : 100.0,
         (unsigned long long)max_behind);
  return 0;
}

/* Closed loop state. */
static uint64_t cl_seq = 0, cl_sent_in_epoch = 0, cl_rx_in_epoch = 0, cl_sent = 0;
static int cl_sending = 1;

static void closed_on_reply(const config_t *c, int flow) {
  cl_rx_in_epoch++;
  if (!cl_sending) return;
  if (send_one(c, flow, cl_seq++)) {
    cl_sent_in_epoch++;
    cl_sent++;
  }
}

static void closed_fill_window(const config_t *c) {
  for (int i = 0; i < c->window; i++) {
    if (send_one(c, i % c->flows, cl_seq++)) {
      cl_sent_in_epoch++;
      cl_sent++;
    }
  }
}

static int run_closed(int ep, const config_t *c) {
  int alive = warm_up(ep, c);
  epoch = 1;
  uint64_t lost = 0, lost_windows = 0;
  uint64_t start = now_mono_ns();
  uint64_t end = start + (uint64_t)(c->seconds * 1e9);
  uint64_t last_rx = start;
  closed_fill_window(c);
  while (!stop_requested) {
    uint64_t t = now_mono_ns();
    if (t >= end) break;
    uint64_t before = received;
    poll_once(ep, c, 20, closed_on_reply);
    t = now_mono_ns();
    if (received != before) {
      last_rx = t;
    } else if (t - last_rx > 100000000ull) {
      /* The window went silent: whatever was in flight is lost; start a new window (a new epoch). */
      lost += cl_sent_in_epoch - cl_rx_in_epoch;
      lost_windows++;
      epoch++;
      cl_sent_in_epoch = cl_rx_in_epoch = 0;
      closed_fill_window(c);
      last_rx = t;
    }
  }
  double elapsed = (double)(now_mono_ns() - start) / 1e9;
  cl_sending = 0;
  printf("{\"mode\":\"closed\",\"window\":%d,", c->window);
  print_common(c, alive, elapsed, cl_sent);
  printf(",\"roundTripsPerSec\":%.1f,\"lost\":%llu,\"lostWindows\":%llu}\n", (double)received / elapsed,
         (unsigned long long)lost, (unsigned long long)lost_windows);
  return 0;
}

int main(int argc, char **argv) {
  config_t c;
  parse_args(argc, argv, &c);
  install_stop_handlers();
  hist_init(&hist);
  memset(tx_buf, 0x5a, sizeof tx_buf);
  int ep = open_flows(&c);
  int rc = !strcmp(c.mode, "closed") ? run_closed(ep, &c) : run_open(ep, &c);
  fflush(stdout);
  return rc;
}
