/*
 * The agent side of the UDP benchmarks: every datagram goes straight back to its source, unchanged (the
 * timestamp the client wrote rides along, so the client measures the round trip). Batched with recvmmsg and
 * sendmmsg so the echo costs a few syscalls per 64 datagrams and never becomes the bottleneck it measures.
 *
 *   udp-echo <bind-ip> <port>     prints {"port":N} once bound; on SIGTERM prints its counters and exits.
 */
#include "common.h"

#define BATCH 64
#define MAXDGRAM 65536

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: udp-echo <bind-ip> <port>\n");
    return 2;
  }
  install_stop_handlers();
  struct sockaddr_storage bind_addr;
  socklen_t bind_len = loopback_addr(argv[1], atoi(argv[2]), &bind_addr);
  int fd = socket(bind_addr.ss_family, SOCK_DGRAM, 0);
  if (fd < 0) die("socket");
  set_buffers(fd, 32 << 20);
  if (bind(fd, (struct sockaddr *)&bind_addr, bind_len) < 0) die("bind");
  /* Wake up now and then to see the stop flag even when no signal interrupts the wait. */
  struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  printf("{\"port\":%d}\n", bound_port(fd));
  fflush(stdout);

  static char bufs[BATCH][MAXDGRAM];
  struct mmsghdr msgs[BATCH];
  struct iovec iovs[BATCH];
  struct sockaddr_storage addrs[BATCH];
  uint64_t received = 0, sent = 0, send_errors = 0, bytes = 0;

  while (!stop_requested) {
    for (int i = 0; i < BATCH; i++) {
      iovs[i].iov_base = bufs[i];
      iovs[i].iov_len = MAXDGRAM;
      memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
      msgs[i].msg_hdr.msg_iov = &iovs[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_hdr.msg_name = &addrs[i];
      msgs[i].msg_hdr.msg_namelen = sizeof addrs[i];
    }
    int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      die("recvmmsg");
    }
    received += (uint64_t)n;
    for (int i = 0; i < n; i++) {
      iovs[i].iov_len = msgs[i].msg_len;
      bytes += msgs[i].msg_len;
    }
    int done = 0;
    while (done < n) {
      int m = sendmmsg(fd, msgs + done, (unsigned)(n - done), 0);
      if (m < 0) {
        if (errno == EINTR) continue;
        /* A source that went away (ICMP unreachable reported on this socket): skip that one datagram. */
        send_errors++;
        done++;
        continue;
      }
      sent += (uint64_t)m;
      done += m;
    }
  }
  printf("{\"received\":%llu,\"sent\":%llu,\"sendErrors\":%llu,\"bytes\":%llu}\n", (unsigned long long)received,
         (unsigned long long)sent, (unsigned long long)send_errors, (unsigned long long)bytes);
  fflush(stdout);
  return 0;
}
