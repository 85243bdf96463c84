/**
 * What a front-door listener is given (its options) and tells its handler about each connection (ConnInfo): the
 * types http1.ts (the listener, Http1FrontDoor) and http1-conn.ts (one connection) share, kept apart so neither
 * file imports the other's types back.
 */
import type { ConnectionGuard } from "./connection-guard.ts";
import type { Http1Limits } from "./http1-parse.ts";

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
  /** The connection's number on a front-door worker (what the main thread's accounting knows it by). */
  readonly id?: number;
}

/** A request as plain data: what a front-door worker posts to the main thread (no Request object built). */
export interface RelayedRequest {
  readonly method: string;
  /** The request target as received (origin form, absolute form or `*`). */
  readonly target: string;
  /** Names (lower case) and values in arrival order, flat: [name, value, name, value, …]. */
  readonly headers: string[];
  readonly body: Uint8Array | undefined;
}

/** An answer as plain data: what the main thread posts back to a front-door worker, written without a Response. */
export interface RelayedResponse {
  readonly status: number;
  readonly statusText: string;
  /** Names (lower case) and values, flat: [name, value, …], without set-cookie. */
  readonly headers: readonly string[];
  /** One Set-Cookie line each. */
  readonly cookies: readonly string[];
  readonly body: Uint8Array | undefined;
}

/**
 * Connection accounting kept by another thread (front-door workers, platform/front-door-workers.ts): the per-IP
 * cap, cm.maxConnections and the descriptor budget are judged once, in the main thread, for every worker. The
 * listener tells it of each connection and goes on at once (the TLS handshake does not wait); the owner answers
 * later and may cut the connection by its number (the server's `cut`). Requests of a connection are posted
 * after its `opened` on the same channel, so the owner has judged a connection before it sees its first request.
 */
export interface RemoteConnectionGate {
  /** Accepted from `peer` (canonical): the connection's number, or undefined to close it at once. */
  opened(peer: string): number | undefined;
  /** A PROXY header named `client` as connection `id`'s source: its per-IP slot moves there. */
  addressed(id: number, client: string): void;
  /** Connection `id` has closed (once). */
  closed(id: number): void;
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
  /** The handler; exactly one of `fetch` and `relay` is given. */
  fetch?(req: Request, info: ConnInfo): Response | Promise<Response>;
  /** Instead of `fetch`: the request as plain data (a front-door worker posts it to the main thread). */
  relay?(req: RelayedRequest, info: ConnInfo): Promise<RelayedResponse>;
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
  /**
   * Instead of `maxConnections`, `descriptors` and `guard`: accounting kept by another thread (front-door
   * workers); see {@link RemoteConnectionGate}.
   */
  readonly gate?: RemoteConnectionGate;
  onError?(err: unknown, info: ConnInfo): void;
  /**
   * Peers that must start every connection with a PROXY protocol header (v1 or v2) naming the client; any other
   * peer's header is refused. Unset or empty: no PROXY protocol (the listener uses Bun's native TLS).
   */
  readonly proxyProtocolFrom?: { has(ip: string): boolean; readonly size: number };
  /** A connection closed for a protocol error before any HTTP byte (PROXY header missing, bad or forbidden). */
  onRefused?(reason: string, info: ConnInfo): void;
}
