/**
 * sd_notify(3) without libsystemd: each message is one datagram on the unix socket named by `NOTIFY_SOCKET`
 * (a path, or an abstract name when it starts with "@"). Bun has no unix datagram sockets, so the three libc calls
 * (socket, sendto, close) go through bun:ffi; the datagram then comes from this very process, which is what
 * `NotifyAccess=main` requires (a `systemd-notify` child would be a different pid and ignored).
 *
 * Without `NOTIFY_SOCKET` (a terminal, a test, a container) every call is a no-op returning false. Nothing here
 * throws or logs: callers get a boolean and decide.
 */
import { dlopen, FFIType } from "bun:ffi";

export interface Notifier {
  /** True when `NOTIFY_SOCKET` names a usable socket and libc was loaded. */
  readonly enabled: boolean;
  /**
   * How often to call `watchdog()`: half of `WATCHDOG_USEC`, when systemd asked this process for keep-alives
   * (`WATCHDOG_PID` unset or ours); undefined otherwise.
   */
  readonly watchdogIntervalMs: number | undefined;
  /** Start-up finished (listeners bound) or a reload finished. */
  ready(status?: string): boolean;
  /** A reload began; systemd expects READY=1 when it is done. Carries MONOTONIC_USEC as systemd ≥ 253 requires. */
  reloading(status?: string): boolean;
  /** Shutdown (drain) began. */
  stopping(status?: string): boolean;
  /** Keep-alive: without one every WatchdogSec, systemd restarts the service. */
  watchdog(): boolean;
  /** Free-form status shown by `systemctl status`. */
  status(text: string): boolean;
  /** A failure to report (e.g. a refused reload): STATUS=text, and ERRNO= when given. */
  error(text: string, errno?: number): boolean;
}

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
/** Linux's SOCK_CLOEXEC (x86-64 and arm64 alike): children never inherit the socket. */
const SOCK_CLOEXEC = 0o2000000;
const MSG_NOSIGNAL = 0x4000;
const CLOCK_MONOTONIC = 1;
/** sizeof(struct sockaddr_un.sun_path) on Linux. */
const SUN_PATH_MAX = 108;

type Libc = ReturnType<typeof openLibc>;

function openLibc(path: string) {
  return dlopen(path, {
    socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    sendto: {
      args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.ptr, FFIType.u32],
      returns: FFIType.i64_fast,
    },
    close: { args: [FFIType.i32], returns: FFIType.i32 },
    clock_gettime: { args: [FFIType.i32, FFIType.ptr], returns: FFIType.i32 },
  }).symbols;
}

function loadLibc(): Libc | undefined {
  if (process.platform !== "linux") return undefined;
  // glibc's soname first; "libc.so" is musl's (on glibc it is a linker script and dlopen refuses it).
  for (const name of ["libc.so.6", "libc.so"]) {
    try {
      return openLibc(name);
    } catch {
      // try the next name
    }
  }
  return undefined;
}

/** struct sockaddr_un for a path ("/run/…") or an abstract name ("@…"), and the length to pass to sendto. */
function socketAddress(notifySocket: string): { addr: Uint8Array; len: number } | undefined {
  const abstract = notifySocket.startsWith("@");
  if (!abstract && !notifySocket.startsWith("/")) return undefined; // e.g. "vsock:…" (systemd ≥ 253): unsupported
  const name = new TextEncoder().encode(notifySocket);
  // A path needs its terminating NUL inside sun_path; an abstract name is exactly its bytes after a leading NUL.
  if (name.length > (abstract ? SUN_PATH_MAX : SUN_PATH_MAX - 1) || name.length < 2) return undefined;
  const addr = new Uint8Array(2 + SUN_PATH_MAX);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  addr.set(name, 2);
  if (abstract) addr[2] = 0;
  return { addr, len: 2 + name.length + (abstract ? 0 : 1) };
}

/**
 * One line per assignment: a newline inside a value would smuggle in another assignment (say READY=1), and a NUL
 * would end the message early.
 */
function clean(text: string): string {
  return text.replace(/[\r\n\0]+/g, " ");
}

/**
 * Builds the notifier from the environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
 *
 * @example
 * const sd = createNotifier();
 * // … listeners bound …
 * sd.ready("serving 443 and 4172");
 * if (sd.watchdogIntervalMs) setInterval(() => sd.watchdog(), sd.watchdogIntervalMs).unref();
 */
export function createNotifier(
  env: Record<string, string | undefined> = process.env,
  pid: number = process.pid,
): Notifier {
  const target = env.NOTIFY_SOCKET ? socketAddress(env.NOTIFY_SOCKET) : undefined;
  const libc = target ? loadLibc() : undefined;
  const enabled = target !== undefined && libc !== undefined;

  const usec = Number(env.WATCHDOG_USEC);
  const forUs = env.WATCHDOG_PID === undefined || env.WATCHDOG_PID === "" || Number(env.WATCHDOG_PID) === pid;
  const watchdogIntervalMs =
    Number.isSafeInteger(usec) && usec > 0 && forUs ? Math.max(1, Math.floor(usec / 2000)) : undefined;

  function send(lines: readonly string[]): boolean {
    if (!libc || !target) return false;
    let fd = -1;
    try {
      fd = libc.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      if (fd < 0) return false;
      const msg = new TextEncoder().encode(lines.join("\n"));
      const sent = libc.sendto(fd, msg, msg.length, MSG_NOSIGNAL, target.addr, target.len);
      return Number(sent) === msg.length;
    } catch {
      return false; // the contract: never throw into the caller's start-up or shutdown path
    } finally {
      if (fd >= 0) libc.close(fd);
    }
  }

  /** CLOCK_MONOTONIC in µs: systemd compares it with its own clock (Bun's hrtime counts from process start). */
  function monotonicUsec(): bigint | undefined {
    if (!libc) return undefined;
    const ts = new BigInt64Array(2); // struct timespec { time_t tv_sec; long tv_nsec; } on 64-bit Linux
    if (libc.clock_gettime(CLOCK_MONOTONIC, ts) !== 0) return undefined;
    return ts[0]! * 1_000_000n + ts[1]! / 1_000n;
  }

  const withStatus = (line: string, status?: string) =>
    status === undefined ? [line] : [line, `STATUS=${clean(status)}`];

  return {
    enabled,
    watchdogIntervalMs,
    ready: (status) => send(withStatus("READY=1", status)),
    reloading(status) {
      const now = monotonicUsec();
      return send([
        ...withStatus("RELOADING=1", status),
        ...(now === undefined ? [] : [`MONOTONIC_USEC=${now}`]),
      ]);
    },
    stopping: (status) => send(withStatus("STOPPING=1", status)),
    watchdog: () => send(["WATCHDOG=1"]),
    status: (text) => send([`STATUS=${clean(text)}`]),
    error: (text, errno) =>
      send([
        `STATUS=${clean(text)}`,
        ...(errno !== undefined && Number.isInteger(errno) ? [`ERRNO=${errno}`] : []),
      ]),
  };
}
