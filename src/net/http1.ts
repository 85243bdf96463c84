/**
 * The CM's front door: a small, strict HTTP/1.1 server on Bun.listen (TLS, or plain TCP for the port-80
 * redirect). Bun.serve cannot be used here: it lower-cases `set-cookie`, sends one-chunk bodies with
 * Content-Length and answers bare-LF requests with 505 — real PCoIP clients need the opposite (SPEC §3).
 *
 * Each request becomes a Web `Request` handed to `fetch` (a hono app's `app.fetch`, which sees `ConnInfo` as
 * `c.env`); the `Response` is written back with canonical header spelling and chunked transfer coding.
 * Requests on one connection are handled one at a time, in order (pipelining is allowed, never parallel).
 */
import { createSecureContext, type SecureContext } from "node:tls";
import type { Socket, TCPSocketListener, TCPSocketListenOptions } from "bun";
import { canonicalIp } from "./client-address.ts";
import type { ConnectionGuard } from "./connection-guard.ts";
import {
  ChunkedDecoder,
  DEFAULT_LIMITS,
  type HeadScan,
  type Http1Limits,
  type HttpRefusal,
  newHeadScan,
  parseRequestHead,
  type RequestHead,
} from "./http1-parse.ts";
import {
  chunkFrame,
  LAST_CHUNK,
  plainErrorResponse,
  readWholeBody,
  serializeHead,
  statusHasBody,
} from "./http1-write.ts";
import { createProxiedWire, type ProxiedWire, type Wire } from "./proxy-wire.ts";

export type { Http1Limits } from "./http1-parse.ts";
export { DEFAULT_LIMITS } from "./http1-parse.ts";

export interface ConnInfo {
  /** The client: the socket's peer, or the source a PROXY header named (see `proxyProtocolFrom`). */
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly localPort: number;
  /** The address the connection came in on (a wildcard listener's redirect names it). */
  readonly localAddress?: string;
  readonly tls: boolean;
  /** The balancer the connection came through, when a PROXY header named the client. */
  readonly proxiedBy?: string;
}

export interface Http1Tls {
  readonly cert: string;
  readonly key: string;
  /** Served after the leaf as the chain. */
  readonly ca?: string;
  readonly ciphers?: string;
  readonly minVersion?: number;
  readonly maxVersion?: number;
  readonly secureOptions?: number;
}

export interface Http1ServerOptions {
  readonly hostname: string;
  readonly port: number;
  readonly tls?: Http1Tls;
  fetch(req: Request, info: ConnInfo): Response | Promise<Response>;
  readonly limits?: Partial<Http1Limits>;
  /** Connections beyond this are closed at once (descriptor exhaustion guard). */
  readonly maxConnections?: number;
  /**
   * The CM's descriptor budget (sg/limits.ts; the SG relays have their own): each connection takes one, and
   * one that does not fit is closed at once. Kept under RLIMIT_NOFILE, accept() never meets EMFILE — where Bun's
   * accept loop would spin on a listener that stays readable.
   */
  readonly descriptors?: { tryTake(fds: number): boolean; give(fds: number): void };
  /**
   * Per-client-IP connection cap and refusal accounting shared by every front-door listener
   * (connection-guard.ts). Counted by the socket's peer at accept; on a PROXY listener the slot then moves to the
   * client the header names (the balancer itself is exempt), so clients behind an L4 balancer are capped each.
   */
  readonly guard?: ConnectionGuard;
  onError?(err: unknown, info: ConnInfo): void;
  /**
   * Peers that must start every connection with a PROXY protocol header (v1 or v2) naming the client; any other
   * peer's header is refused. Unset or empty: no PROXY protocol (the listener uses Bun's native TLS).
   */
  readonly proxyProtocolFrom?: { has(ip: string): boolean; readonly size: number };
  /** A connection closed for a protocol error before any HTTP byte (PROXY header missing, bad or forbidden). */
  onRefused?(reason: string, info: ConnInfo): void;
}

export interface Http1Server {
  readonly hostname: string;
  readonly port: number;
  readonly connections: number;
  /**
   * New certificates for new connections: a second listener is bound to the same address with SO_REUSEPORT,
   * then the old one stops accepting. Accepted connections,
   * including idle keep-alive ones, keep their TLS session and go on working.
   */
  reloadTls(tls: Http1Tls): void;
  /** Stops accepting; with `closeActive`, also closes every open connection. */
  stop(opts?: { closeActive?: boolean }): void;
}

