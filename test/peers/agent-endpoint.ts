/**
 * A fake PCoIP agent's session endpoint, as the SG sees it: a TLS server on TCP port P (the agent's own
 * certificate, so a client behind a pass-through SG must see exactly this certificate) and a UDP echo on the
 * same port number P. Usable in-process from tests, or as a process (`bun test/peers/agent-endpoint.ts
 * --host 10.1.2.3 --port 4172 --cert c.pem --key k.pem`, one JSON line per event on stdout) for netns tests
 * and demos.
 *
 * TCP behaviour: every chunk received is echoed back; when the client half-closes, the agent writes
 * `END <bytes received>\n` and then half-closes too (proves data still flows after a FIN).
 * UDP behaviour: every datagram is sent back unchanged to its source; sources are recorded.
 */
import type { Socket, TCPSocketListener, udp } from "bun";

export interface AgentEndpointOptions {
  readonly hostname?: string;
  /** 0 = an ephemeral TCP port, with the UDP echo on the same number. */
  readonly port?: number;
  readonly cert: string;
  readonly key: string;
  /** Called for each accepted control connection and each new UDP source (the process mode prints them). */
  readonly onEvent?: (e: AgentEvent) => void;
}

export type AgentEvent =
  | { readonly event: "tcp"; readonly peer: string; readonly peerPort: number; readonly sni: string | null }
  | { readonly event: "udp-source"; readonly address: string; readonly port: number };

export interface AgentEndpoint {
  readonly hostname: string;
  readonly port: number;
  /** Control connections accepted (after the TLS handshake). */
  readonly accepted: readonly { peer: string; peerPort: number; sni: string | null }[];
  /** Datagrams echoed, by source "address|port". */
  readonly udpBySource: ReadonlyMap<string, number>;
  readonly udpPackets: number;
  close(): Promise<void>;
}

interface Conn {
  received: number;
  /** Echo bytes the socket did not take yet; reading pauses until they drain (a real peer's backpressure). */
  backlog: Uint8Array | undefined;
  finPending: boolean;
}

export async function startAgentEndpoint(options: AgentEndpointOptions): Promise<AgentEndpoint> {
  const hostname = options.hostname ?? "127.0.0.1";
  const accepted: { peer: string; peerPort: number; sni: string | null }[] = [];
  const udpBySource = new Map<string, number>();
  let udpPackets = 0;
  const open = new Set<Socket<Conn>>();

  const socket = {
    open(s: Socket<Conn>) {
      s.data = { received: 0, backlog: undefined, finPending: false };
      open.add(s);
      const sni = s.getServername?.() || null;
      const e = { peer: s.remoteAddress, peerPort: s.remotePort, sni: typeof sni === "string" ? sni : null };
      accepted.push(e);
      options.onEvent?.({ event: "tcp", ...e });
    },
    data(s: Socket<Conn>, d: Uint8Array) {
      s.data.received += d.length;
      echo(s, d);
    },
    drain(s: Socket<Conn>) {
      const b = s.data.backlog;
      s.data.backlog = undefined;
      if (b) echo(s, b);
      if (s.data.backlog) return;
      if (s.data.finPending) finish(s);
      else s.resume();
    },
    end(s: Socket<Conn>) {
      if (s.data.backlog) s.data.finPending = true;
      else finish(s);
    },
    close(s: Socket<Conn>) {
      open.delete(s);
    },
    error() {},
  };

  function echo(s: Socket<Conn>, d: Uint8Array): void {
    if (s.data.backlog) {
      const joined = new Uint8Array(s.data.backlog.length + d.length);
      joined.set(s.data.backlog);
      joined.set(d, s.data.backlog.length);
      s.data.backlog = joined;
      return;
    }
    const n = s.write(d);
    if (n >= 0 && n < d.length) {
      s.data.backlog = d.subarray(n);
      s.pause();
    }
  }
  function finish(s: Socket<Conn>): void {
    s.write(`END ${s.data.received}\n`);
    s.shutdown();
  }

  let tcp: TCPSocketListener<Conn> | undefined;
  let udpSock: udp.Socket<"buffer"> | undefined;
  for (let attempt = 0; attempt < 10 && !udpSock; attempt++) {
    tcp = Bun.listen<Conn>({
      hostname,
      port: options.port ?? 0,
      allowHalfOpen: true,
      tls: { cert: options.cert, key: options.key },
      socket,
    });
    try {
      udpSock = await Bun.udpSocket({
        hostname,
        port: tcp.port,
        socket: {
          data(sock, buf, port, address) {
            udpPackets++;
            const key = `${address}|${port}`;
            const n = udpBySource.get(key);
            udpBySource.set(key, (n ?? 0) + 1);
            if (n === undefined) options.onEvent?.({ event: "udp-source", address, port });
            sock.send(buf, port, address);
          },
          error() {},
        },
      });
    } catch (e) {
      tcp.stop(true);
      tcp = undefined;
      if (options.port) throw e; // a fixed port that is taken: nothing to retry
    }
  }
  if (!tcp || !udpSock) throw new Error("agent endpoint: no port free for both TCP and UDP after 10 tries");
  const listener = tcp;
  const udpEcho = udpSock;

  return {
    hostname,
    port: listener.port,
    accepted,
    udpBySource,
    get udpPackets() {
      return udpPackets;
    },
    async close() {
      listener.stop(true);
      for (const s of open) s.terminate();
      udpEcho.close();
    },
  };
}

