/**
 * One connection of the front door (http1.ts): the bytes read and not yet parsed, the request being read or
 * handled, the answer's bytes the socket has not taken yet, and the connection's one timer. Requests are read
 * and answered one at a time, in order; bytes of a pipelined request wait in the buffer, within the limits.
 *
 * The server decides whether a connection may open and what it holds while open (`holdsFd`, `guardIp`); the
 * connection tells it once, through {@link ConnectionHost.released}, when it has closed.
 */
import type { ConnInfo, Http1ServerOptions, RelayedRequest, RelayedResponse } from "./http1-options.ts";
import {
  ChunkedDecoder,
  type HeadScan,
  type Http1Limits,
  type HttpRefusal,
  newHeadScan,
  parseRequestHead,
  type RequestHead,
} from "./http1-parse.ts";
import { requestFrom, targetIsValid } from "./http1-request.ts";
import {
  chunkFrame,
  LAST_CHUNK,
  plainErrorResponse,
  readWholeBody,
  serializeHead,
  serializeRelayedHead,
  statusHasBody,
} from "./http1-write.ts";
import type { ProxiedWire, Wire } from "./proxy-wire.ts";

/** What every connection of one server shares. */
export interface ConnectionHost {
  readonly limits: Http1Limits;
  /** The server's options: `fetch` and `onError` are called on it (as `opts.fetch(…)`). */
  readonly options: Pick<Http1ServerOptions, "fetch" | "relay" | "onError">;
  /** The Date header's value. */
  httpDate(): string;
  /** The connection has closed (called on every path that closes it; the server gives back what it held once). */
  released(conn: Http1Connection): void;
}

type Phase = "head" | "body" | "handling" | "closed";

/** Past this many unsent response bytes, a streamed body waits for the socket to drain. */
const OUT_HIGH_WATER = 256 * 1024;

export class Http1Connection {
  /** The client as `fetch` sees it: the socket's peer, or the source a PROXY header named. */
  info: ConnInfo;
  /** The server's: holds one descriptor of its budget (given back once, when the connection leaves its set). */
  holdsFd = false;
  /** The server's: the peer address whose per-IP guard slot this connection holds (given back with it). */
  guardIp: string | undefined;
  /** The server's: the connection's number at a remote gate (front-door workers), told when it closes. */
  gateId: number | undefined;
  readonly #host: ConnectionHost;
  #wire: Wire;
  /** Set on PROXY-protocol listeners: the wire that reads the header (and runs TLS) in front of the parser. */
  #proxied: ProxiedWire | undefined;
  #phase: Phase = "head";
  /** TLS handshake done (always true on plain listeners). */
  #secured: boolean;
  /** How far the head parser got in `#buf` (reset whenever `#buf` is cut). */
  #scan: HeadScan = newHeadScan();
  /** Backing store `#buf` grows in (doubling), so a head arriving in small reads is not copied over and over. */
  #store: Buffer | undefined;
  #buf: Buffer = Buffer.alloc(0);
  #head: RequestHead | undefined;
  #bodyParts: Uint8Array[] = [];
  #bodyLength = 0;
  #chunked: ChunkedDecoder | undefined;
  #out: Buffer[] = [];
  #outBytes = 0;
  #drainWaiters: (() => void)[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #served = 0;

  constructor(wire: Wire, info: ConnInfo, host: ConnectionHost) {
    this.#wire = wire;
    this.info = info;
    this.#secured = !info.tls;
    this.#host = host;
  }

  get closed(): boolean {
    return this.#phase === "closed";
  }

  /** PROXY-protocol listeners: HTTP bytes come from, and answers go to, this wire instead of the socket. */
  useProxiedWire(wire: ProxiedWire): void {
    this.#proxied = wire;
    this.#wire = wire;
  }

  /** Turned away at accept: the server ends the socket, and Bun's later events for it find it closed. */
  turnedAway(): void {
    this.#phase = "closed";
  }

