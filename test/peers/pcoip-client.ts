/**
 * A PCoIP client as the CM sees one (PROTOCOL.md §1.2, §3): probe hello (QueryBrokerClient, no cookie) → hello →
 * authenticate → get-resource-list → allocate-resource → bye, over raw TLS so that it sees the exact header bytes.
 * Like the real client it
 * - sends the real client's odd headers (`User-Agent: Mozilla/4.0 (compatible; MSIE 6.0)`, `Accept: text/*,
 *   application/octet-stream`, `Content-Type: text/xml; charset=UTF-8`, `Connection: Keep-Alive`,
 *   `Cache-Control: no-cache`) and single-quoted XML attributes;
 * - keeps the cookie only when the header is spelled exactly `Set-Cookie` (the real client ignores `set-cookie`);
 * - reads chunked or Content-Length answers and records which one came.
 * Options: a Client-Log-Id, dropping cookies (to exercise the Client-Log-Id fallback), one kept-alive connection
 * or a new connection per request.
 *
 * Demo: `bun test/peers/pcoip-client.ts --url https://127.0.0.1:8443 --user demo --password demo [--domain D]
 * [--resource ID] [--insecure | --ca FILE]` prints each step and the target.
 */
import { readFileSync } from "node:fs";
import { connect, type TLSSocket } from "node:tls";
import { parseBrokerResponse } from "../../src/protocol/broker.ts";
import type { BrokerResponse } from "../../src/protocol/types.ts";

export interface PcoipClientOptions {
  readonly host: string;
  readonly port: number;
  /** CA to verify the CM with; without it, `insecure` must be true. */
  readonly ca?: string;
  readonly insecure?: boolean;
  readonly servername?: string;
  /** Sent as the Client-Log-Id header on every request. */
  readonly clientLogId?: string;
  /** Never send a cookie (a client whose cookie handling failed). */
  readonly dropCookies?: boolean;
  /** One kept-alive connection for every request (default), or a new one per request. */
  readonly keepAlive?: boolean;
  /** client-info/hostname of the hello. */
  readonly clientName?: string;
  readonly mac?: string;
  /** Extra request headers (e.g. X-Forwarded-For). */
  readonly headers?: readonly (readonly [string, string])[];
  /** Local address to connect from (e.g. "::1"). */
  readonly localAddress?: string;
}

export interface Answer {
  readonly status: number;
  /** Header lines as spelled on the wire, in order. */
  readonly headers: readonly (readonly [string, string])[];
  /** The raw head (status line and headers) as received. */
  readonly head: string;
  readonly body: string;
  readonly chunked: boolean;
  /** The parsed answer when the body is a broker response (undefined for error-resp and non-XML). */
  readonly msg: BrokerResponse | undefined;
  /** result-id of the body (also of an error-resp), "" when none. */
  readonly resultId: string;
  readonly resultStr: string;
  /** The operation element of the answer, e.g. "hello-resp" or "error-resp". */
  readonly operation: string;
}

export interface PcoipClient {
  /** Sends a raw body (anything: tests send garbage too). */
  post(body: string, opts?: { path?: string; lineEnd?: string }): Promise<Answer>;
  probe(): Promise<Answer>;
  hello(): Promise<Answer>;
  authenticate(user: string, password: string, domain?: string): Promise<Answer>;
  getResourceList(): Promise<Answer>;
  allocate(resourceId: string): Promise<Answer>;
  bye(): Promise<Answer>;
  /** The JSESSIONID value held (only from an exactly spelled Set-Cookie). */
  readonly cookie: string | undefined;
  /** TLS connections opened so far. */
  readonly connections: number;
  close(): void;
}

