/*
 * The agent side of the TCP throughput benchmark: accepts connections one after another, reads the framed
 * payload of each (see the loop), then answers with the byte count it received ("<count>\n") and closes. The
 * sender waits for that answer, so the time it measures covers the last byte arriving, not just leaving.
 *
 *   tcp-sink <bind-ip> <port>     prints {"port":N} once listening; stops on SIGTERM.
 */
#include "common.h"

#include <netinet/tcp.h>
#include <poll.h>

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: tcp-sink <bind-ip> <port>\n");
    return 2;
  }
  install_stop_handlers();
  struct sockaddr_storage addr;
  socklen_t len = loopback_addr(argv[1], atoi(argv[2]), &addr);
  int lfd = socket(addr.ss_family, SOCK_STREAM, 0);
  if (lfd < 0) die("socket");
  int on = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  if (bind(lfd, (struct sockaddr *)&addr, len) < 0) die("bind");
  if (listen(lfd, 64) < 0) die("listen");
  printf("{\"port\":%d}\n", bound_port(lfd));
  fflush(stdout);
  static char buf[1 << 18];
  while (!stop_requested) {
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    if (poll(&p, 1, 200) <= 0) continue;
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) continue;
    /* Framing: an optional TLS record (the ClientHello, skipped), then an 8-byte big-endian payload length, then
     * the payload. The answer goes out once the payload is in, so no relay needs to pass on a half-close. */
    unsigned long long total = 0, skip = 0, want = 0, frame = 8;
    unsigned char head[13];
    size_t have = 0, head_len = 5;
    int framed = 0;
    for (;;) {
      ssize_t n = read(fd, buf, sizeof buf);
      if (n <= 0) {
        if (n < 0 && errno == EINTR && !stop_requested) continue;
        break;
      }
      total += (unsigned long long)n;
      size_t off = 0;
      while (!framed && off < (size_t)n) {
        if (skip > 0) {
          size_t k = (size_t)n - off < skip ? (size_t)n - off : (size_t)skip;
          skip -= k;
          off += k;
          continue;
        }
        head[have++] = (unsigned char)buf[off++];
        if (have == 5 && head_len == 5) {
          if (head[0] == 0x16) {
            skip = ((unsigned long long)head[3] << 8 | head[4]);
            frame += 5 + skip;
            have = 0;
            head_len = 8;
          } else {
            head_len = 8; /* no ClientHello: these 5 bytes start the length */
          }
        } else if (have == 8 && head_len == 8) {
          for (int i = 0; i < 8; i++) want = want << 8 | head[i];
          framed = 1;
        }
      }
      if (framed && total >= frame + want) break;
    }
    char line[32];
    int m = snprintf(line, sizeof line, "%llu\n", total);
    if (write(fd, line, (size_t)m) < 0) { /* the sender went away: nothing to tell */
    }
    close(fd);
  }
  close(lfd);
  return 0;
}