  /**
   * The first deadline. TLS: the handshake gets its own headerTimeout, and the head its own once the handshake is
   * done. A busy node queues handshakes; counting that wait against the head would cut clients for the node's
   * own delay.
   */
  startFirstTimer(): void {
    if (this.info.tls)
      this.#arm(
        this.#host.limits.headerTimeoutMs,
        () => this.#phase === "head" && !this.#secured && this.close(),
      );
    else this.#startHeadTimer();
  }

  // ---- socket events (the listener's handler, or the PROXY wire, forwards them) ----

  /** Raw bytes from the socket: through the PROXY wire when there is one. */
  socketData(chunk: Buffer): void {
    if (this.#phase === "closed") return;
    if (this.#proxied) this.#proxied.rawData(chunk);
    else this.received(chunk);
  }

  socketDrain(): void {
    if (this.#proxied) this.#proxied.rawDrain();
    else this.flush();
  }

  /** The socket is gone (either side closed it). */
  socketClosed(): void {
    this.#proxied?.rawClose();
    if (this.#timer) clearTimeout(this.#timer);
    this.#phase = "closed";
    for (const w of this.#drainWaiters.splice(0)) w();
    this.#host.released(this);
  }

  secured(success: boolean): void {
    // A failed handshake (TLS garbage, a scanner) is closed by Bun; mark it so close() does not wait on it.
    this.#secured = success;
    if (success && this.#phase === "head") this.#startHeadTimer();
  }

  /** HTTP bytes (after TLS and any PROXY header). */
  received(chunk: Buffer): void {
    if (this.#phase === "closed") return;
    if (this.#phase === "head" && this.#buf.length === 0 && this.#served > 0) this.#startHeadTimer();
    this.#append(chunk);
    // While a request is being handled, bytes of the next (pipelined) one wait here, within the limits.
    const limits = this.#host.limits;
    if (
      this.#phase === "handling" &&
      this.#buf.length > limits.maxRequestLineBytes + limits.maxHeaderBytes + limits.maxBodyBytes
    ) {
      this.#refuse({ status: 431, reason: "too much pipelined data" });
      return;
    }
    this.#advance();
  }

  /** The PROXY wire refused the connection before any HTTP byte, and is closing it. */
  refusedBeforeHttp(): void {
    this.#phase = "closed";
    if (this.#timer) clearTimeout(this.#timer);
    this.#host.released(this);
  }

  /** Writes out what the socket did not take before; streamed bodies waiting on it go on once all is out. */
  flush(): void {
    while (this.#out.length > 0) {
      const head = this.#out[0]!;
      const n = this.#wire.write(head);
      if (n < head.length) {
        this.#out[0] = head.subarray(Math.max(0, n));
        this.#outBytes -= Math.max(0, n);
        return;
      }
      this.#out.shift();
      this.#outBytes -= head.length;
    }
    for (const w of this.#drainWaiters.splice(0)) w();
  }

  close(): void {
    if (this.#phase === "closed") return;
    this.#phase = "closed";
    if (this.#timer) clearTimeout(this.#timer);
    for (const w of this.#drainWaiters.splice(0)) w();
    // end() (not terminate) so that bytes already queued, such as an error answer, leave before the FIN. A TLS
    // connection whose handshake never finished (stalled or half-sent ClientHello) has nothing to flush, and its
    // end() would wait for the handshake forever: it is cut instead, so the header timeout frees it.
    if (this.#secured) this.#wire.end();
    else this.#wire.terminate();
    this.#host.released(this);
  }

  // ---- reading requests ----

  /** Drops the first `n` buffered bytes; the head parser's scan positions referred to them, so it starts over. */
  #consume(n: number): void {
    this.#buf = this.#buf.subarray(n);
    this.#scan = newHeadScan();
  }

  /** Adds a read to `#buf`: in place when the store has room after it, else into a store twice the size. */
  #append(chunk: Buffer): void {
    const buf = this.#buf;
    if (buf.length === 0) {
      this.#buf = chunk;
      this.#scan = newHeadScan();
      return;
    }
    const st = this.#store;
    const bufEnd = buf.byteOffset + buf.length;
    if (st && buf.buffer === st.buffer && bufEnd + chunk.length <= st.byteOffset + st.length) {
      st.set(chunk, bufEnd - st.byteOffset);
      this.#buf = Buffer.from(st.buffer, buf.byteOffset, buf.length + chunk.length);
      return;
    }
    const total = buf.length + chunk.length;
    const next = Buffer.allocUnsafe(Math.max(4096, total * 2));
    next.set(buf, 0);
    next.set(chunk, buf.length);
    this.#store = next;
    this.#buf = next.subarray(0, total);
  }

  /** Drives the connection's state machine over whatever is buffered. */
  #advance(): void {
    const limits = this.#host.limits;
    while (this.#phase === "head" || this.#phase === "body") {
      if (this.#phase === "head") {
        if (this.#buf.length === 0) return;
        const r = parseRequestHead(this.#buf, limits, this.#scan);
        if (r.kind === "need") return;
        if (r.kind === "refused") {
          this.#refuse(r.refusal);
          return;
        }
        this.#head = r.head;
        this.#consume(r.consumed);
        this.#bodyParts = [];
        this.#bodyLength = 0;
        this.#chunked = r.head.body.kind === "chunked" ? new ChunkedDecoder(limits.maxBodyBytes) : undefined;
        if (r.head.body.kind === "none") {
          this.#dispatch();
          return;
        }
        this.#phase = "body";
        if (r.head.expectContinue) this.#write(Buffer.from("HTTP/1.1 100 Continue\r\n\r\n"));
        this.#arm(limits.bodyTimeoutMs, () => {
          if (this.#phase === "body")
            this.#refuse({ status: 408, reason: "request body not received in time" });
        });
      }
      if (this.#phase === "body") {
        if (!this.#bodyComplete()) return;
        this.#dispatch();
        return;
      }
    }
  }

  /** Takes what is buffered into the body; true once the body is whole (false also after a refusal). */
  #bodyComplete(): boolean {
    const head = this.#head!;
    if (this.#chunked) {
      const used = this.#chunked.push(this.#buf);
      if (typeof used !== "number") {
        this.#refuse(used);
        return false;
      }
      this.#consume(used);
      if (!this.#chunked.done) return false;
      this.#bodyParts = [this.#chunked.body()];
    } else if (head.body.kind === "length") {
      const want = head.body.length - this.#bodyLength;
      const take = Math.min(want, this.#buf.length);
      if (take > 0) {
        this.#bodyParts.push(this.#buf.subarray(0, take));
        this.#bodyLength += take;
        this.#consume(take);
      }
      if (this.#bodyLength < head.body.length) return false;
    }
    return true;
  }

  /** Hands the request read to `fetch`, writes its answer, then reads the next one (or closes). */
  #dispatch(): void {
    const head = this.#head!;
    const limits = this.#host.limits;
    const options = this.#host.options;
    this.#phase = "handling";
    if (this.#timer) clearTimeout(this.#timer);
    this.#served++;
    const keepAlive = head.keepAlive && this.#served < limits.maxRequestsPerConnection;
    const plain = relayedRequest(head, this.#bodyParts);
    this.#bodyParts = [];
    const info = this.info;
    let answer: () => Response | RelayedResponse | Promise<Response | RelayedResponse>;
    if (options.relay) {
      if (!targetIsValid(plain.target)) {
        this.#refuse({ status: 400, reason: "invalid request target" });
        return;
      }
      answer = () => options.relay!(plain, info);
    } else {
      let request: Request;
      try {
        request = requestFrom(plain, info.tls);
      } catch {
        this.#refuse({ status: 400, reason: "invalid request target" });
        return;
      }
      answer = () => options.fetch!(request, info);
    }
    Promise.resolve()
      .then(answer)
      .catch((err: unknown) => {
        options.onError?.(err, this.info);
        return new Response("internal error\n", {
          status: 500,
          headers: { "Content-Type": "text/plain; charset=utf-8" },
        });
      })
      .then((res) =>
        res instanceof Response
          ? this.#respond(res, head, keepAlive)
          : this.#respondRelayed(res, head, keepAlive),
      )
      .then(
        (ok) => {
          if (this.#isClosed()) return;
          if (!ok || !keepAlive) {
            this.close();
            return;
          }
          this.#phase = "head";
          this.#head = undefined;
          if (this.#buf.length > 0) this.#startHeadTimer();
          else this.#startIdleTimer();
          this.#advance();
        },
        (err: unknown) => {
          options.onError?.(err, this.info);
          this.close();
        },
      );
  }

  // ---- writing answers ----

  #write(data: Buffer): void {
    if (this.#outBytes > 0) {
      this.#out.push(data);
      this.#outBytes += data.length;
      return;
    }
    const n = this.#wire.write(data);
    if (n < data.length) {
      const rest = data.subarray(Math.max(0, n));
      this.#out.push(rest);
      this.#outBytes += rest.length;
    }
  }

  /** Resolves once the socket has taken what is queued (or the connection closed). */
  #drained(): Promise<void> {
    return new Promise<void>((r) => this.#drainWaiters.push(r));
  }

  #refuse(refusal: HttpRefusal): void {
    this.#write(plainErrorResponse(refusal.status, refusal.reason, this.#host.httpDate()));
    this.close();
  }

  /**
   * Writes an answer the main thread sent as plain data (front-door workers): its body is whole, so head and body
   * leave in one write — as `#respond` would frame them, with no stream to read. False: the connection must close.
   */
  #respondRelayed(res: RelayedResponse, head: RequestHead, keepAlive: boolean): boolean {
    if (this.#phase === "closed") return false;
    const date = this.#host.httpDate();
    const hasBody = statusHasBody(res.status);
    const sendsBody = hasBody && head.method !== "HEAD";
    const body = sendsBody && res.body && res.body.length > 0 ? res.body : undefined;
    if (head.version === "1.0") {
      const contentLength = sendsBody ? (body?.length ?? 0) : undefined;
      const text = serializeRelayedHead(res, { keepAlive, chunked: false, date, contentLength });
      this.#write(body ? Buffer.concat([Buffer.from(text, "latin1"), body]) : Buffer.from(text, "latin1"));
      return true;
    }
    const text = serializeRelayedHead(res, { keepAlive, chunked: hasBody, date });
    if (!sendsBody) this.#write(Buffer.from(text, "latin1"));
    else if (!body) this.#write(Buffer.concat([Buffer.from(text, "latin1"), LAST_CHUNK]));
    else this.#write(Buffer.concat([Buffer.from(text, "latin1"), ...chunkFrame(body), LAST_CHUNK]));
    return true;
  }

  /** Writes the response; false when the body could not be completed (the connection must close). */
  async #respond(res: Response, head: RequestHead, keepAlive: boolean): Promise<boolean> {
    if (this.#phase === "closed") return false;
    if (head.version === "1.0") return this.#respondHttp10(res, head, keepAlive);
    const bodyAllowed = statusHasBody(res.status);
    const headText = serializeHead(res, { keepAlive, chunked: bodyAllowed, date: this.#host.httpDate() });
    const parts: Buffer[] = [Buffer.from(headText, "latin1")];
    if (!bodyAllowed || head.method === "HEAD" || res.body === null) {
      if (bodyAllowed && head.method !== "HEAD") parts.push(LAST_CHUNK);
      this.#write(Buffer.concat(parts));
      return true;
    }
    const reader = res.body.getReader();
    let pending = parts;
    let pendingBytes = parts[0]!.length;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (this.#isClosed()) return false;
        const frame = chunkFrame(typeof value === "string" ? Buffer.from(value) : value);
        pending.push(...frame);
        pendingBytes += frame.reduce((n, b) => n + b.length, 0);
        if (pendingBytes >= 64 * 1024) {
          this.#write(Buffer.concat(pending));
          pending = [];
          pendingBytes = 0;
          if (this.#outBytes > OUT_HIGH_WATER) await this.#drained();
        }
      }
    } catch (err) {
      this.#host.options.onError?.(err, this.info);
      if (pendingBytes > 0) this.#write(Buffer.concat(pending));
      return false; // the body is cut short: only closing tells the client so
    }
    pending.push(LAST_CHUNK);
    this.#write(Buffer.concat(pending));
    return true;
  }

  /**
   * An HTTP/1.0 request's answer (http1-write.ts): the body whole with Content-Length; one too large to hold is
   * sent as it comes and ended by closing the connection (false: the connection must close).
   */
  async #respondHttp10(res: Response, head: RequestHead, keepAlive: boolean): Promise<boolean> {
    const date = this.#host.httpDate();
    if (!statusHasBody(res.status) || head.method === "HEAD" || res.body === null) {
      const length = statusHasBody(res.status) && head.method !== "HEAD" ? 0 : undefined;
      this.#write(
        Buffer.from(serializeHead(res, { keepAlive, chunked: false, date, contentLength: length }), "latin1"),
      );
      return true;
    }
    let read: Awaited<ReturnType<typeof readWholeBody>>;
    try {
      read = await readWholeBody(res.body);
    } catch (err) {
      this.#host.options.onError?.(err, this.info);
      return false;
    }
    if (this.#isClosed()) return false;
    if (read.whole) {
      const headText = serializeHead(res, {
        keepAlive,
        chunked: false,
        date,
        contentLength: read.bytes.length,
      });
      this.#write(Buffer.concat([Buffer.from(headText, "latin1"), read.bytes]));
      return true;
    }
    this.#write(
      Buffer.concat([
        Buffer.from(serializeHead(res, { keepAlive: false, chunked: false, date }), "latin1"),
        read.head,
      ]),
    );
    try {
      for (;;) {
        const piece = await read.more();
        if (piece === undefined || this.#isClosed()) break;
        this.#write(piece);
        if (this.#outBytes > OUT_HIGH_WATER) await this.#drained();
      }
    } catch (err) {
      this.#host.options.onError?.(err, this.info);
    }
    return false;
  }

  // ---- timers ----

  #arm(ms: number, onFire: () => void): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = setTimeout(onFire, ms);
  }

  #startHeadTimer(): void {
    this.#arm(this.#host.limits.headerTimeoutMs, () => {
      if (this.#phase === "head") this.#refuse({ status: 408, reason: "request head not received in time" });
    });
  }

  #startIdleTimer(): void {
    this.#arm(this.#host.limits.idleTimeoutMs, () => {
      if (this.#phase === "head" && this.#buf.length === 0) this.close();
    });
  }

  /** A method, not an inline comparison: the phase changes across awaits, which TypeScript's narrowing ignores. */
  #isClosed(): boolean {
    return this.#phase === "closed";
  }
}

/** The request read as plain data: the body's parts joined (one part is passed as is, not copied). */
function relayedRequest(head: RequestHead, body: readonly Uint8Array[]): RelayedRequest {
  const headers: string[] = [];
  for (const [name, value] of head.headers) headers.push(name, value);
  return {
    method: head.method,
    target: head.target,
    headers,
    body: body.length === 0 ? undefined : body.length === 1 ? body[0] : Buffer.concat(body),
  };
}
