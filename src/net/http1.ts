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
import type { Socket, SocketHandler, TCPSocketListener, TCPSocketListenOptions } from "bun";
import { canonicalIp } from "./client-address.ts";
import { type ConnectionHost, Http1Connection } from "./http1-conn.ts";
import type { Http1ServerOptions, Http1Tls } from "./http1-options.ts";
import { DEFAULT_LIMITS } from "./http1-parse.ts";
import { createProxiedWire, type ProxiedWire } from "./proxy-wire.ts";

export type { ConnInfo, Http1ServerOptions, Http1Tls } from "./http1-options.ts";
export type { Http1Limits } from "./http1-parse.ts";
export { DEFAULT_LIMITS } from "./http1-parse.ts";

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
  /** Closes connection number `id` (see `gate`), if it is open here. */
  cut(id: number): void;
}

/**
 * The server: its listeners (one, or two while a TLS rotation hands over), the connections open on them, and what
 * each connection may hold (a descriptor of `descriptors`, a slot of `guard`). Bun calls one set of socket
 * handlers per listener; they only find the socket's {@link Http1Connection} and forward the event.
 */
class Http1FrontDoor implements Http1Server {
  readonly hostname: string;
  readonly port: number;
  readonly #opts: Http1ServerOptions;
  readonly #maxConnections: number;
  readonly #open = new Set<Http1Connection>();
  /** With a remote `gate`: the open connections by the number the gate gave them. */
  readonly #byId = new Map<number, Http1Connection>();
  readonly #isTls: boolean;
  /** Set when peers must send a PROXY header first: the listener is plain TCP and TLS runs per connection. */
  readonly #proxyFrom: { has(ip: string): boolean; readonly size: number } | undefined;
  /** PROXY listeners accept plain TCP and run TLS per connection (proxy-wire.ts) with this context. */
  #proxyTls: SecureContext | undefined;
  readonly #host: ConnectionHost;
  readonly #handler: SocketHandler<Http1Connection>;
  #listener: TCPSocketListener<Http1Connection>;
  #dateCache = { at: 0, text: "" };

