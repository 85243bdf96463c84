/**
 * One connection on a front-door listener with PROXY protocol enabled (`proxyProtocolFrom`): the listener
 * accepts plain TCP, this object reads what comes before the HTTP bytes, then hands the rest to the http1
 * server through a {@link Wire} (the same small surface a Bun socket offers it).
 *
 * - A peer in `proxyProtocolFrom` must start with a PROXY header (v1 or v2); its source becomes the client's
 *   address. No header, or a malformed one, is a protocol error: the connection is closed.
 * - Any other peer must not: a connection that starts like a PROXY header is closed, never believed.
 * - On a TLS listener the TLS session starts after the header. Bun's native `upgradeTLS` cannot be given bytes
 *   already read from the socket, and a balancer often sends the header and the ClientHello in one segment, so
 *   TLS runs in node:tls over a Duplex fed from the socket (BoringSSL still does the crypto). Listeners without
 *   `proxyProtocolFrom` keep Bun's native TLS and never see this module.
 */
import { Duplex } from "node:stream";
import { type SecureContext, TLSSocket } from "node:tls";
import type { Socket } from "bun";
import { looksLikeProxyHeader, type ProxiedAddress, parseProxyHeader } from "./proxy-protocol.ts";

/** What the http1 server writes to and closes; a Bun socket is one, and so is a {@link ProxiedWire}. */
export interface Wire {
  /** Bytes taken (the rest must be written again on `drain`); negative when the connection is gone. */
  write(data: Uint8Array): number;
  end(): void;
  terminate(): void;
}

/** What the wire tells the http1 connection. */
export interface WireEvents {
  /** TLS listeners: the handshake finished (or failed: the connection is then closed). */
  secured(ok: boolean): void;
  /**
   * The PROXY header named the client (not called for LOCAL / UNKNOWN headers). False: the client may not open
   * another connection (its per-IP cap, counted and logged by the caller); the connection is cut.
   */
  addressed(source: ProxiedAddress): boolean;
  data(chunk: Buffer): void;
  drain(): void;
  /** A protocol error before any HTTP byte; the connection is being closed. */
  refused(reason: string): void;
  error(err: Error): void;
}

export interface ProxiedWire extends Wire {
  /** Raw socket events, forwarded by the listener's handler. */
  rawData(chunk: Buffer): void;
  rawDrain(): void;
  rawClose(): void;
}

type Stage = "preamble" | "plain" | "tls" | "closed";

export interface ProxiedWireOptions {
  /** Whether the peer is in `proxyProtocolFrom` (must send a header) or not (must not). */
  readonly expectHeader: boolean;
  /** The listener's current TLS context, or undefined for a plain listener (port 80). */
  readonly tls: SecureContext | undefined;
  readonly events: WireEvents;
}

export function createProxiedWire(raw: Socket<unknown>, o: ProxiedWireOptions): ProxiedWire {
  let stage: Stage = "preamble";
  let pending: Buffer = Buffer.alloc(0);
  let feed: Duplex | undefined;
  let tlsSocket: TLSSocket | undefined;
  /** Encrypted bytes node:tls produced that the raw socket has not taken yet, and whom to tell when it has. */
  let rawOut: { rest: Uint8Array; done: () => void } | undefined;

  const refuse = (reason: string): void => {
    stage = "closed";
    o.events.refused(reason);
    raw.terminate();
  };

  const startTls = (ctx: SecureContext, first: Buffer): void => {
    stage = "tls";
    feed = new Duplex({
      read() {
        raw.resume();
      },
      write(chunk: Buffer, _enc, done) {
        const n = raw.write(chunk);
        if (n < 0 || n >= chunk.length) done();
        else rawOut = { rest: chunk.subarray(n), done };
      },
      final(done) {
        raw.end();
        done();
      },
    });
    const t = new TLSSocket(feed, { isServer: true, secureContext: ctx });
    tlsSocket = t;
    let secured = false;
    t.on("secure", () => {
      secured = true;
      o.events.secured(true);
    });
    t.on("data", (d: Buffer) => o.events.data(d));
    t.on("drain", () => o.events.drain());
    t.on("error", (err: Error) => {
      if (!secured) o.events.secured(false);
      else o.events.error(err);
      raw.terminate();
    });
    if (first.length > 0) feedTls(first);
  };

  const feedTls = (chunk: Buffer): void => {
    // push() copies nothing; Bun reuses its read buffer, so the bytes are copied once here.
    if (!feed!.push(Buffer.from(chunk))) raw.pause();
  };

  const afterPreamble = (rest: Buffer): void => {
    if (o.tls) {
      startTls(o.tls, rest);
      return;
    }
    stage = "plain";
    if (rest.length > 0) o.events.data(rest);
  };

  const readPreamble = (): void => {
    if (o.expectHeader) {
      const r = parseProxyHeader(pending);
      if (r.kind === "need") return;
      if (r.kind === "refused") {
        refuse(r.reason);
        return;
      }
      if (r.source && !o.events.addressed(r.source)) {
        stage = "closed";
        raw.terminate();
        return;
      }
      const rest = pending.subarray(r.consumed);
      pending = Buffer.alloc(0);
      afterPreamble(rest);
      return;
    }
    const looks = looksLikeProxyHeader(pending);
    if (looks === "need") return;
    if (looks) {
      refuse("a PROXY protocol header from a peer that is not in proxyProtocolFrom");
      return;
    }
    const rest = pending;
    pending = Buffer.alloc(0);
    afterPreamble(rest);
  };

  return {
    write(data) {
      if (stage === "tls") {
        if (tlsSocket!.writableNeedDrain) return 0;
        tlsSocket!.write(Buffer.from(data));
        return data.length;
      }
      return raw.write(data);
    },
    end() {
      if (stage === "tls") tlsSocket!.end();
      else raw.end();
    },
    terminate() {
      stage = "closed";
      tlsSocket?.destroy();
      raw.terminate();
    },
    rawData(chunk) {
      if (stage === "preamble") {
        pending = pending.length === 0 ? Buffer.from(chunk) : Buffer.concat([pending, chunk]);
        readPreamble();
      } else if (stage === "tls") feedTls(chunk);
      else if (stage === "plain") o.events.data(chunk);
    },
    rawDrain() {
      if (stage === "plain") {
        o.events.drain();
        return;
      }
      if (!rawOut) return;
      const { rest, done } = rawOut;
      const n = raw.write(rest);
      if (n < 0 || n >= rest.length) {
        rawOut = undefined;
        done();
      } else rawOut = { rest: rest.subarray(n), done };
    },
    rawClose() {
      stage = "closed";
      if (rawOut) {
        const { done } = rawOut;
        rawOut = undefined;
        done();
      }
      tlsSocket?.destroy();
      feed?.destroy();
    },
  };
}
