/**
 * The CM's TLS connection to an agent on Bun's native sockets (Bun.connect), presented with the few stream
 * methods the hand-written HTTP/1.1 client (brokers/upstream-http.ts) uses: `on("data" | "end" | "close" |
 * "error")`, `write(bytes, done)` and `destroy()`.
 *
 * Why not node:tls (issue 21): node:tls in Bun wraps the same native socket in Node's stream and event machinery;
 * measured on this project's 2-core box, a connect + handshake + one request + close cost the client ≈430 µs of
 * CPU through node:tls and ≈300 µs through Bun.connect — one such connection per login. Bun.connect, like
 * node:tls and unlike Bun's fetch, never goes through HTTPS_PROXY.
 *
 * Certificates are not checked by the TLS library (`rejectUnauthorized: false`); the caller judges them, so a
 * refusal can name the rule. Bun then still reports a failed check as `handshake(ok = false)` with the
 * verification error, and the connection goes on; only errors of another kind mean the handshake failed.
 */

import type { PeerCertificate } from "node:tls";
import type { Socket } from "bun";
import type { ClientTlsOptions } from "../tls/policy.ts";

/** Verification results (not handshake failures): the caller judges these with agentCertCheck. */
const VERIFY_CODES =
  /CERT|SIGNATURE|ISSUER|ALTNAME|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET|HOSTNAME|IP_ADDRESS|CHAIN|UNTRUSTED|INVALID_CA|INVALID_PURPOSE|PATH_LENGTH|KEY_?USAGE|CRL|REVOKED|EXPIRED|NOT_YET_VALID|DEPTH/i;

type Listener = (arg?: unknown) => void;
/** The stream events upstream-http.ts listens to, plus the two connectAgent waits for. */
type AgentSocketEvent = "data" | "end" | "close" | "error" | "handshake" | "connectError";

/** A connected agent socket; see the module comment. */
export class AgentSocket {
  socket: Socket<AgentSocket> | undefined;
  /** The session offered for resumption, set on the socket when it opens. */
  offer: Buffer | undefined;
  private readonly listeners: Record<AgentSocketEvent, Listener[]> = {
    data: [],
    end: [],
    close: [],
    error: [],
    handshake: [],
    connectError: [],
  };
  private readonly out: { bytes: Uint8Array; done: ((err?: Error | null) => void) | undefined }[] = [];
  private gone = false;

  on(event: AgentSocketEvent, fn: Listener): this {
    this.listeners[event].push(fn);
    return this;
  }

  emit(event: AgentSocketEvent, arg?: unknown): void {
    for (const fn of this.listeners[event]) fn(arg);
  }

  /** Queues `bytes`; `done` runs once all of them are handed to the kernel (or with an error if closed). */
  write(bytes: Uint8Array, done?: (err?: Error | null) => void): boolean {
    if (this.gone || !this.socket) {
      done?.(new Error("socket closed"));
      return false;
    }
    this.out.push({ bytes, done });
    this.flush();
    return this.out.length === 0;
  }

  /** Writes what is queued, as far as the socket takes it (called again on drain). */
  flush(): void {
    const s = this.socket;
    while (s && this.out.length > 0) {
      const head = this.out[0]!;
      const n = s.write(head.bytes);
      if (n < head.bytes.length) {
        head.bytes = head.bytes.subarray(Math.max(0, n));
        return;
      }
      this.out.shift();
      head.done?.(null);
    }
  }

  destroy(): void {
    if (this.gone) return;
    this.gone = true;
    for (const w of this.out.splice(0)) w.done?.(new Error("socket closed"));
    this.socket?.terminate();
  }

  /** Marks the socket gone (the peer closed it) and fails queued writes. */
  closed(): void {
    this.gone = true;
    for (const w of this.out.splice(0)) w.done?.(new Error("socket closed"));
  }

  get authorized(): boolean {
    return this.socket?.authorized ?? false;
  }

