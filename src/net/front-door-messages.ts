/**
 * What the main thread and a front-door worker (front-door-worker.ts) post to each other: plain objects only
 * (structured clone is cheapest on them), bodies as ArrayBuffers moved, not copied (transfer lists). One channel
 * per worker, in order: a connection's `conn` always reaches the main thread before its first `req`.
 */
import type { ConnInfo, Http1Tls, RelayedRequest } from "./http1-options.ts";
import type { Http1Limits } from "./http1-parse.ts";

/** One listener a worker opens: `key` is the cm.listen entry it serves. */
export interface ListenerSpec {
  readonly key: string;
  readonly hostname: string;
  readonly port: number;
  readonly tls: Http1Tls;
  readonly limits: Partial<Http1Limits>;
  /** cm.proxyProtocolFrom, as written in the configuration (the worker compiles it). */
  readonly proxyProtocolFrom: readonly string[];
}

export type ToWorker =
  /** Listen (SO_REUSEPORT) on spec's address; answered by `done` with the port bound. */
  | { readonly t: "open"; readonly seq: number; readonly spec: ListenerSpec }
  /** New certificate for new connections on `key`; answered by `done`. */
  | { readonly t: "tls"; readonly seq: number; readonly key: string; readonly tls: Http1Tls }
  /** Stop accepting on `key` (its connections stay); answered by `done`. */
  | { readonly t: "close"; readonly seq: number; readonly key: string }
  /** Stop every listener and close every connection; answered by `done`. */
  | { readonly t: "stop"; readonly seq: number }
  /** The main thread's judgement of connection `id` (per-IP cap, cm.maxConnections, descriptors). */
  | { readonly t: "verdict"; readonly id: number; readonly ok: boolean }
  /** Close connection `id` (its PROXY header named a client over its cap). */
  | { readonly t: "cut"; readonly id: number }
  | RelayedAnswer;

/** The answer to `req` number `rid`: a response, a handler failure, or `drop` (the connection was refused). */
export type RelayedAnswer =
  | {
      readonly t: "res";
      readonly rid: number;
      readonly status: number;
      readonly statusText: string;
      /** Flat [name, value, …] without set-cookie, which comes one cookie a line in `cookies`. */
      readonly headers: string[];
      readonly cookies: string[];
      readonly body: ArrayBuffer | undefined;
    }
  | { readonly t: "fail"; readonly rid: number; readonly error: string }
  | { readonly t: "drop"; readonly rid: number };

export type FromWorker =
  | { readonly t: "ready" }
  | { readonly t: "done"; readonly seq: number; readonly port?: number; readonly error?: string }
  /** Connection `id` accepted on `key` from `peer` (canonical IP). */
  | { readonly t: "conn"; readonly id: number; readonly key: string; readonly peer: string }
  /** A PROXY header named `client` as connection `id`'s source. */
  | { readonly t: "addr"; readonly id: number; readonly client: string }
  | { readonly t: "closed"; readonly id: number }
  /** Turned away by the worker itself: too many of its connections await the main thread's verdict. */
  | { readonly t: "busy"; readonly peer: string }
  | {
      readonly t: "req";
      readonly rid: number;
      readonly id: number;
      readonly req: RelayedRequest;
      readonly info: ConnInfo;
    }
  | { readonly t: "refused"; readonly reason: string; readonly info: ConnInfo }
  | {
      readonly t: "log";
      readonly level: "info" | "warn" | "error";
      readonly fields: Record<string, unknown>;
      readonly msg: string;
    };