type Phase = "head" | "body" | "handling" | "closed";

interface Conn {
  socket: Wire;
  /** Set on PROXY-protocol listeners: the wire that reads the header (and runs TLS) in front of the parser. */
  proxied?: ProxiedWire;
  info: ConnInfo;
  phase: Phase;
  /** TLS handshake done (always true on plain listeners). */
  secured: boolean;
  /** Holds one descriptor of `descriptors` (given back once, when it leaves `open`). */
  holdsFd: boolean;
  /** The peer address whose `guard` slot this connection holds (given back with the descriptor). */
  guardIp?: string;
  /** How far the head parser got in `buf` (reset whenever `buf` is cut). */
  scan: HeadScan;
  /** Backing store `buf` grows in (doubling), so a head arriving in small reads is not copied over and over. */
  store: Buffer | undefined;
  buf: Buffer;
  head?: RequestHead;
  bodyParts: Uint8Array[];
  bodyLength: number;
  chunked?: ChunkedDecoder;
  out: Buffer[];
  outBytes: number;
  drainWaiters: (() => void)[];
  timer?: ReturnType<typeof setTimeout>;
  served: number;
}

/** Past this many unsent response bytes, a streamed body waits for the socket to drain. */
const OUT_HIGH_WATER = 256 * 1024;

