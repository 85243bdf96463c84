/**
 * CM-like login load for the "does the SG need a Worker" question: each login is one TLS connection to the
 * CM-like front door in the SG process (bench/lib/sg-server.ts `cm-start`: our HTTP/1.1 server, TLS with an
 * RSA-3072 certificate like the appliance's self-signed one) carrying four XML POSTs, the server parsing each
 * document and building a resource list — a handshake and four XML round trips, as a real client's hello,
 * authenticate, get-resource-list and allocate-resource. The client side runs in the bench process, so only the
 * server's share lands on the SG's event loop.
 */
import type { Socket } from "bun";
import { HELLO_DOCUMENT } from "./logins.ts";
import { LOOPBACK } from "./net.ts";

const REQUEST = new TextEncoder().encode(
  "POST /pcoip-broker/xml HTTP/1.1\r\nHost: cm.bench.test\r\nContent-Type: text/xml; charset=UTF-8\r\n" +
    `Content-Length: ${Buffer.byteLength(HELLO_DOCUMENT)}\r\n\r\n${HELLO_DOCUMENT}`,
);
const REQUESTS_PER_LOGIN = 4;

export interface LoginLoadResult {
  readonly logins: number;
  readonly failures: number;
  readonly perSecond: number;
  readonly meanMs: number;
}

export interface LoginLoad {
  stop(): Promise<LoginLoadResult>;
}

interface Login {
  readonly startedAt: number;
  answered: number;
  text: string;
}

/**
 * Starts `perSecond` logins a second against the CM-like front door on 127.0.0.1:port (paced every 5 ms, at most
 * `maxInFlight` at once so a stalled server shows up as a lower rate, not as a pile of sockets).
 * @example const load = startLoginLoad({ port, ca, perSecond: 200 }); …; const r = await load.stop();
 */
export function startLoginLoad(o: {
  port: number;
  ca: string;
  serverName: string;
  perSecond: number;
  maxInFlight?: number;
}): LoginLoad {
  const maxInFlight = o.maxInFlight ?? 200;
  const t0 = performance.now();
  let started = 0;
  let inFlight = 0;
  let done = 0;
  let failures = 0;
  let totalMs = 0;
  let stopped = false;

  const finish = (s: Socket<Login> | undefined, ok: boolean, login: Login) => {
    inFlight--;
    if (ok) {
      done++;
      totalMs += performance.now() - login.startedAt;
    } else failures++;
    s?.end();
  };

  function startOne(): void {
    started++;
    inFlight++;
    const login: Login = { startedAt: performance.now(), answered: 0, text: "" };
    let settled = false;
    const settle = (s: Socket<Login> | undefined, ok: boolean) => {
      if (settled) return;
      settled = true;
      finish(s, ok, login);
    };
    Bun.connect<Login>({
      hostname: LOOPBACK,
      port: o.port,
      data: login,
      tls: { ca: o.ca, serverName: o.serverName },
      socket: {
        handshake(s, ok) {
          if (!ok) settle(s, false);
          else s.write(REQUEST);
        },
        data(s, d) {
          login.text += d.toString();
          // Chunked responses end with the last chunk; one response at a time on the connection.
          if (!login.text.endsWith("\r\n0\r\n\r\n")) return;
          login.text = "";
          login.answered++;
          if (login.answered >= REQUESTS_PER_LOGIN) settle(s, true);
          else s.write(REQUEST);
        },
        close(s) {
          settle(s, false);
        },
        error() {},
        connectError() {
          settle(undefined, false);
        },
      },
    }).catch(() => settle(undefined, false));
  }

  const timer = setInterval(() => {
    if (stopped) return;
    const due = Math.floor(((performance.now() - t0) / 1000) * o.perSecond);
    while (started < due && inFlight < maxInFlight) startOne();
    if (started < due) started = due; // skipped: counted as not done, so the achieved rate shows it
  }, 5);

  return {
    async stop() {
      stopped = true;
      clearInterval(timer);
      const seconds = (performance.now() - t0) / 1000;
      for (let i = 0; i < 100 && inFlight > 0; i++) await Bun.sleep(20);
      return { logins: done, failures, perSecond: done / seconds, meanMs: done ? totalMs / done : 0 };
    },
  };
}
