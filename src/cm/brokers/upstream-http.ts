/**
 * The CM's HTTP/1.1 client toward an upstream broker, over a socket the caller opened (direct TLS, or TLS inside
 * a proxy tunnel). Written by hand rather than with fetch because the broker leg needs exact control
 * (PROTOCOL.md §10): request bodies with Content-Length (a real broker reads a chunked body as empty), one
 * kept-alive connection per conversation, every Set-Cookie seen (error answers included), and the difference
 * between "the broker closed an idle connection before reading our request" (safe to resend) and "the broker
 * went away while answering" (not safe for allocate-resource). fetch hides all four, and Bun's fetch also sends
 * every request through HTTPS_PROXY, which must not apply to agents on the LAN.
 *
 * Responses: status line, headers matched without regard to case, body by Content-Length, chunked, or read to
 * the close; 1xx answers skipped. One request at a time per connection.
 */
import type { Duplex } from "node:stream";

/** Largest answer head (status line + headers) accepted. */
export const MAX_RESPONSE_HEAD_BYTES = 32 * 1024;
/** Largest answer body accepted (the XML parser itself stops at 64 KiB; a bigger body fails as bad XML). */
export const MAX_RESPONSE_BODY_BYTES = 1024 * 1024;

export interface HttpRequest {
  readonly method: "POST" | "GET";
  /** Host header value (host[:port]). */
  readonly host: string;
  readonly path: string;
  /** Extra headers in order, spelled as they should appear. */
  readonly headers: readonly (readonly [string, string])[];
  readonly body: string;
}

export interface HttpResponse {
  readonly status: number;
  readonly reason: string;
  /** Header lines in order, names lower-cased. */
  readonly headers: readonly (readonly [string, string])[];
  readonly body: string;
  /** Whether the connection can carry another request. */
  readonly reusable: boolean;
}

export type ExchangeFailureKind =
  /** The connection ended before any byte of the answer: the broker probably never read the request. */
  | "closed_before_response"
  /** The connection ended in the middle of the answer. */
  | "closed_mid_response"
  | "timeout"
  /** Not HTTP/1.x, or a malformed head or chunk. */
  | "bad_response"
  | "too_large";

export type ExchangeResult =
  | { readonly ok: true; readonly response: HttpResponse }
  | { readonly ok: false; readonly kind: ExchangeFailureKind; readonly detail: string };

export interface HttpConnection {
  /** Sends one request and reads its answer. `timeoutMs` covers writing and the whole answer. */
  exchange(req: HttpRequest, timeoutMs: number): Promise<ExchangeResult>;
  /** True once the peer closed or errored, or after `close()`. */
  readonly closed: boolean;
  /** Milliseconds since the last answer completed (or since the connection opened). */
  idleMs(): number;
  close(): void;
}

/** Serialises a request: CRLF lines, Content-Length always (never chunked). */
export function serializeRequest(req: HttpRequest): Buffer {
  const body = Buffer.from(req.body, "utf8");
  const lines = [`${req.method} ${req.path} HTTP/1.1`, `Host: ${req.host}`];
  for (const [name, value] of req.headers) {
    if (/[\r\n]/.test(name) || /[\r\n]/.test(value)) throw new Error(`header ${name} contains a line break`);
    lines.push(`${name}: ${value}`);
  }
  lines.push(`Content-Length: ${body.length}`);
  return Buffer.concat([Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "latin1"), body]);
}

/** All values of a header (names compared without case). */
export function headerValues(headers: HttpResponse["headers"], name: string): string[] {
  const n = name.toLowerCase();
  return headers.filter(([k]) => k === n).map(([, v]) => v);
}

/**
 * Wraps a connected socket. `now` is the clock used for idle time (tests may pass their own).
 * The socket is destroyed on close(), on any failure, and after an answer that does not allow reuse.
 */