// Long on purpose (≈ 500 lines): Bun calls one set of socket handlers per listener, and they all read and write the
// same per-connection state and server counters; split, each piece would take that state as arguments.
export function startHttp1Server(opts: Http1ServerOptions): Http1Server {
  const limits: Http1Limits = { ...DEFAULT_LIMITS, ...opts.limits };
  const maxConnections = opts.maxConnections ?? Number.POSITIVE_INFINITY;
  const descriptors = opts.descriptors;
  const guard = opts.guard;
  const giveFd = (c: Conn): void => {
    if (c.guardIp !== undefined) {
      guard?.close(c.guardIp);
      c.guardIp = undefined;
    }
    if (!c.holdsFd) return;
    c.holdsFd = false;
    descriptors?.give(1);
  };
  /** Whether a new connection may stay open; a refusal is counted by `guard` (which logs it once per window). */
  const mayOpen = (c: Conn, peer: string): boolean => {
    if (open.size >= maxConnections) {
      guard?.refuse("max_connections", peer);
      return false;
    }
    if (guard?.open(peer) !== undefined) return false;
    if (descriptors && !descriptors.tryTake(1)) {
      guard?.close(peer);
      guard?.refuse("descriptors", peer);
      return false;
    }
    if (guard) c.guardIp = peer;
    c.holdsFd = descriptors !== undefined;
    return true;
  };
  const open = new Set<Conn>();
  const isTls = opts.tls !== undefined;
  let dateCache = { at: 0, text: "" };

  const httpDate = (): string => {
    const now = Date.now();
    if (now - dateCache.at >= 1000) dateCache = { at: now, text: new Date(now).toUTCString() };
    return dateCache.text;
  };

  /** Drops the first `n` buffered bytes; the head parser's scan positions referred to them, so it starts over. */
  const consume = (c: Conn, n: number): void => {
    c.buf = c.buf.subarray(n);
    c.scan = newHeadScan();
  };

  /** Adds a read to `c.buf`: in place when the store has room after it, else into a store twice the size. */
  const append = (c: Conn, chunk: Buffer): void => {
    if (c.buf.length === 0) {
      c.buf = chunk;
      c.scan = newHeadScan();
      return;
    }
    const st = c.store;
    const bufEnd = c.buf.byteOffset + c.buf.length;
    if (st && c.buf.buffer === st.buffer && bufEnd + chunk.length <= st.byteOffset + st.length) {
      st.set(chunk, bufEnd - st.byteOffset);
      c.buf = Buffer.from(st.buffer, c.buf.byteOffset, c.buf.length + chunk.length);
      return;
    }
    const total = c.buf.length + chunk.length;
    const next = Buffer.allocUnsafe(Math.max(4096, total * 2));
    next.set(c.buf, 0);
    next.set(chunk, c.buf.length);
    c.store = next;
    c.buf = next.subarray(0, total);
  };

  const arm = (c: Conn, ms: number, onFire: () => void): void => {
    if (c.timer) clearTimeout(c.timer);
    c.timer = setTimeout(onFire, ms);
  };

  const close = (c: Conn): void => {
    if (c.phase === "closed") return;
    c.phase = "closed";
    if (c.timer) clearTimeout(c.timer);
    for (const w of c.drainWaiters.splice(0)) w();
    // end() (not terminate) so that bytes already queued, such as an error answer, leave before the FIN. A TLS
    // connection whose handshake never finished (stalled or half-sent ClientHello) has nothing to flush, and its
    // end() would wait for the handshake forever: it is cut instead, so the header timeout frees it.
    if (c.secured) c.socket.end();
    else c.socket.terminate();
    if (open.delete(c)) giveFd(c);
  };

  const write = (c: Conn, data: Buffer): void => {
    if (c.outBytes > 0) {
      c.out.push(data);
      c.outBytes += data.length;
      return;
    }
    const n = c.socket.write(data);
    if (n < data.length) {
      const rest = data.subarray(Math.max(0, n));
      c.out.push(rest);
      c.outBytes += rest.length;
    }
  };

  const flush = (c: Conn): void => {
    while (c.out.length > 0) {
      const head = c.out[0]!;
      const n = c.socket.write(head);
      if (n < head.length) {
        c.out[0] = head.subarray(Math.max(0, n));
        c.outBytes -= Math.max(0, n);
        return;
      }
      c.out.shift();
      c.outBytes -= head.length;
    }
    for (const w of c.drainWaiters.splice(0)) w();
  };

  const refuseAndClose = (c: Conn, refusal: HttpRefusal): void => {
    write(c, plainErrorResponse(refusal.status, refusal.reason, httpDate()));
    close(c);
  };

  const startHeadTimer = (c: Conn): void => {
    arm(c, limits.headerTimeoutMs, () => {
      if (c.phase === "head") refuseAndClose(c, { status: 408, reason: "request head not received in time" });
    });
  };

  const startIdleTimer = (c: Conn): void => {
    arm(c, limits.idleTimeoutMs, () => {
      if (c.phase === "head" && c.buf.length === 0) close(c);
    });
  };

  /** Drives the connection's state machine over whatever is buffered. */
  const advance = (c: Conn): void => {
    while (c.phase === "head" || c.phase === "body") {
      if (c.phase === "head") {
        if (c.buf.length === 0) return;
        const r = parseRequestHead(c.buf, limits, c.scan);
        if (r.kind === "need") return;
        if (r.kind === "refused") {
          refuseAndClose(c, r.refusal);
          return;
        }
        c.head = r.head;
        consume(c, r.consumed);
        c.bodyParts = [];
        c.bodyLength = 0;
        c.chunked = r.head.body.kind === "chunked" ? new ChunkedDecoder(limits.maxBodyBytes) : undefined;
        if (r.head.body.kind === "none") {
          dispatch(c);
          return;
        }
        c.phase = "body";
        if (r.head.expectContinue) write(c, Buffer.from("HTTP/1.1 100 Continue\r\n\r\n"));
        arm(c, limits.bodyTimeoutMs, () => {
          if (c.phase === "body")
            refuseAndClose(c, { status: 408, reason: "request body not received in time" });
        });
      }
      if (c.phase === "body") {
        const head = c.head!;
        if (c.chunked) {
          const used = c.chunked.push(c.buf);
          if (typeof used !== "number") {
            refuseAndClose(c, used);
            return;
          }
          consume(c, used);
          if (!c.chunked.done) return;
          c.bodyParts = [c.chunked.body()];
        } else if (head.body.kind === "length") {
          const want = head.body.length - c.bodyLength;
          const take = Math.min(want, c.buf.length);
          if (take > 0) {
            c.bodyParts.push(c.buf.subarray(0, take));
            c.bodyLength += take;
            consume(c, take);
          }
          if (c.bodyLength < head.body.length) return;
        }
        dispatch(c);
        return;
      }
    }
  };

  const dispatch = (c: Conn): void => {
    const head = c.head!;
    c.phase = "handling";
    if (c.timer) clearTimeout(c.timer);
    c.served++;
    const keepAlive = head.keepAlive && c.served < limits.maxRequestsPerConnection;
    let request: Request;
    try {
      request = toRequest(head, c.bodyParts, c.info);
    } catch {
      refuseAndClose(c, { status: 400, reason: "invalid request target" });
      return;
    }
    c.bodyParts = [];
    Promise.resolve()
      .then(() => opts.fetch(request, c.info))
      .catch((err: unknown) => {
        opts.onError?.(err, c.info);
        return new Response("internal error\n", {
          status: 500,
          headers: { "Content-Type": "text/plain; charset=utf-8" },
        });
      })
      .then((res) => writeResponse(c, res, head, keepAlive))
      .then(
        (ok) => {
          if (c.phase === "closed") return;
          if (!ok || !keepAlive) {
            close(c);
            return;
          }
          c.phase = "head";
          c.head = undefined;
          if (c.buf.length > 0) startHeadTimer(c);
          else startIdleTimer(c);
          advance(c);
        },
        (err: unknown) => {
          opts.onError?.(err, c.info);
          close(c);
        },
      );
  };

  /** Writes the response; false when the body could not be completed (the connection must close). */
  const writeResponse = async (
    c: Conn,
    res: Response,
    head: RequestHead,
    keepAlive: boolean,
  ): Promise<boolean> => {
    if (c.phase === "closed") return false;
    if (head.version === "1.0") return writeHttp10Response(c, res, head, keepAlive);
    const bodyAllowed = statusHasBody(res.status);
    const headText = serializeHead(res, { keepAlive, chunked: bodyAllowed, date: httpDate() });
    const parts: Buffer[] = [Buffer.from(headText, "latin1")];
    if (!bodyAllowed || head.method === "HEAD" || res.body === null) {
      if (bodyAllowed && head.method !== "HEAD") parts.push(LAST_CHUNK);
      write(c, Buffer.concat(parts));
      return true;
    }
    const reader = res.body.getReader();
    let pending = parts;
    let pendingBytes = parts[0]!.length;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (isClosed(c)) return false;
        const frame = chunkFrame(typeof value === "string" ? Buffer.from(value) : value);
        pending.push(...frame);
        pendingBytes += frame.reduce((n, b) => n + b.length, 0);
        if (pendingBytes >= 64 * 1024) {
          write(c, Buffer.concat(pending));
          pending = [];
          pendingBytes = 0;
          if (c.outBytes > OUT_HIGH_WATER) await new Promise<void>((r) => c.drainWaiters.push(r));
        }
      }
    } catch (err) {
      opts.onError?.(err, c.info);
      if (pendingBytes > 0) write(c, Buffer.concat(pending));
      return false; // the body is cut short: only closing tells the client so
    }
    pending.push(LAST_CHUNK);
    write(c, Buffer.concat(pending));
    return true;
  };

  const proxyFrom =
    opts.proxyProtocolFrom && opts.proxyProtocolFrom.size > 0 ? opts.proxyProtocolFrom : undefined;
  /** PROXY listeners accept plain TCP and run TLS per connection (proxy-wire.ts) with this context. */
  let proxyTls = proxyFrom && opts.tls ? secureContextFor(opts.tls) : undefined;

  const secured = (c: Conn, success: boolean): void => {
    // A failed handshake (TLS garbage, a scanner) is closed by Bun; mark it so close() does not wait on it.
    c.secured = success;
    if (success && c.phase === "head") startHeadTimer(c);
  };

  const received = (c: Conn, chunk: Buffer): void => {
    if (c.phase === "closed") return;
    if (c.phase === "head" && c.buf.length === 0 && c.served > 0) startHeadTimer(c);
    append(c, chunk);
    // While a request is being handled, bytes of the next (pipelined) one wait here, within the limits.
    if (
      c.phase === "handling" &&
      c.buf.length > limits.maxRequestLineBytes + limits.maxHeaderBytes + limits.maxBodyBytes
    ) {
      refuseAndClose(c, { status: 431, reason: "too much pipelined data" });
      return;
    }
    advance(c);
  };

  /** The PROXY-protocol hook: the header (or its absence) is read before any HTTP or TLS byte. */
  const proxiedWire = (c: Conn, socket: Socket<Conn>, from: NonNullable<typeof proxyFrom>): ProxiedWire =>
    createProxiedWire(socket as Socket<unknown>, {
      expectHeader: from.has(socket.remoteAddress),
      tls: proxyTls,
      events: {
        secured: (ok) => secured(c, ok),
        addressed: (source) => {
          // The per-IP cap counts the client the header names, not the balancer all clients share.
          if (guard) {
            if (c.guardIp !== undefined) guard.close(c.guardIp);
            c.guardIp = undefined;
            if (guard.open(source.address) !== undefined) return false;
            c.guardIp = source.address;
          }
          c.info = {
            ...c.info,
            remoteAddress: source.address,
            remotePort: source.port,
            proxiedBy: socket.remoteAddress,
          };
          return true;
        },
        data: (chunk) => received(c, chunk),
        drain: () => flush(c),
        refused: (reason) => {
          opts.onRefused?.(reason, c.info);
          c.phase = "closed";
          if (c.timer) clearTimeout(c.timer);
          if (open.delete(c)) giveFd(c);
        },
        error: (err) => opts.onError?.(err, c.info),
      },
    });

  /**
   * An HTTP/1.0 request's answer (http1-write.ts): the body whole with Content-Length; one too large to hold is
   * sent as it comes and ended by closing the connection (false: the connection must close).
   */
  const writeHttp10Response = async (
    c: Conn,
    res: Response,
    head: RequestHead,
    keepAlive: boolean,
  ): Promise<boolean> => {
    const date = httpDate();
    if (!statusHasBody(res.status) || head.method === "HEAD" || res.body === null) {
      const length = statusHasBody(res.status) && head.method !== "HEAD" ? 0 : undefined;
      write(
        c,
        Buffer.from(serializeHead(res, { keepAlive, chunked: false, date, contentLength: length }), "latin1"),
      );
      return true;
    }
    let read: Awaited<ReturnType<typeof readWholeBody>>;
    try {
      read = await readWholeBody(res.body);
    } catch (err) {
      opts.onError?.(err, c.info);
      return false;
    }
    if (isClosed(c)) return false;
    if (read.whole) {
      const headText = serializeHead(res, {
        keepAlive,
        chunked: false,
        date,
        contentLength: read.bytes.length,
      });
      write(c, Buffer.concat([Buffer.from(headText, "latin1"), read.bytes]));
      return true;
    }
    write(
      c,
      Buffer.concat([
        Buffer.from(serializeHead(res, { keepAlive: false, chunked: false, date }), "latin1"),
        read.head,
      ]),
    );
    try {
      for (;;) {
        const piece = await read.more();
        if (piece === undefined || isClosed(c)) break;
        write(c, piece);
        if (c.outBytes > OUT_HIGH_WATER) await new Promise<void>((r) => c.drainWaiters.push(r));
      }
    } catch (err) {
      opts.onError?.(err, c.info);
    }
    return false;
  };

  const handler = {
    open(socket: Socket<Conn>) {
      const c: Conn = {
        socket,
        info: {
          remoteAddress: socket.remoteAddress,
          remotePort: socket.remotePort,
          localPort: socket.localPort,
          localAddress: socket.localAddress,
          tls: isTls,
        },
        phase: "head",
        secured: !isTls,
        holdsFd: false,
        scan: newHeadScan(),
        store: undefined,
        buf: Buffer.alloc(0),
        bodyParts: [],
        bodyLength: 0,
        out: [],
        outBytes: 0,
        drainWaiters: [],
        served: 0,
      };
      socket.data = c;
      if (!mayOpen(c, canonicalIp(socket.remoteAddress))) {
        c.phase = "closed";
        socket.terminate();
        return;
      }
      open.add(c);
      socket.setNoDelay(true);
      if (proxyFrom) {
        c.proxied = proxiedWire(c, socket, proxyFrom);
        c.socket = c.proxied;
      }
      // TLS: the handshake gets its own headerTimeout, and the head its own once the handshake is done. A busy
      // node queues handshakes; counting that wait against the head would cut clients for the node's own delay.
      if (isTls) arm(c, limits.headerTimeoutMs, () => c.phase === "head" && !c.secured && close(c));
      else startHeadTimer(c);
    },
    handshake(socket: Socket<Conn>, success: boolean) {
      const c = socket.data;
      if (c) secured(c, success);
    },
    data(socket: Socket<Conn>, chunk: Buffer) {
      const c = socket.data;
      if (!c || c.phase === "closed") return;
      if (c.proxied) c.proxied.rawData(chunk);
      else received(c, chunk);
    },
    drain(socket: Socket<Conn>) {
      const c = socket.data;
      if (c?.proxied) c.proxied.rawDrain();
      else if (c) flush(c);
    },
    close(socket: Socket<Conn>) {
      const c = socket.data;
      if (!c) return;
      c.proxied?.rawClose();
      if (c.timer) clearTimeout(c.timer);
      c.phase = "closed";
      for (const w of c.drainWaiters.splice(0)) w();
      if (open.delete(c)) giveFd(c);
    },
    error(socket: Socket<Conn>, err: Error) {
      const c = socket.data;
      if (c) opts.onError?.(err, c.info);
    },
  };

  // reusePort (SO_REUSEPORT; accepted by Bun.listen though its types list it only for connect) lets the
  // rotation listener bind while the old one still holds the port.
  const listen = (tls: Http1Tls | undefined, port: number): TCPSocketListener<Conn> => {
    const options: TCPSocketListenOptions<Conn> & { reusePort: boolean } = {
      hostname: opts.hostname,
      port,
      reusePort: true,
      ...(tls && !proxyFrom
        ? { tls: { ...tls, cert: tls.ca ? `${tls.cert.trimEnd()}\n${tls.ca}` : tls.cert } }
        : {}),
      socket: handler,
    };
    return Bun.listen<Conn>(options);
  };

  let listener = listen(opts.tls, opts.port);
  const port = listener.port;

  return {
    hostname: opts.hostname,
    port,
    get connections() {
      return open.size;
    },
    reloadTls(tls) {
      if (proxyFrom) {
        // New connections take the new context; the plain TCP listener itself does not change.
        proxyTls = secureContextFor(tls);
        return;
      }
      const next = listen(tls, port);
      const old = listener;
      listener = next;
      old.stop(false);
    },
    stop(stopOpts = {}) {
      listener.stop(stopOpts.closeActive === true);
      if (stopOpts.closeActive) for (const c of [...open]) close(c);
    },
  };
}