  /** The library's verification error code (e.g. UNABLE_TO_VERIFY_LEAF_SIGNATURE), "" when none. */
  get authorizationError(): string {
    const e = this.socket?.getAuthorizationError() as (Error & { code?: string }) | null | undefined;
    return e ? String(e.code ?? e.message) : "";
  }

  getPeerCertificate(): PeerCertificate {
    return this.socket!.getPeerCertificate();
  }

  isSessionReused(): boolean {
    return this.socket?.isSessionReused() ?? false;
  }

  /** The TLS session to offer next time (TLS 1.3 sends it after the handshake: ask once the answer is in). */
  getSession(): Buffer | undefined {
    const s = this.socket?.getSession() as unknown;
    return s instanceof Buffer && s.length > 0 ? s : undefined;
  }
}

export type AgentConnectResult =
  | { readonly ok: true; readonly socket: AgentSocket }
  | { readonly ok: false; readonly error: Error & { code?: string } };

/** Bun.connect handlers, shared by every agent connection (each socket's state is its AgentSocket). */
const handlers = {
  open(s: Socket<AgentSocket>) {
    s.data.socket = s;
    if (s.data.offer) s.setSession(s.data.offer);
  },
  handshake(s: Socket<AgentSocket>, ok: boolean, err: (Error & { code?: string }) | null) {
    s.data.socket = s;
    s.data.emit("handshake", { ok, err });
  },
  data(s: Socket<AgentSocket>, d: Buffer) {
    s.data.emit("data", d);
  },
  drain(s: Socket<AgentSocket>) {
    s.data.flush();
  },
  end(s: Socket<AgentSocket>) {
    s.data.emit("end");
  },
  close(s: Socket<AgentSocket>) {
    s.data.closed();
    s.data.emit("close");
  },
  error(s: Socket<AgentSocket>, e: Error) {
    s.data.emit("error", e);
  },
  connectError(s: Socket<AgentSocket>, e: Error) {
    s.data.emit("connectError", e);
  },
};

/**
 * Connects and completes the TLS handshake (the certificate is the caller's to judge), offering `session` for
 * resumption. Resolves with the socket, or with the error that ended it; never rejects.
 */
export function connectAgent(o: {
  host: string;
  port: number;
  serverName: string | undefined;
  tls: ClientTlsOptions;
  session: Buffer | undefined;
}): { result: Promise<AgentConnectResult>; socket: AgentSocket } {
  const adapter = new AgentSocket();
  adapter.offer = o.session;
  const result = new Promise<AgentConnectResult>((resolve) => {
    let settled = false;
    const settle = (r: AgentConnectResult) => {
      if (settled) return;
      settled = true;
      resolve(r);
    };
    adapter.on("handshake", (arg) => {
      const { ok, err } = arg as { ok: boolean; err: (Error & { code?: string }) | null };
      if (ok || (err && VERIFY_CODES.test(String(err.code ?? "")))) settle({ ok: true, socket: adapter });
      else settle({ ok: false, error: err ?? new Error("TLS handshake failed") });
    });
    adapter.on("connectError", (e) => settle({ ok: false, error: e as Error }));
    adapter.on("error", (e) => settle({ ok: false, error: e as Error }));
    adapter.on("close", () =>
      settle({
        ok: false,
        error: Object.assign(new Error("connection closed during the TLS handshake"), { code: "ECONNRESET" }),
      }),
    );
    const tls = {
      ...(o.tls.ca ? { ca: o.tls.ca } : {}),
      rejectUnauthorized: false,
      ciphers: o.tls.ciphers,
      minVersion: o.tls.minVersion,
      ...(o.serverName ? { serverName: o.serverName } : {}),
    };
    Bun.connect<AgentSocket>({
      hostname: o.host,
      port: o.port,
      data: adapter,
      tls,
      socket: handlers,
    }).catch((e: unknown) => settle({ ok: false, error: e instanceof Error ? e : new Error(String(e)) }));
  });
  return { result, socket: adapter };
}