export function pcoipClient(options: PcoipClientOptions): PcoipClient {
  let cookie: string | undefined;
  let conn: Conn | undefined;
  let connections = 0;
  const keepAlive = options.keepAlive ?? true;

  const connection = async (): Promise<Conn> => {
    if (conn && !conn.closed) return conn;
    connections++;
    conn = await openConn(options);
    return conn;
  };

  const post = async (body: string, opts: { path?: string; lineEnd?: string } = {}): Promise<Answer> => {
    const eol = opts.lineEnd ?? "\r\n";
    const host = options.host.includes(":") ? `[${options.host}]` : options.host;
    const lines = [
      `POST ${opts.path ?? "/pcoip-broker/xml"} HTTP/1.1`,
      `Host: ${host}:${options.port}`,
      "User-Agent: Mozilla/4.0 (compatible; MSIE 6.0)",
      "Accept: text/*, application/octet-stream",
      "Content-Type: text/xml; charset=UTF-8",
      `Connection: ${keepAlive ? "Keep-Alive" : "close"}`,
      "Cache-Control: no-cache",
    ];
    if (options.clientLogId) lines.push(`Client-Log-Id: ${options.clientLogId}`);
    if (cookie && !options.dropCookies) lines.push(`Cookie: JSESSIONID=${cookie}`);
    for (const [k, v] of options.headers ?? []) lines.push(`${k}: ${v}`);
    lines.push(`Content-Length: ${Buffer.byteLength(body)}`);
    const c = await connection();
    const raw = await c.exchange(`${lines.join(eol)}${eol}${eol}${body}`);
    if (!keepAlive) {
      c.close();
      conn = undefined;
    }
    const answer = parseAnswer(raw);
    for (const [name, value] of answer.headers) {
      // The real client ignores any other spelling (PROTOCOL.md §1.2).
      if (name !== "Set-Cookie") continue;
      const m = /^JSESSIONID=([^;]*)/.exec(value);
      if (m) cookie = m[1];
    }
    return answer;
  };

  const doc = (inner: string) =>
    `<?xml version='1.0' encoding='UTF-8'?><pcoip-client version='2.1'>${inner}</pcoip-client>`;
  const clientInfo = (product: string, version: string, platform: string) =>
    `<client-info><product-name>${product}</product-name><product-version>${version}</product-version><platform>${platform}</platform><locale>en_US</locale><hostname>${esc(options.clientName ?? "laptop-17")}</hostname><serial-number>${options.mac ?? "02:42:ac:11:00:02"}</serial-number><device-name>${esc(options.clientName ?? "laptop-17")}</device-name><pcoip-unique-id>${options.mac ?? "02:42:ac:11:00:02"}</pcoip-unique-id></client-info>`;

  return {
    post,
    get cookie() {
      return cookie;
    },
    get connections() {
      return connections;
    },
    probe() {
      // The probe goes out without a cookie, like the real client's first request.
      const saved = cookie;
      cookie = undefined;
      return post(doc(`<hello>${clientInfo("QueryBrokerClient", "1.0", "PCoIP")}</hello>`)).finally(() => {
        cookie ??= saved;
      });
    },
    hello: () =>
      post(
        doc(
          `<hello>${clientInfo("Teradici PCoIP Desktop Client", "23.01.2", "Ubuntu 22.04 linux x86_64")}<caps><cap>CAP_NO_AUTHENTICATION</cap></caps><server-address><ip-address>${esc(options.host)}</ip-address><hostname>${esc(options.host)}</hostname></server-address></hello>`,
        ),
      ),
    authenticate: (user, password, domain = "") =>
      post(
        doc(
          `<authenticate method='password'><username>${esc(user)}</username><password>${esc(password)}</password><domain>${esc(domain)}</domain></authenticate>`,
        ),
      ),
    getResourceList: () =>
      post(
        doc(
          "<get-resource-list><protocols><protocol>PCOIP</protocol></protocols><resource-types><resource-type>DESKTOP</resource-type></resource-types></get-resource-list>",
        ),
      ),
    allocate: (resourceId) =>
      post(
        doc(
          `<allocate-resource><resource-id>${esc(resourceId)}</resource-id><protocol>PCOIP</protocol><client-info><ip-address>192.168.1.23</ip-address><mac-address>${options.mac ?? "02:42:ac:11:00:02"}</mac-address></client-info></allocate-resource>`,
        ),
      ),
    bye: () => post(doc("<bye/>")),
    close() {
      conn?.close();
      conn = undefined;
    },
  };
}

function esc(s: string): string {
  return s
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/'/g, "&apos;")
    .replace(/"/g, "&quot;");
}

interface Conn {
  exchange(bytes: string): Promise<Buffer>;
  readonly closed: boolean;
  close(): void;
}

async function openConn(o: PcoipClientOptions): Promise<Conn> {
  const socket: TLSSocket = connect({
    host: o.host,
    port: o.port,
    ...(o.ca ? { ca: o.ca } : {}),
    rejectUnauthorized: !o.insecure,
    servername: o.servername ?? "localhost",
    ...(o.localAddress ? { localAddress: o.localAddress } : {}),
  });
  await new Promise<void>((resolve, reject) => {
    socket.once("secureConnect", () => resolve());
    socket.once("error", reject);
  });
  let buf = Buffer.alloc(0);
  let closed = false;
  let waiter: (() => void) | undefined;
  socket.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    waiter?.();
  });
  socket.on("close", () => {
    closed = true;
    waiter?.();
  });
  socket.on("error", () => {
    closed = true;
    waiter?.();
  });
  return {
    get closed() {
      return closed;
    },
    close: () => socket.end(),
    async exchange(bytes) {
      buf = Buffer.alloc(0);
      socket.write(bytes);
      const deadline = Date.now() + 30_000;
      for (;;) {
        const n = completeLength(buf);
        if (n !== undefined) {
          const out = buf.subarray(0, n);
          buf = buf.subarray(n);
          return out;
        }
        if (closed)
          throw new Error(
            `pcoip client: connection closed; got ${JSON.stringify(buf.toString("latin1").slice(0, 300))}`,
          );
        if (Date.now() > deadline) throw new Error("pcoip client: no complete answer within 30 s");
        await new Promise<void>((r) => {
          waiter = r;
          setTimeout(r, 200);
        });
        waiter = undefined;
      }
    },
  };
}