  constructor(opts: Http1ServerOptions) {
    if (!opts.fetch === !opts.relay) throw new Error("startHttp1Server: give exactly one of fetch and relay");
    this.#opts = opts;
    this.hostname = opts.hostname;
    this.#maxConnections = opts.maxConnections ?? Number.POSITIVE_INFINITY;
    this.#isTls = opts.tls !== undefined;
    this.#proxyFrom =
      opts.proxyProtocolFrom && opts.proxyProtocolFrom.size > 0 ? opts.proxyProtocolFrom : undefined;
    this.#proxyTls = this.#proxyFrom && opts.tls ? secureContextFor(opts.tls) : undefined;
    this.#host = {
      limits: { ...DEFAULT_LIMITS, ...opts.limits },
      options: opts,
      httpDate: () => this.#httpDate(),
      released: (c) => {
        if (this.#open.delete(c)) this.#giveBack(c);
      },
    };
    this.#handler = {
      open: (socket) => this.#accept(socket),
      handshake: (socket, success) => socket.data?.secured(success),
      data: (socket, chunk) => socket.data?.socketData(chunk),
      drain: (socket) => socket.data?.socketDrain(),
      close: (socket) => socket.data?.socketClosed(),
      error: (socket, err) => {
        const c = socket.data;
        if (c) opts.onError?.(err, c.info);
      },
    };
    this.#listener = this.#listen(opts.tls, opts.port);
    this.port = this.#listener.port;
  }

  get connections(): number {
    return this.#open.size;
  }

  reloadTls(tls: Http1Tls): void {
    if (this.#proxyFrom) {
      // New connections take the new context; the plain TCP listener itself does not change.
      this.#proxyTls = secureContextFor(tls);
      return;
    }
    const next = this.#listen(tls, this.port);
    const old = this.#listener;
    this.#listener = next;
    old.stop(false);
  }

  cut(id: number): void {
    this.#byId.get(id)?.close();
  }

  stop(stopOpts: { closeActive?: boolean } = {}): void {
    this.#listener.stop(stopOpts.closeActive === true);
    if (stopOpts.closeActive) for (const c of [...this.#open]) c.close();
  }

  // reusePort (SO_REUSEPORT; accepted by Bun.listen though its types list it only for connect) lets the
  // rotation listener bind while the old one still holds the port.
  #listen(tls: Http1Tls | undefined, port: number): TCPSocketListener<Http1Connection> {
    const options: TCPSocketListenOptions<Http1Connection> & { reusePort: boolean } = {
      hostname: this.#opts.hostname,
      port,
      reusePort: true,
      ...(tls && !this.#proxyFrom
        ? { tls: { ...tls, cert: tls.ca ? `${tls.cert.trimEnd()}\n${tls.ca}` : tls.cert } }
        : {}),
      socket: this.#handler,
    };
    return Bun.listen<Http1Connection>(options);
  }

  #accept(socket: Socket<Http1Connection>): void {
    const peer = canonicalIp(socket.remoteAddress);
    const gate = this.#opts.gate;
    const id = gate?.opened(peer);
    const c = new Http1Connection(
      socket,
      {
        remoteAddress: socket.remoteAddress,
        remotePort: socket.remotePort,
        localPort: socket.localPort,
        localAddress: socket.localAddress,
        tls: this.#isTls,
        ...(id !== undefined ? { id } : {}),
      },
      this.#host,
    );
    socket.data = c;
    if (gate ? id === undefined : !this.#mayOpen(c, peer)) {
      c.turnedAway();
      socket.terminate();
      return;
    }
    if (id !== undefined) {
      c.gateId = id;
      this.#byId.set(id, c);
    }
    this.#open.add(c);
    socket.setNoDelay(true);
    if (this.#proxyFrom) c.useProxiedWire(this.#proxiedWire(c, socket, this.#proxyFrom));
    c.startFirstTimer();
  }

  /** Whether a new connection may stay open; a refusal is counted by `guard` (which logs it once per window). */
  #mayOpen(c: Http1Connection, peer: string): boolean {
    const { guard, descriptors } = this.#opts;
    if (this.#open.size >= this.#maxConnections) {
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
  }

  /** Gives back the guard slot and the descriptor a connection held (each once). */
  #giveBack(c: Http1Connection): void {
    if (c.gateId !== undefined) {
      this.#byId.delete(c.gateId);
      this.#opts.gate?.closed(c.gateId);
      c.gateId = undefined;
    }
    if (c.guardIp !== undefined) {
      this.#opts.guard?.close(c.guardIp);
      c.guardIp = undefined;
    }
    if (!c.holdsFd) return;
    c.holdsFd = false;
    this.#opts.descriptors?.give(1);
  }

  /** The per-IP cap counts the client a PROXY header names, not the balancer all clients share. */
  #moveGuardSlot(c: Http1Connection, client: string): boolean {
    if (c.gateId !== undefined) {
      // Judged by the gate's owner, which cuts the connection if the client is over its cap.
      this.#opts.gate?.addressed(c.gateId, client);
      return true;
    }
    const guard = this.#opts.guard;
    if (!guard) return true;
    if (c.guardIp !== undefined) guard.close(c.guardIp);
    c.guardIp = undefined;
    if (guard.open(client) !== undefined) return false;
    c.guardIp = client;
    return true;
  }

  /** The PROXY-protocol hook: the header (or its absence) is read before any HTTP or TLS byte. */
  #proxiedWire(
    c: Http1Connection,
    socket: Socket<Http1Connection>,
    from: { has(ip: string): boolean },
  ): ProxiedWire {
    return createProxiedWire(socket as Socket<unknown>, {
      expectHeader: from.has(socket.remoteAddress),
      tls: this.#proxyTls,
      events: {
        secured: (ok) => c.secured(ok),
        addressed: (source) => {
          if (!this.#moveGuardSlot(c, source.address)) return false;
          c.info = {
            ...c.info,
            remoteAddress: source.address,
            remotePort: source.port,
            proxiedBy: socket.remoteAddress,
          };
          return true;
        },
        data: (chunk) => c.received(chunk),
        drain: () => c.flush(),
        refused: (reason) => {
          this.#opts.onRefused?.(reason, c.info);
          c.refusedBeforeHttp();
        },
        error: (err) => this.#opts.onError?.(err, c.info),
      },
    });
  }

  #httpDate(): string {
    const now = Date.now();
    if (now - this.#dateCache.at >= 1000) this.#dateCache = { at: now, text: new Date(now).toUTCString() };
    return this.#dateCache.text;
  }
}

export function startHttp1Server(opts: Http1ServerOptions): Http1Server {
  return new Http1FrontDoor(opts);
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