export function createHttpConnection(
  socket: Duplex,
  now: () => number = Date.now,
  opts: {
    /** Close the connection after this long without a request (a kept-alive socket per idle pre-session adds up). */
    idleCloseMs?: number;
  } = {},
): HttpConnection {
  let closed = false;
  let idleSince = now();
  let idleTimer: ReturnType<typeof setTimeout> | undefined;
  const armIdle = () => {
    if (opts.idleCloseMs === undefined) return;
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => destroy(), opts.idleCloseMs);
    idleTimer.unref?.();
  };
  let pending: ((chunk: Buffer | null, err?: Error) => void) | undefined;
  // Bytes that arrived while no exchange was waiting (a peer should send none; kept for the next read).
  let early: Buffer[] = [];
  let endedEarly = false;

  const onData = (d: Buffer) => {
    if (pending) pending(d);
    else early.push(d);
  };
  const onEnd = () => {
    closed = true;
    if (pending) pending(null);
    else endedEarly = true;
  };
  const onError = (e: Error) => {
    closed = true;
    if (pending) pending(null, e);
    else endedEarly = true;
  };
  socket.on("data", onData);
  socket.on("end", onEnd);
  socket.on("close", onEnd);
  socket.on("error", onError);

  const destroy = () => {
    closed = true;
    clearTimeout(idleTimer);
    socket.destroy();
  };
  armIdle();

  return {
    get closed() {
      return closed;
    },
    idleMs: () => now() - idleSince,
    close: destroy,
    exchange(req, timeoutMs) {
      if (pending) throw new Error("http exchange started while another is running");
      clearTimeout(idleTimer);
      return new Promise<ExchangeResult>((resolve) => {
        const reader = responseReader();
        let received = 0;
        let settled = false;
        const settle = (r: ExchangeResult) => {
          if (settled) return;
          settled = true;
          pending = undefined;
          clearTimeout(timer);
          if (!r.ok || !r.response.reusable) destroy();
          else {
            idleSince = now();
            armIdle();
          }
          resolve(r);
        };
        const timer = setTimeout(
          () => settle({ ok: false, kind: "timeout", detail: `no complete answer within ${timeoutMs} ms` }),
          timeoutMs,
        );
        const feed = (chunk: Buffer | null, err?: Error) => {
          if (chunk === null) {
            const eof = reader.eof();
            if (eof) return settle(eof);
            const why = err ? ` (${(err as { code?: string }).code ?? err.message})` : "";
            return settle(
              received === 0
                ? {
                    ok: false,
                    kind: "closed_before_response",
                    detail: `connection closed before an answer${why}`,
                  }
                : { ok: false, kind: "closed_mid_response", detail: `connection closed mid-answer${why}` },
            );
          }
          received += chunk.length;
          const r = reader.push(chunk);
          if (r) settle(r);
        };
        pending = feed;
        const queued = early;
        early = [];
        for (const c of queued) {
          if (settled) return;
          feed(c);
        }
        if (endedEarly || closed) {
          feed(null);
          return;
        }
        let bytes: Buffer;
        try {
          bytes = serializeRequest(req);
        } catch (e) {
          settled = true;
          pending = undefined;
          clearTimeout(timer);
          throw e;
        }
        socket.write(bytes, (err) => {
          if (err) feed(null, err);
        });
      });
    },
  };
}

type Step = ExchangeResult | undefined;

