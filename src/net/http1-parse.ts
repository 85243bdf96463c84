/**
 * Pure HTTP/1.1 request parsing for the CM's front door: the request head (request line + headers, lines ending
 * in CRLF or a bare LF, because the vendor's documented health check is typed into `openssl s_client`) and an
 * incremental chunked-body decoder. No I/O: http1.ts feeds bytes and acts on the results. Every refusal is a
 * value carrying the HTTP status to answer with; nothing here throws on input.
 */

export interface Http1Limits {
  /** Longest request line (method, target, version). Over it: 414. */
  readonly maxRequestLineBytes: number;
  /** All header lines together. Over it: 431. */
  readonly maxHeaderBytes: number;
  readonly maxHeaderCount: number;
  /** Request body, by Content-Length or counted chunk data. Over it: 413. */
  readonly maxBodyBytes: number;
  /** The whole head must arrive within this (slowloris). */
  readonly headerTimeoutMs: number;
  readonly bodyTimeoutMs: number;
  /** A keep-alive connection with no request in progress is closed after this. */
  readonly idleTimeoutMs: number;
  readonly maxRequestsPerConnection: number;
}

export const DEFAULT_LIMITS: Http1Limits = {
  maxRequestLineBytes: 8192,
  maxHeaderBytes: 16384,
  maxHeaderCount: 100,
  maxBodyBytes: 65536,
  headerTimeoutMs: 10_000,
  bodyTimeoutMs: 10_000,
  idleTimeoutMs: 60_000,
  maxRequestsPerConnection: 1000,
};

export interface RequestHead {
  readonly method: string;
  readonly target: string;
  readonly version: "1.0" | "1.1";
  /** Names lower-cased, in arrival order; repeated names kept as separate entries. */
  readonly headers: readonly (readonly [string, string])[];
  readonly body: BodyFraming;
  readonly keepAlive: boolean;
  readonly expectContinue: boolean;
}

export type BodyFraming =
  | { readonly kind: "none" }
  | { readonly kind: "length"; readonly length: number }
  | { readonly kind: "chunked" };

export interface HttpRefusal {
  readonly status: 400 | 408 | 413 | 414 | 431 | 501 | 505;
  readonly reason: string;
}

export type HeadResult =
  | { readonly kind: "need" }
  | { readonly kind: "head"; readonly head: RequestHead; readonly consumed: number }
  | { readonly kind: "refused"; readonly refusal: HttpRefusal };

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP\/(\d)\.(\d)$/;
const LF = 0x0a;
/** Trailers are read and ignored; this only stops an endless trailer section from holding the connection. */
const MAX_TRAILER_BYTES = 16384;
const CR = 0x0d;

/**
 * How far a previous parseRequestHead call over the same (grown) buffer looked. Start with `newHeadScan()`, pass
 * the same object while the buffer only grows, start anew when the buffer is cut.
 */
export interface HeadScan {
  /** Bytes searched for the first LF. */
  scanned: number;
  /** The request line's LF, once seen. */
  firstLf: number;
  /** The last LF visited looking for the blank line. */
  lastLf: number;
}

export function newHeadScan(): HeadScan {
  return { scanned: 0, firstLf: -1, lastLf: -1 };
}

/**
 * Looks for a complete request head at the start of `buf` (leading empty lines are skipped, as RFC 9112 §2.2
 * allows). Returns `need` until the blank line arrives, refusing as soon as a limit is crossed so that a
 * client cannot make us buffer more than the limits allow.
 */