/** Bun.listen's TLS options as a node:tls context, for listeners that run TLS after a PROXY header. */
function secureContextFor(tls: Http1Tls): SecureContext {
  const version = (v: number | undefined) =>
    v === 0x0304 ? "TLSv1.3" : v === 0x0303 ? "TLSv1.2" : undefined;
  const min = version(tls.minVersion);
  const max = version(tls.maxVersion);
  return createSecureContext({
    cert: tls.ca ? `${tls.cert.trimEnd()}\n${tls.ca}` : tls.cert,
    key: tls.key,
    ...(tls.ciphers ? { ciphers: tls.ciphers } : {}),
    ...(min ? { minVersion: min } : {}),
    ...(max ? { maxVersion: max } : {}),
    ...(tls.secureOptions !== undefined ? { secureOptions: tls.secureOptions } : {}),
  });
}

/** A function, not an inline comparison: the phase changes across awaits, which TypeScript's narrowing ignores. */
function isClosed(c: Conn): boolean {
  return c.phase === "closed";
}

function toRequest(head: RequestHead, body: readonly Uint8Array[], info: ConnInfo): Request {
  const headers = new Headers();
  for (const [name, value] of head.headers) headers.append(name, value);
  const host = headers.get("host");
  const authority = host && /^[A-Za-z0-9.\-:[\]]+$/.test(host) ? host : "localhost";
  const scheme = info.tls ? "https" : "http";
  const target = head.target.startsWith("/")
    ? head.target
    : head.target === "*"
      ? "/"
      : new URL(head.target).pathname;
  const hasBody = head.method !== "GET" && head.method !== "HEAD";
  const payload = body.length === 0 ? undefined : body.length === 1 ? body[0] : Buffer.concat(body);
  return new Request(`${scheme}://${authority}${target}`, {
    method: head.method,
    headers,
    body: hasBody && payload ? payload : undefined,
  });
}