/** Incremental response parser: push() bytes until it returns a result; eof() when the peer closed. */
function responseReader(): { push(b: Buffer): Step; eof(): Step } {
  let buf: Buffer = Buffer.alloc(0);
  let head: { status: number; reason: string; headers: [string, string][] } | undefined;
  let mode: "length" | "chunked" | "close" = "close";
  let length = 0;
  let keepAlive = true;
  const body: Buffer[] = [];
  let bodyBytes = 0;

  const done = (): ExchangeResult => ({
    ok: true,
    response: {
      status: head!.status,
      reason: head!.reason,
      headers: head!.headers,
      body: Buffer.concat(body).toString("utf8"),
      reusable: keepAlive && mode !== "close",
    },
  });
  const fail = (kind: ExchangeFailureKind, detail: string): ExchangeResult => ({ ok: false, kind, detail });

  const addBody = (b: Buffer): Step => {
    bodyBytes += b.length;
    if (bodyBytes > MAX_RESPONSE_BODY_BYTES)
      return fail("too_large", `answer body over ${MAX_RESPONSE_BODY_BYTES} bytes`);
    body.push(b);
    return undefined;
  };

  const parseHeadIfReady = (): Step | "more" => {
    const end = buf.indexOf("\r\n\r\n");
    const lfEnd = end < 0 ? buf.indexOf("\n\n") : -1;
    if (end < 0 && lfEnd < 0) {
      return buf.length > MAX_RESPONSE_HEAD_BYTES ? fail("too_large", "answer head too large") : "more";
    }
    const cut = end >= 0 ? end : lfEnd;
    const text = buf.subarray(0, cut).toString("latin1");
    buf = buf.subarray(cut + (end >= 0 ? 4 : 2));
    const lines = text.split(/\r?\n/);
    const m = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/.exec(lines[0] ?? "");
    if (!m)
      return fail("bad_response", `not an HTTP/1.x answer: ${JSON.stringify((lines[0] ?? "").slice(0, 60))}`);
    const headers: [string, string][] = [];
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      if (colon <= 0) return fail("bad_response", "malformed header line");
      headers.push([line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()]);
    }
    const status = Number(m[2]);
    if (status >= 100 && status < 200) return undefined; // 100 Continue and friends: read the next head
    head = { status, reason: m[3] ?? "", headers };
    const conn = headers.filter(([k]) => k === "connection").map(([, v]) => v.toLowerCase());
    keepAlive =
      m[1] === "1" ? !conn.some((v) => v.includes("close")) : conn.some((v) => v.includes("keep-alive"));
    const te = headers.filter(([k]) => k === "transfer-encoding").map(([, v]) => v.toLowerCase());
    const cl = headers.filter(([k]) => k === "content-length").map(([, v]) => v);
    if (te.length > 0) {
      if (!te.join(",").trim().endsWith("chunked"))
        return fail("bad_response", "unsupported transfer-encoding");
      mode = "chunked";
    } else if (cl.length > 0) {
      if (new Set(cl).size !== 1 || !/^\d+$/.test(cl[0]!)) return fail("bad_response", "bad content-length");
      mode = "length";
      length = Number(cl[0]);
      if (length > MAX_RESPONSE_BODY_BYTES) return fail("too_large", `answer body of ${length} bytes`);
    } else if (status === 204 || status === 304) {
      mode = "length";
      length = 0;
    } else {
      mode = "close";
    }
    return undefined;
  };

  const step = (): Step => {
    for (;;) {
      if (!head) {
        const r = parseHeadIfReady();
        if (r === "more") return undefined;
        if (r) return r;
        if (!head) continue; // a 1xx head was consumed
      }
      if (mode === "length") {
        const need = length - bodyBytes;
        const take = buf.subarray(0, need);
        buf = buf.subarray(take.length);
        const over = addBody(take);
        if (over) return over;
        return bodyBytes === length ? done() : undefined;
      }
      if (mode === "close") {
        const over = addBody(buf);
        buf = Buffer.alloc(0);
        return over;
      }
      // chunked: size line, data, CRLF … 0 CRLF [trailers] CRLF
      const lineEnd = buf.indexOf("\r\n");
      if (lineEnd < 0)
        return buf.length > 1024 ? fail("bad_response", "chunk size line too long") : undefined;
      const sizeText = buf.subarray(0, lineEnd).toString("latin1").split(";")[0]!.trim();
      if (!/^[0-9a-fA-F]+$/.test(sizeText)) return fail("bad_response", "bad chunk size");
      const size = Number.parseInt(sizeText, 16);
      if (size === 0) {
        const rest = buf.subarray(lineEnd + 2);
        const trailerEnd = rest.indexOf("\r\n\r\n");
        if (rest.subarray(0, 2).toString() === "\r\n" || trailerEnd >= 0) return done();
        return undefined;
      }
      if (bodyBytes + size > MAX_RESPONSE_BODY_BYTES) return fail("too_large", "chunked answer too large");
      if (buf.length < lineEnd + 2 + size + 2) return undefined;
      addBody(buf.subarray(lineEnd + 2, lineEnd + 2 + size));
      buf = buf.subarray(lineEnd + 2 + size + 2);
    }
  };

  return {
    push(b) {
      buf = buf.length === 0 ? b : Buffer.concat([buf, b]);
      return step();
    },
    eof() {
      if (head && mode === "close") return done();
      return undefined;
    },
  };
}