/** Length of the first complete HTTP response in `buf`, or undefined. */
function completeLength(buf: Buffer): number | undefined {
  const headEnd = buf.indexOf("\r\n\r\n");
  if (headEnd < 0) return undefined;
  const head = buf.subarray(0, headEnd).toString("latin1");
  const start = headEnd + 4;
  if (/\r\ntransfer-encoding:\s*chunked/i.test(head)) {
    let i = start;
    for (;;) {
      const lineEnd = buf.indexOf("\r\n", i);
      if (lineEnd < 0) return undefined;
      const size = Number.parseInt(buf.subarray(i, lineEnd).toString("latin1"), 16);
      if (Number.isNaN(size)) throw new Error("pcoip client: bad chunk size");
      if (size === 0) {
        const end = buf.indexOf("\r\n", lineEnd + 2);
        return end < 0 ? undefined : end + 2;
      }
      if (buf.length < lineEnd + 2 + size + 2) return undefined;
      i = lineEnd + 2 + size + 2;
    }
  }
  const cl = /\r\ncontent-length:\s*(\d+)/i.exec(head);
  const len = cl ? Number(cl[1]) : 0;
  return buf.length >= start + len ? start + len : undefined;
}

function parseAnswer(raw: Buffer): Answer {
  const headEnd = raw.indexOf("\r\n\r\n");
  const head = raw.subarray(0, headEnd).toString("latin1");
  const [statusLine, ...headerLines] = head.split("\r\n");
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine ?? "")?.[1] ?? 0);
  const headers = headerLines.map((l) => {
    const c = l.indexOf(":");
    return [l.slice(0, c), l.slice(c + 1).trim()] as const;
  });
  const chunked = headers.some(([k, v]) => k.toLowerCase() === "transfer-encoding" && /chunked/i.test(v));
  let body: Buffer;
  if (chunked) {
    const parts: Buffer[] = [];
    let i = headEnd + 4;
    for (;;) {
      const lineEnd = raw.indexOf("\r\n", i);
      const size = Number.parseInt(raw.subarray(i, lineEnd).toString("latin1"), 16);
      if (size === 0) break;
      parts.push(raw.subarray(lineEnd + 2, lineEnd + 2 + size));
      i = lineEnd + 2 + size + 2;
    }
    body = Buffer.concat(parts);
  } else {
    body = raw.subarray(headEnd + 4);
  }
  const text = body.toString("utf8");
  const parsed = parseBrokerResponse(text, { roots: ["pcoip-client"] });
  const operation = /<pcoip-client[^>]*>\s*<([a-z-]+)/.exec(text)?.[1] ?? "";
  return {
    status,
    headers,
    head,
    body: text,
    chunked,
    msg: parsed.ok ? parsed.msg : undefined,
    resultId: /<result-id>([^<]*)<\/result-id>/.exec(text)?.[1] ?? "",
    resultStr: /<result-str>([^<]*)<\/result-str>/.exec(text)?.[1] ?? "",
    operation,
  };
}

if (import.meta.main) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : undefined;
  };
  const url = new URL(arg("url") ?? "https://127.0.0.1:8443");
  const caFile = arg("ca");
  const client = pcoipClient({
    host: url.hostname.replace(/^\[|\]$/g, ""),
    port: Number(url.port || 443),
    ...(caFile ? { ca: readFileSync(caFile, "utf8") } : {}),
    insecure: process.argv.includes("--insecure"),
    clientLogId: crypto.randomUUID(),
  });
  const step = (name: string, a: Answer) =>
    console.log(`${name.padEnd(18)} HTTP ${a.status} ${a.operation} ${a.resultId} ${a.resultStr}`.trimEnd());
  try {
    step("probe hello", await client.probe());
    step("hello", await client.hello());
    const auth = await client.authenticate(
      arg("user") ?? "demo",
      arg("password") ?? "demo",
      arg("domain") ?? "",
    );
    step("authenticate", auth);
    if (!auth.resultId.startsWith("AUTH_SUCCESSFUL")) process.exit(1);
    const list = await client.getResourceList();
    step("get-resource-list", list);
    const resources = list.msg?.op === "get-resource-list-resp" ? list.msg.resources : [];
    for (const r of resources) console.log(`  resource ${r.resourceId}: ${r.resourceName}`);
    const pick = arg("resource") ?? resources[0]?.resourceId;
    if (!pick) process.exit(1);
    const alloc = await client.allocate(pick);
    step("allocate-resource", alloc);
    if (alloc.msg?.op === "allocate-resource-resp" && alloc.msg.target) {
      const t = alloc.msg.target;
      console.log(
        `  target ${t.ipAddress}:${t.port} sni=${t.sni} session-id=${t.sessionId} connect-tag=${t.connectTag.slice(0, 8)}…`,
      );
    }
    step("bye", await client.bye());
  } finally {
    client.close();
  }
}
