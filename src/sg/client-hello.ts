/**
 * Reads the server name (SNI) from the bytes a client sends first on TCP 4172, without terminating TLS
 * (SPEC §4, PROTOCOL.md §6.3). Pure: bytes in, a value out, never a throw — the input is whatever a stranger on
 * the internet sent. The relay calls it again with more bytes while the answer is `need`.
 *
 * Layouts (RFC 8446 §5.1, §4.1.2; RFC 6066 §3):
 * ```
 * TLS record:   type(1)=22 handshake | version(2) 3.0–3.4 | length(2) 1..16384 | fragment
 * handshake:    msg_type(1)=1 ClientHello | length(3) | body        (may span several records)
 * ClientHello:  client_version(2) | random(32) | session_id<0..32> (1-byte length)
 *               | cipher_suites<2..2^16-2> (2-byte length) | compression_methods<1..255> (1-byte length)
 *               | extensions<0..2^16-1> (2-byte length; absent in very old hellos)
 * extension:    type(2) | length(2) | data          server_name is type 0:
 *               server_name_list length(2) | { name_type(1)=0 host_name | length(2) | name }…
 * ```
 */

/** The peek limit: a ClientHello bigger than this is refused (real ones are 0.3–2 KiB, 1.8 KiB with ML-KEM). */
export const MAX_CLIENT_HELLO_BYTES = 16 * 1024;

const RECORD_HEADER = 5;
const HANDSHAKE_HEADER = 4;
const MAX_RECORD_PAYLOAD = 16_384; // TLSPlaintext.length limit, RFC 8446 §5.1
const CONTENT_HANDSHAKE = 22;
const HANDSHAKE_CLIENT_HELLO = 1;
const EXT_SERVER_NAME = 0;
const NAME_TYPE_HOST = 0;

export type ClientHelloInvalid =
  /** the first byte is not a TLS handshake record (plain HTTP, SSH, random bytes) */
  | "not_tls"
  /** an SSLv2-format hello: no extensions, so no SNI, and no agent speaks SSLv2 */
  | "sslv2_hello"
  /** record version outside 3.0–3.4 */
  | "bad_record_version"
  /** a record of length 0 or over 16384 */
  | "bad_record_length"
  /** a handshake message other than ClientHello came first */
  | "not_client_hello"
  /** a non-handshake record arrived before the ClientHello was complete */
  | "interleaved_record"
  /** the hello (with its record headers) would exceed the peek limit */
  | "too_large"
  /** a length inside the ClientHello points past its end */
  | "malformed"
  /** the server_name is empty, too long or not printable ASCII */
  | "bad_sni";

export type ClientHelloResult =
  /** A complete ClientHello; `sni` lower-cased, `undefined` when the client sent no server_name. */
  | { readonly kind: "hello"; readonly sni: string | undefined }
  /** Incomplete: call again once at least `need` more bytes have arrived. */
  | { readonly kind: "need"; readonly need: number }
  | { readonly kind: "invalid"; readonly invalid: ClientHelloInvalid };

const invalid = (reason: ClientHelloInvalid): ClientHelloResult => ({ kind: "invalid", invalid: reason });
const need = (n: number): ClientHelloResult => ({ kind: "need", need: n });

/**
 * Where the record walk of earlier calls over the same (grown) buffer stopped: the records it completed are not
 * walked again, so a hello sent as many tiny records costs linear, not quadratic, time. One per connection.
 */
export interface HelloWalk {
  off: number;
  payload: number;
  msgTotal: number;
  spans: number[];
  spansLen: number;
}

export function newHelloWalk(): HelloWalk {
  return { off: 0, payload: 0, msgTotal: -1, spans: [], spansLen: 0 };
}

/**
 * Parses the start of a TLS connection.
 * @param buf everything received so far, from the first byte
 * @param maxBytes the peek limit (`MAX_CLIENT_HELLO_BYTES` unless a test narrows it)
 * @param walk the connection's walk state when `buf` is parsed again as it grows (same bytes at the same offsets)
 * @example parseClientHello(bytes) // → { kind: "hello", sni: "agent-7.corp.example" }
 */