if (import.meta.main) {
  const arg = (name: string): string | undefined => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : undefined;
  };
  const certFile = arg("cert");
  const keyFile = arg("key");
  if (!certFile || !keyFile) {
    process.stderr.write("usage: agent-endpoint.ts --host ADDR --port N --cert FILE --key FILE\n");
    process.exit(2);
  }
  const print = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
  const agent = await startAgentEndpoint({
    hostname: arg("host") ?? "127.0.0.1",
    port: Number(arg("port") ?? 0),
    cert: await Bun.file(certFile).text(),
    key: await Bun.file(keyFile).text(),
    onEvent: print,
  });
  print({ event: "ready", hostname: agent.hostname, port: agent.port });
  process.on("SIGTERM", () => {
    agent.close().then(() => process.exit(0));
  });
}

/** The client half of the conversation: a TLS control connection as a PCoIP client opens it (SNI = agent sni). */
export interface ControlClient {
  /** The certificate the client was shown (the agent's, when the SG is pass-through). */
  readonly peerCert: { readonly subjectCN: string | undefined; readonly fingerprint256: string | undefined };
  readonly localPort: number;
  write(text: string): void;
  /** Writes everything, waiting for the socket to drain when it takes less (resolves once all is handed over). */
  writeAll(bytes: Uint8Array): Promise<void>;
  /** Everything received so far. */
  text(): string;
  /** Resolves once the received text contains `needle` (rejects after `ms`). */
  waitFor(needle: string, ms?: number): Promise<string>;
  /** Sends FIN, keeps reading. */
  halfClose(): void;
  /** Stops reading (a stalled client); `resume()` reads again. */
  pause(): void;
  resume(): void;
  close(): void;
  /** Resolves when the connection is closed. */
  readonly closed: Promise<void>;
}

export type ControlResult =
  | { readonly ok: true; readonly client: ControlClient }
  | { readonly ok: false; readonly error: string };

/**
 * Connects with TLS, trusting `ca` and checking the certificate against `serverName`; resolves after the
 * handshake, or with `ok: false` when the connection is closed or fails first (what a refused client sees).
 */
export function connectControl(opts: {
  hostname: string;
  port: number;
  serverName?: string;
  ca: string;
  timeoutMs?: number;
}): Promise<ControlResult> {
  const result = Promise.withResolvers<ControlResult>();
  const closed = Promise.withResolvers<void>();
  let text = "";
  let backlog: { bytes: Uint8Array; done: () => void }[] = [];
  const flush = (s: { write(b: Uint8Array): number }) => {
    while (backlog.length > 0) {
      const head = backlog[0]!;
      const n = s.write(head.bytes);
      if (n < 0) {
        for (const b of backlog) b.done();
        backlog = [];
        return;
      }
      if (n < head.bytes.length) {
        head.bytes = head.bytes.subarray(n);
        return;
      }
      backlog.shift();
      head.done();
    }
  };
  const waiters: { needle: string; resolve: (t: string) => void }[] = [];
  const timer = setTimeout(() => result.resolve({ ok: false, error: "timeout" }), opts.timeoutMs ?? 5000);
  const settle = (r: ControlResult) => {
    clearTimeout(timer);
    result.resolve(r);
  };
  Bun.connect({
    hostname: opts.hostname,
    port: opts.port,
    allowHalfOpen: true,
    tls: { ca: opts.ca, ...(opts.serverName ? { serverName: opts.serverName } : {}) },
    socket: {
      handshake(s, ok, err) {
        if (!ok) {
          settle({ ok: false, error: `handshake: ${err?.message ?? "refused"}` });
          s.terminate();
          return;
        }
        const cert = s.getPeerCertificate();
        const cn = cert?.subject?.CN;
        const client: ControlClient = {
          peerCert: { subjectCN: Array.isArray(cn) ? cn[0] : cn, fingerprint256: cert?.fingerprint256 },
          localPort: s.localPort,
          write: (t) => {
            s.write(t);
          },
          writeAll(bytes) {
            const w = Promise.withResolvers<void>();
            backlog.push({ bytes, done: w.resolve });
            if (backlog.length === 1) flush(s);
            return w.promise;
          },
          text: () => text,
          waitFor(needle, ms = 5000) {
            if (text.includes(needle)) return Promise.resolve(text);
            const w = Promise.withResolvers<string>();
            waiters.push({ needle, resolve: w.resolve });
            const t = setTimeout(
              () => w.reject(new Error(`no "${needle}" within ${ms} ms; got ${JSON.stringify(text)}`)),
              ms,
            );
            return w.promise.finally(() => clearTimeout(t));
          },
          halfClose: () => s.shutdown(),
          pause: () => s.pause(),
          resume: () => s.resume(),
          close: () => s.end(),
          closed: closed.promise,
        };
        settle({ ok: true, client });
      },
      drain(s) {
        flush(s);
      },
      data(_s, d) {
        text += d.toString();
        for (let i = waiters.length - 1; i >= 0; i--) {
          if (text.includes(waiters[i]!.needle)) waiters.splice(i, 1)[0]!.resolve(text);
        }
      },
      close(_s, err) {
        settle({ ok: false, error: `closed before handshake${err ? `: ${err.message}` : ""}` });
        closed.resolve();
      },
      error() {},
      connectError(_s, err) {
        settle({ ok: false, error: `connect: ${err.message}` });
        closed.resolve();
      },
    },
  }).catch((e: unknown) => settle({ ok: false, error: String(e) }));
  return result.promise;
}
