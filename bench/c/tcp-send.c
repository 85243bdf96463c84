/*
 * The client side of the TCP throughput benchmark: connects, writes a TLS ClientHello (given in hex: the SG
 * reads it to pick the admission, the other relays pass it on as plain bytes), an 8-byte big-endian length,
 * then `bytes` of payload in 128 KiB writes, and waits for the sink's count. Prints one JSON line: bytes,
 * seconds (first write to the sink's answer) and whether the sink counted exactly what was sent (hello + length
 * + payload). The sink answers once the payload is in, so no relay has to pass on a half-close.
 *
 *   tcp-send <ip> <port> <bytes> [hello-hex]
 */
#include "common.h"

#include <netinet/tcp.h>

#define CHUNK (128 * 1024)

static size_t unhex(const char *hex, unsigned char *out, size_t cap) {
  size_t n = strlen(hex) / 2;
  if (n > cap) n = cap;
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
      fprintf(stderr, "bad hex at %zu\n", 2 * i);
      exit(2);
    }
    out[i] = (unsigned char)v;
  }
  return n;
}

static void write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    c += w;
    n -= (size_t)w;
  }
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: tcp-send <ip> <port> <bytes> [hello-hex]\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  struct sockaddr_storage addr;
  socklen_t len = loopback_addr(argv[1], atoi(argv[2]), &addr);
  unsigned long long want = strtoull(argv[3], NULL, 10);
  static unsigned char hello[16384];
  size_t hello_len = argc > 4 ? unhex(argv[4], hello, sizeof hello) : 0;
  static unsigned char chunk[CHUNK];
  /* Incompressible-looking bytes (xorshift), in case anything on the path ever inspects them. */
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < CHUNK; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    chunk[i] = (unsigned char)x;
  }
  int fd = socket(addr.ss_family, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  uint64_t t0 = now_mono_ns();
  if (connect(fd, (struct sockaddr *)&addr, len) < 0) die("connect");
  if (hello_len) write_all(fd, hello, hello_len);
  unsigned char len_be[8];
  for (int i = 0; i < 8; i++) len_be[i] = (unsigned char)(want >> (56 - 8 * i));
  write_all(fd, len_be, 8);
  unsigned long long left = want;
  while (left > 0) {
    size_t n = left < CHUNK ? (size_t)left : CHUNK;
    write_all(fd, chunk, n);
    left -= n;
  }
  uint64_t t_written = now_mono_ns();
  char line[64] = {0};
  size_t got = 0;
  for (;;) {
    ssize_t n = read(fd, line + got, sizeof line - 1 - got);
    if (n > 0) {
      got += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;
  }
  uint64_t t1 = now_mono_ns();
  unsigned long long counted = strtoull(line, NULL, 10);
  int ok = got > 0 && counted == want + hello_len + 8;
  printf("{\"bytes\":%llu,\"helloBytes\":%zu,\"seconds\":%.6f,\"writeSeconds\":%.6f,\"sinkCounted\":%llu,\"ok\":%s}\n",
         want, hello_len, (double)(t1 - t0) / 1e9, (double)(t_written - t0) / 1e9, counted, ok ? "true" : "false");
  close(fd);
  return ok ? 0 : 1;
}