export function parseClientHello(
  buf: Uint8Array,
  maxBytes = MAX_CLIENT_HELLO_BYTES,
  walk?: HelloWalk,
): ClientHelloResult {
  if (buf.length === 0) return need(RECORD_HEADER);
  if (buf[0] !== CONTENT_HANDSHAKE) return classifyFirstByte(buf);

  // Handshake bytes are gathered across records: spans[i] = [start, end) of payload present in buf.
  const spans: number[] = walk ? walk.spans : [];
  if (walk) spans.length = walk.spansLen; // the last call's incomplete record is walked again
  let payload = walk?.payload ?? 0; // handshake bytes present so far (in complete records, when resuming)
  let msgTotal = walk?.msgTotal ?? -1; // 4 + ClientHello length, once its header is known
  let off = walk?.off ?? 0;
  for (;;) {
    if (off + RECORD_HEADER > maxBytes) return invalid("too_large");
    if (buf.length < off + RECORD_HEADER) return need(off + RECORD_HEADER - buf.length);
    if (buf[off] !== CONTENT_HANDSHAKE) return invalid("interleaved_record");
    if (buf[off + 1] !== 3 || buf[off + 2]! > 4) return invalid("bad_record_version");
    const len = (buf[off + 3]! << 8) | buf[off + 4]!;
    if (len === 0 || len > MAX_RECORD_PAYLOAD) return invalid("bad_record_length");
    const start = off + RECORD_HEADER;
    const recEnd = start + len;
    const avail = Math.min(buf.length, recEnd) - start;
    const before = payload;
    spans.push(start, start + avail);
    payload += avail;

    if (before === 0 && avail > 0 && buf[start] !== HANDSHAKE_CLIENT_HELLO)
      return invalid("not_client_hello");
    if (msgTotal < 0 && payload >= HANDSHAKE_HEADER) {
      const h = gather(buf, spans, HANDSHAKE_HEADER);
      msgTotal = HANDSHAKE_HEADER + ((h[1]! << 16) | (h[2]! << 8) | h[3]!);
      // The hello needs at least its remaining payload after this record's header; refuse early when that
      // alone crosses the limit, so a hostile length cannot make us wait for 16 MiB.
      if (start + (msgTotal - before) > maxBytes) return invalid("too_large");
    }
    if (msgTotal >= 0 && payload >= msgTotal) return parseBody(gather(buf, spans, msgTotal));
    // What this record must still deliver before anything can be decided: up to the hello's end (or its header's)
    // when that lies inside the record, else the whole record. Waiting for the whole record instead refused a
    // hello that ends before the peek limit in a record that claims to run past it — which the whole buffer,
    // parsed at once, accepts (the fuzz suite found the disagreement).
    const decidedAt = start + (msgTotal >= 0 ? msgTotal : HANDSHAKE_HEADER) - before;
    const waitEnd = Math.min(recEnd, decidedAt);
    if (waitEnd > maxBytes) return invalid("too_large");
    if (buf.length < waitEnd) return need(waitEnd - buf.length);
    off = recEnd;
    if (walk) {
      walk.off = off;
      walk.payload = payload;
      walk.msgTotal = msgTotal;
      walk.spansLen = spans.length;
    }
  }
}

/** The first byte is not 22: tell SSLv2 hellos (high bit set, msg type 1 at byte 2) from everything else. */
function classifyFirstByte(buf: Uint8Array): ClientHelloResult {
  if ((buf[0]! & 0x80) === 0) return invalid("not_tls");
  if (buf.length < 3) return need(3 - buf.length);
  return buf[2] === HANDSHAKE_CLIENT_HELLO ? invalid("sslv2_hello") : invalid("not_tls");
}

/** The first `n` handshake bytes as one array: a view when one record holds them, else a copy (once per hello). */
function gather(buf: Uint8Array, spans: readonly number[], n: number): Uint8Array {
  if (spans[1]! - spans[0]! >= n) return buf.subarray(spans[0]!, spans[0]! + n);
  const out = new Uint8Array(n);
  let w = 0;
  for (let i = 0; i < spans.length && w < n; i += 2) {
    const take = Math.min(spans[i + 1]! - spans[i]!, n - w);
    out.set(buf.subarray(spans[i]!, spans[i]! + take), w);
    w += take;
  }
  return out;
}

/** Walks a complete ClientHello message (handshake header included) to the server_name extension. */
function parseBody(msg: Uint8Array): ClientHelloResult {
  const end = msg.length;
  let p = HANDSHAKE_HEADER + 2 + 32; // client_version, random
  if (p + 1 > end) return invalid("malformed");
  const sessionIdLen = msg[p]!;
  if (sessionIdLen > 32) return invalid("malformed");
  p += 1 + sessionIdLen;
  if (p + 2 > end) return invalid("malformed");
  const suitesLen = u16(msg, p);
  if (suitesLen < 2 || suitesLen % 2 !== 0) return invalid("malformed");
  p += 2 + suitesLen;
  if (p + 1 > end) return invalid("malformed");
  const compLen = msg[p]!;
  if (compLen < 1) return invalid("malformed");
  p += 1 + compLen;
  if (p > end) return invalid("malformed");
  if (p === end) return { kind: "hello", sni: undefined }; // pre-extension hello (SSL 3.0 style)
  if (p + 2 > end) return invalid("malformed");
  const extEnd = p + 2 + u16(msg, p);
  if (extEnd > end) return invalid("malformed");
  p += 2;
  while (p + 4 <= extEnd) {
    const type = u16(msg, p);
    const len = u16(msg, p + 2);
    p += 4;
    if (p + len > extEnd) return invalid("malformed");
    if (type === EXT_SERVER_NAME) return readServerName(msg, p, p + len);
    p += len;
  }
  return p === extEnd ? { kind: "hello", sni: undefined } : invalid("malformed");
}

function readServerName(msg: Uint8Array, from: number, to: number): ClientHelloResult {
  if (from + 2 > to) return invalid("malformed");
  const listEnd = from + 2 + u16(msg, from);
  if (listEnd > to) return invalid("malformed");
  let p = from + 2;
  while (p + 3 <= listEnd) {
    const nameType = msg[p]!;
    const len = u16(msg, p + 1);
    p += 3;
    if (p + len > listEnd) return invalid("malformed");
    if (nameType === NAME_TYPE_HOST) return hostName(msg.subarray(p, p + len));
    p += len;
  }
  return { kind: "hello", sni: undefined };
}

/** A host_name is ASCII (RFC 6066: no trailing dot, A-labels for IDNs); anything else is refused, not logged raw. */
function hostName(bytes: Uint8Array): ClientHelloResult {
  if (bytes.length === 0 || bytes.length > 255) return invalid("bad_sni");
  let s = "";
  for (const b of bytes) {
    if (b <= 0x20 || b >= 0x7f) return invalid("bad_sni");
    s += String.fromCharCode(b >= 0x41 && b <= 0x5a ? b + 0x20 : b);
  }
  return { kind: "hello", sni: s };
}

function u16(b: Uint8Array, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}
