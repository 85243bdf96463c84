/*
 * Shared bits of the benchmark load generators: address parsing (loopback only), clocks, a latency histogram,
 * and the stop flag set by SIGTERM/SIGINT. Header-only so each tool is one gcc call.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Every tool uses a different subset of these helpers. */
#define HELPER static __attribute__((unused))

static volatile sig_atomic_t stop_requested = 0;
HELPER void on_stop_signal(int sig) {
  (void)sig;
  stop_requested = 1;
}

/* No SA_RESTART: a blocking recv returns EINTR, so the loops see the flag at once. */
HELPER void install_stop_handlers(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
}

HELPER void die(const char *what) {
  fprintf(stderr, "%s: %s\n", what, strerror(errno));
  exit(1);
}

/*
 * The benchmarks talk over loopback only (the house rule): anything but 127.0.0.0/8 or ::1 is refused here, so a
 * mistyped argument can never send load off the machine. The one exception is 198.18.0.0/15 (RFC 2544's benchmark
 * range), which the three-namespace bench (bench/sg-udp-netns.ts) uses only inside namespaces it creates.
 */
HELPER socklen_t loopback_addr(const char *host, int port, struct sockaddr_storage *out) {
  memset(out, 0, sizeof *out);
  struct sockaddr_in *v4 = (struct sockaddr_in *)out;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
  if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
    uint32_t a = ntohl(v4->sin_addr.s_addr);
    if ((a >> 24) != 127 && (a >> 17) != (198u << 7 | 18u >> 1)) {
      fprintf(stderr, "refusing non-loopback address %s\n", host);
      exit(2);
    }
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)port);
    return sizeof *v4;
  }
  if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
    if (!IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr)) {
      fprintf(stderr, "refusing non-loopback address %s\n", host);
      exit(2);
    }
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    return sizeof *v6;
  }
  fprintf(stderr, "not an IP address: %s\n", host);
  exit(2);
}

HELPER int bound_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) die("getsockname");
  if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* CLOCK_REALTIME on purpose: SO_TIMESTAMPNS stamps received datagrams with it, and sender and receiver share
 * one machine, so one clock serves both ends. */
HELPER inline uint64_t now_real_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

HELPER inline uint64_t now_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Latency histogram: 1 µs buckets up to 200 ms, then one overflow bucket. */
#define HIST_BUCKETS 200000
typedef struct {
  uint32_t *bucket;
  uint64_t count;
  uint64_t overflow;
  uint64_t max_us;
  double sum_us;
} hist_t;

HELPER void hist_init(hist_t *h) {
  memset(h, 0, sizeof *h);
  h->bucket = calloc(HIST_BUCKETS, sizeof(uint32_t));
  if (!h->bucket) die("calloc");
}

HELPER inline void hist_add_ns(hist_t *h, int64_t ns) {
  uint64_t us = ns < 0 ? 0 : (uint64_t)ns / 1000;
  h->count++;
  h->sum_us += (double)us;
  if (us > h->max_us) h->max_us = us;
  if (us < HIST_BUCKETS) h->bucket[us]++;
  else h->overflow++;
}

/* The value (µs) at quantile q; the overflow bucket reports the maximum seen. */
HELPER double hist_quantile(const hist_t *h, double q) {
  if (h->count == 0) return 0;
  uint64_t want = (uint64_t)(q * (double)h->count);
  if (want >= h->count) want = h->count - 1;
  uint64_t seen = 0;
  for (uint64_t i = 0; i < HIST_BUCKETS; i++) {
    seen += h->bucket[i];
    if (seen > want) return (double)i;
  }
  return (double)h->max_us;
}

HELPER void set_buffers(int fd, int bytes) {
  /* FORCE variants pass rmem_max/wmem_max when root; the plain ones are the fallback for a user. */
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) < 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof bytes) < 0)
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
}

#endif