export function parseRequestHead(buf: Uint8Array, limits: Http1Limits, scan?: HeadScan): HeadResult {
  let start = 0;
  while (start < buf.length && (buf[start] === CR || buf[start] === LF)) start++;
  // Empty lines before a request are allowed, not without end: they would be buffered until the header timeout.
  if (start > limits.maxRequestLineBytes) return refuse(400, "too many empty lines before the request");
  // A head arriving in pieces is parsed again on every read; `scan` remembers where the previous call over the
  // same (grown) buffer stopped, so each byte is searched once in all: linear, not quadratic, in the head's length.
  const firstLf =
    scan && scan.firstLf >= 0 ? scan.firstLf : buf.indexOf(LF, Math.max(start, scan?.scanned ?? 0));
  if (firstLf < 0) {
    if (scan) scan.scanned = buf.length;
    if (buf.length - start > limits.maxRequestLineBytes) return refuse(414, "request line too long");
    return { kind: "need" };
  }
  if (scan) scan.firstLf = firstLf;
  const lineLength = firstLf - start - (buf[firstLf - 1] === CR ? 1 : 0);
  if (lineLength > limits.maxRequestLineBytes) return refuse(414, "request line too long");
  // The blank line can only start at an LF not yet known to be followed by a header line: the last one seen.
  const found = findHeadEnd(buf, scan && scan.lastLf > firstLf ? scan.lastLf : firstLf);
  const end = found.end;
  if (end < 0) {
    if (scan) scan.lastLf = found.lastLf;
    if (buf.length - firstLf > limits.maxHeaderBytes) return refuse(431, "request headers too large");
    return { kind: "need" };
  }
  if (end - firstLf > limits.maxHeaderBytes + 2) return refuse(431, "request headers too large");
  const text = latin1(buf, start, end);
  const lines = text.split("\n").map((l) => (l.endsWith("\r") ? l.slice(0, -1) : l));
  while (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  const requestLine = lines[0] ?? "";
  const m = REQUEST_LINE.exec(requestLine);
  if (!m) {
    if (/^\S+ \S+ HTTP\/\S*$/.test(requestLine)) return refuse(505, "HTTP version not supported");
    return refuse(400, "malformed request line");
  }
  const version = `${m[3]}.${m[4]}`;
  if (version !== "1.1" && version !== "1.0") return refuse(505, "HTTP version not supported");
  const headerLines = lines.slice(1);
  if (headerLines.length > limits.maxHeaderCount) return refuse(431, "too many request headers");
  const headers: [string, string][] = [];
  for (const line of headerLines) {
    if (line.startsWith(" ") || line.startsWith("\t")) return refuse(400, "obsolete header line folding");
    const colon = line.indexOf(":");
    if (colon <= 0) return refuse(400, "malformed header line");
    const name = line.slice(0, colon);
    if (!TOKEN.test(name)) return refuse(400, "invalid header name");
    const value = line.slice(colon + 1).trim();
    if (/[\0\r\n]/.test(value)) return refuse(400, "invalid header value");
    headers.push([name.toLowerCase(), value]);
  }
  const framing = bodyFraming(headers, limits);
  if ("status" in framing) return { kind: "refused", refusal: framing };
  const connection = headerTokens(headers, "connection");
  const keepAlive = version === "1.1" ? !connection.includes("close") : connection.includes("keep-alive");
  const expectContinue = version === "1.1" && headerTokens(headers, "expect").includes("100-continue");
  return {
    kind: "head",
    head: { method: m[1]!, target: m[2]!, version, headers, body: framing, keepAlive, expectContinue },
    consumed: end + 1,
  };
}

/** From the LF at `from`: the index of the LF ending the blank line, or -1 with the last LF visited. */
function findHeadEnd(buf: Uint8Array, from: number): { end: number; lastLf: number } {
  let lastLf = from;
  for (let i = from; i >= 0 && i < buf.length; i = buf.indexOf(LF, i + 1)) {
    lastLf = i;
    if (buf[i + 1] === LF) return { end: i + 1, lastLf };
    if (buf[i + 1] === CR && buf[i + 2] === LF) return { end: i + 2, lastLf };
  }
  return { end: -1, lastLf };
}

function bodyFraming(
  headers: readonly (readonly [string, string])[],
  limits: Http1Limits,
): BodyFraming | HttpRefusal {
  const te = headers.filter(([n]) => n === "transfer-encoding").map(([, v]) => v);
  const cl = headers.filter(([n]) => n === "content-length").map(([, v]) => v);
  if (te.length > 0) {
    // Both framings at once is the classic request-smuggling shape (RFC 9112 §6.3): refuse rather than pick.
    if (cl.length > 0) return { status: 400, reason: "both Transfer-Encoding and Content-Length" };
    const codings = te
      .flatMap((v) => v.split(","))
      .map((c) => c.trim().toLowerCase())
      .filter(Boolean);
    if (codings.length === 1 && codings[0] === "chunked") return { kind: "chunked" };
    return { status: 501, reason: "unsupported transfer coding" };
  }
  if (cl.length === 0) return { kind: "none" };
  const values = new Set(cl.flatMap((v) => v.split(",")).map((v) => v.trim()));
  if (values.size !== 1) return { status: 400, reason: "conflicting Content-Length" };
  const [only] = values;
  if (!only || !/^\d{1,15}$/.test(only)) return { status: 400, reason: "invalid Content-Length" };
  const length = Number(only);
  if (length > limits.maxBodyBytes) return { status: 413, reason: "request body too large" };
  return length === 0 ? { kind: "none" } : { kind: "length", length };
}

function headerTokens(headers: readonly (readonly [string, string])[], name: string): string[] {
  return headers
    .filter(([n]) => n === name)
    .flatMap(([, v]) => v.split(","))
    .map((t) => t.trim().toLowerCase());
}

function latin1(buf: Uint8Array, start: number, end: number): string {
  return Buffer.from(buf.buffer, buf.byteOffset + start, end - start).toString("latin1");
}

function refuse(status: HttpRefusal["status"], reason: string): HeadResult {
  return { kind: "refused", refusal: { status, reason } };
}

/**
 * Incremental decoder for `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1): size lines in hex with optional
 * extensions, CRLF or bare LF line ends, trailers read and ignored. Counts data against the body limit as it
 * goes, so an endless chunked body is refused at the limit rather than buffered.
 */
export class ChunkedDecoder {
  #state: "size" | "data" | "data-end" | "trailer" | "done" = "size";
  #remaining = 0;
  #total = 0;
  #line = "";
  #trailerBytes = 0;
  readonly #maxBody: number;
  readonly #parts: Uint8Array[] = [];

  constructor(maxBodyBytes: number) {
    this.#maxBody = maxBodyBytes;
  }

  get done(): boolean {
    return this.#state === "done";
  }

  /** The decoded body (valid once `done`). */
  body(): Uint8Array {
    return this.#parts.length === 1 ? this.#parts[0]! : Buffer.concat(this.#parts);
  }

  /**
   * Consumes bytes from `buf`; returns how many were used (the rest belongs to the next pipelined request),
   * or a refusal.
   */
  push(buf: Uint8Array): number | HttpRefusal {
    let i = 0;
    while (i < buf.length && this.#state !== "done") {
      if (this.#state === "data") {
        const take = Math.min(this.#remaining, buf.length - i);
        this.#parts.push(buf.subarray(i, i + take));
        i += take;
        this.#remaining -= take;
        if (this.#remaining === 0) this.#state = "data-end";
        continue;
      }
      const lf = buf.indexOf(LF, i);
      const piece = Buffer.from(buf.buffer, buf.byteOffset + i, (lf < 0 ? buf.length : lf) - i).toString(
        "latin1",
      );
      if (this.#line.length + piece.length > 1024) return { status: 400, reason: "chunk line too long" };
      this.#line += piece;
      if (lf < 0) return buf.length;
      i = lf + 1;
      const line = this.#line.endsWith("\r") ? this.#line.slice(0, -1) : this.#line;
      this.#line = "";
      const refusal = this.#onLine(line);
      if (refusal) return refusal;
    }
    return i;
  }

  #onLine(line: string): HttpRefusal | undefined {
    switch (this.#state) {
      case "size": {
        const m = /^([0-9A-Fa-f]{1,8})[ \t]*(;.*)?$/.exec(line);
        if (!m) return { status: 400, reason: "invalid chunk size" };
        const size = Number.parseInt(m[1]!, 16);
        this.#total += size;
        if (this.#total > this.#maxBody) return { status: 413, reason: "request body too large" };
        if (size === 0) this.#state = "trailer";
        else {
          this.#remaining = size;
          this.#state = "data";
        }
        return undefined;
      }
      case "data-end":
        if (line !== "") return { status: 400, reason: "chunk data longer than its size" };
        this.#state = "size";
        return undefined;
      case "trailer":
        if (line === "") this.#state = "done";
        this.#trailerBytes += line.length + 1;
        if (this.#trailerBytes > MAX_TRAILER_BYTES)
          return { status: 431, reason: "request trailers too large" };
        return undefined;
      default:
        return undefined;
    }
  }
}
