/**
 * Response serialisation for the front door: canonical header spelling on the wire (real PCoIP clients ignore a
 * lower-case `set-cookie`), one line per cookie, and chunked transfer coding for every body of an HTTP/1.1
 * request (real clients refuse Content-Length bodies, PROTOCOL.md §1.2). An HTTP/1.0 request cannot read chunked
 * coding (RFC 9112 §6.1): its body goes with Content-Length, and the connection closes unless the request asked
 * for keep-alive.
 */
import type { RelayedResponse } from "./http1-options.ts";

const CANONICAL: Record<string, string> = {
  "set-cookie": "Set-Cookie",
  "content-type": "Content-Type",
  "transfer-encoding": "Transfer-Encoding",
  "content-length": "Content-Length",
  connection: "Connection",
  location: "Location",
  "cache-control": "Cache-Control",
  "www-authenticate": "WWW-Authenticate",
  "x-content-type-options": "X-Content-Type-Options",
  "strict-transport-security": "Strict-Transport-Security",
  etag: "ETag",
  "content-md5": "Content-MD5",
  te: "TE",
  dnt: "DNT",
};

/** `x-client-log-id` → `X-Client-Log-Id`; known names use their registered spelling. */
export function canonicalHeaderName(name: string): string {
  const lower = name.toLowerCase();
  return (
    CANONICAL[lower] ??
    lower.replace(/(^|-)([a-z])/g, (_m, dash: string, c: string) => dash + c.toUpperCase())
  );
}

const REASONS: Record<number, string> = {
  100: "Continue",
  200: "OK",
  201: "Created",
  204: "No Content",
  301: "Moved Permanently",
  302: "Found",
  304: "Not Modified",
  307: "Temporary Redirect",
  308: "Permanent Redirect",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  411: "Length Required",
  413: "Content Too Large",
  414: "URI Too Long",
  415: "Unsupported Media Type",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
  505: "HTTP Version Not Supported",
};

export function reasonPhrase(status: number): string {
  return REASONS[status] ?? "Unknown";
}

/** Headers we write ourselves; whatever the app set for them is replaced. */
const FRAMING = new Set(["content-length", "transfer-encoding", "connection", "date", "keep-alive"]);

/** Statuses that never carry a body (RFC 9110 §6.4.1). */
export function statusHasBody(status: number): boolean {
  return !(status < 200 || status === 204 || status === 304);
}

/** An HTTP/1.0 answer body is held to learn its length up to this size; past it, it ends with the connection. */
export const MAX_BUFFERED_BODY_BYTES = 1024 * 1024;

interface HeadOptions {
  readonly keepAlive: boolean;
  readonly chunked: boolean;
  readonly date: string;
  readonly contentLength?: number;
}

function statusLine(status: number, statusText: string, date: string): string {
  const reason = statusText && /^[\t !-~]*$/.test(statusText) ? statusText : reasonPhrase(status);
  return `HTTP/1.1 ${status} ${reason}\r\nDate: ${date}\r\n`;
}

function framing(opts: HeadOptions): string {
  let out = "";
  if (opts.chunked) out += "Transfer-Encoding: chunked\r\n";
  else if (opts.contentLength !== undefined) out += `Content-Length: ${opts.contentLength}\r\n`;
  return out + (opts.keepAlive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
}

/** The status line and headers of `res`, ending in the blank line. */
export function serializeHead(res: Response, opts: HeadOptions): string {
  let out = statusLine(res.status, res.statusText, opts.date);
  for (const [name, value] of res.headers) {
    if (name === "set-cookie" || FRAMING.has(name)) continue;
    out += `${canonicalHeaderName(name)}: ${value}\r\n`;
  }
  for (const cookie of res.headers.getSetCookie()) out += `Set-Cookie: ${cookie}\r\n`;
  return out + framing(opts);
}

/** The same head for an answer as plain data (headers flat, cookies apart): front-door workers. */
export function serializeRelayedHead(res: RelayedResponse, opts: HeadOptions): string {
  let out = statusLine(res.status, res.statusText, opts.date);
  const h = res.headers;
  for (let i = 0; i < h.length; i += 2) {
    const name = h[i]!;
    if (name === "set-cookie" || FRAMING.has(name)) continue;
    out += `${canonicalHeaderName(name)}: ${h[i + 1]}\r\n`;
  }
  for (const cookie of res.cookies) out += `Set-Cookie: ${cookie}\r\n`;
  return out + framing(opts);
}

const CRLF = Buffer.from("\r\n");

/** One chunk: size in hex, CRLF, data, CRLF. Empty data gives nothing (an empty chunk would end the body). */
export function chunkFrame(data: Uint8Array): Buffer[] {
  if (data.length === 0) return [];
  return [
    Buffer.from(`${data.length.toString(16)}\r\n`),
    Buffer.from(data.buffer, data.byteOffset, data.length),
    CRLF,
  ];
}

export const LAST_CHUNK = Buffer.from("0\r\n\r\n");

/** A short plain-text answer for refusals the app never sees (400, 408, 413, …); always closes. */
export function plainErrorResponse(status: number, reason: string, date: string): Buffer {
  const body = `${status} ${reasonPhrase(status)}: ${reason}\n`;
  return Buffer.from(
    `HTTP/1.1 ${status} ${reasonPhrase(status)}\r\nDate: ${date}\r\nContent-Type: text/plain; charset=utf-8\r\n` +
      `Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`,
    "latin1",
  );
}

type ResponseBody = NonNullable<Response["body"]>;

/**
 * Reads a response body whole, to send it with Content-Length (HTTP/1.0). Over `limit` bytes it stops and
 * returns what it read with the reader, for the caller to send the rest delimited by the connection's end.
 */
export async function readWholeBody(
  body: ResponseBody,
  limit: number = MAX_BUFFERED_BODY_BYTES,
): Promise<
  | { readonly whole: true; readonly bytes: Buffer }
  | {
      readonly whole: false;
      readonly head: Buffer;
      readonly more: () => Promise<Buffer | undefined>;
    }
> {
  const reader = body.getReader();
  const parts: Buffer[] = [];
  let size = 0;
  /** The next piece of the body, undefined at its end. */
  const more = async (): Promise<Buffer | undefined> => {
    const { done, value } = await reader.read();
    if (done) return undefined;
    return typeof (value as unknown) === "string"
      ? Buffer.from(value)
      : Buffer.from(value.buffer, value.byteOffset, value.length);
  };
  for (;;) {
    const b = await more();
    if (b === undefined) return { whole: true, bytes: Buffer.concat(parts) };
    parts.push(b);
    size += b.length;
    if (size > limit) return { whole: false, head: Buffer.concat(parts), more };
  }
}
