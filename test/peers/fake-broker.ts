/**
 * A fake upstream PCoIP broker that behaves on the wire like the real public one (PROTOCOL.md §10,
 * interstate_love_song 2.0.4 behind gunicorn): a raw HTTP/1.1 server on Bun.listen TLS (Bun.serve would send
 * Content-Length and normalise headers), so every byte is as the real broker writes it:
 *   - strict order hello → authenticate (repeatable on failure) → get-resource-list → allocate-resource → bye;
 *     anything out of order is HTTP 500 with `<error><title>…</title><description>…</description></error>` and
 *     resets the conversation to "waiting for hello"; `bye` is accepted in any state;
 *   - the probe hello (QueryBrokerClient) gets a full hello-resp and a cookie but creates no conversation;
 *   - a chunked request body is read as empty → 400 "Malformed XML"; bad XML → 400; other paths → 404;
 *   - `Set-Cookie: JSESSIONID=<32 lower-case hex>; HttpOnly; Path=/; Secure` when it creates its session (on any
 *     answer, errors included), never rotated; or, in ILS's cookie-less mode, Client-Log-Id is the session key;
 *   - lower-case `content-type: application/xml`, success answers chunked, error answers with Content-Length;
 *   - `<?xml version='1.0' encoding='utf-8'?>`, a newline before the root, `<bye-resp />`, broker ip `N/A`;
 *   - resource ids "0", "1", … matched exactly; an unknown id is HTTP 500;
 *   - idle keep-alive connections closed after 2 s;
 *   - allocation either launches the session on the agent itself (launch-session to agent:60443, full target,
 *     HTTP 500 when the agent does not answer within its own 10 s) or names only the desktop host.
 * It can be told to fail in each way a CM must survive: time out, close mid-answer, HTTP 500, garbage, wrong
 * root, stop listening (connection refused), and serve a bad certificate (self-signed, wrong CA, 1024-bit key,
 * or one "re-signed" by a TLS-inspection proxy CA).
 */
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import type { Socket, TCPSocketListener } from "bun";
import {
  buildLaunchSession,
  parseLaunchSessionResp,
  WINDOWS_PASSWORD_LOGON,
} from "../../src/protocol/agent.ts";
import { parseClientRequest } from "../../src/protocol/broker.ts";
import type { BrokerRoot, ClientRequest, XmlNode } from "../../src/protocol/types.ts";
import { makeCa as makeTestCa, openssl, signLeaf, testPki } from "./test-certs.ts";

export interface FakeDesktop {
  readonly name: string;
  /** The agent's address as the broker knows it (its launch-session goes to agentHost:agentPort). */
  readonly agentHost: string;
  readonly agentPort?: number;
  /** The desktop's host name (target/hostname); agentHost when omitted. */
  readonly hostname?: string;
}

export interface FakeUser {
  readonly password: string;
  readonly desktops: readonly FakeDesktop[];
  /** When set, the password step answers AUTH_SUCCESSFUL_AND_INCOMPLETE and a `dialog` step must send this. */
  readonly dialogCode?: string;
}

export type FakeBrokerCertificate = "good" | "self-signed" | "wrong-ca" | "weak-key" | "inspection";

export interface FakeBrokerOptions {
  readonly hostname?: string;
  readonly port?: number;
  readonly certificate?: FakeBrokerCertificate;
  readonly users?: Readonly<Record<string, FakeUser>>;
  /** "broker": the broker launches the session (full target); "host-only": the target names only the host. */
  readonly launch?: "broker" | "host-only";
  /** The broker's own agent timeout (ILS: 10 s): after it, allocate-resource is answered HTTP 500. */
  readonly agentTimeoutMs?: number;
  /** Idle keep-alive connections are closed after this (gunicorn: 2 s). */
  readonly idleCloseMs?: number;
  /** Request roots accepted (ILS: only pcoip-client). */
  readonly roots?: readonly BrokerRoot[];
  /** Root of the answers. */
  readonly replyRoot?: BrokerRoot;
  readonly domains?: readonly string[];
  /** "cookie" (default): JSESSIONID; "client-log-id": ILS's fallback mode, the Client-Log-Id header is the key. */
  readonly sessionKey?: "cookie" | "client-log-id";
  /** Milliseconds before answering each operation, e.g. { authenticate: 1500 } (a slow password check). */
  readonly delayMs?: Readonly<Partial<Record<string, number>>>;
}

/**
 * timeout: never answers; close-mid-response: half an answer, then closes; close-before-answer: reads the request
 * and closes without a byte (what a server's idle timer does to a request that raced it); http-500; garbage
 * (200, not XML); wrong-root (200, well-formed XML that is not pcoip-client — a login portal's page);
 * success-without-target (allocate-resource answered ALLOC_SUCCESSFUL with no target).
 */
export type FakeBrokerFault =
  | "timeout"
  | "close-mid-response"
  | "close-before-answer"
  | "http-500"
  | "garbage"
  | "wrong-root"
  | "success-without-target";

export interface FakeBrokerRequest {
  readonly connId: number;
  readonly method: string;
  readonly path: string;
  /** Header lines as received (name spelling kept). */
  readonly headerLines: readonly (readonly [string, string])[];
  /** The value of a header (name without case), or undefined. */
  header(name: string): string | undefined;
  readonly body: string;
  readonly chunked: boolean;
  /** Root element and operation, when the body parsed. */
  readonly root?: string;
  readonly op?: string;
  readonly node?: XmlNode;
  /** The JSESSIONID the request carried, if any. */
  readonly cookie?: string;
  /** The broker session that handled it. */
  readonly sessionId: string;
  /** The HTTP status answered (undefined while unanswered, e.g. a "timeout" fault). */
  status?: number;
}

export interface FakeLaunch {
  readonly agent: string;
  readonly username: string;
  readonly clientIp: string;
  readonly sessionLogId: string;
  readonly resultId: string;
}

export interface FakeBroker {
  readonly hostname: string;
  readonly port: number;
  /** https://127.0.0.1:PORT (no path: the CM adds /pcoip-broker/xml). */
  readonly url: string;
  /** The certificate served (PEM) and the CA a CM should trust for a "good" broker (the test CA). */
  readonly certPem: string;
  readonly caCert: string;
  /** The CA that signed an "inspection" certificate (to trust it on purpose). */
  readonly inspectionCaCert: string;
  readonly requests: readonly FakeBrokerRequest[];
  readonly launches: readonly FakeLaunch[];
  /** Connections accepted so far. */
  readonly connections: number;
  /** Fail requests (those naming `op`, or all) `times` times (default: until clearFaults). */
  fail(fault: FakeBrokerFault, opts?: { op?: string; times?: number }): void;
  clearFaults(): void;
  /** Stops accepting: new connections are refused (ECONNREFUSED); open ones stay. */
  stopListening(): void;
  /** Closes every open connection now (what a broker restart does to kept-alive connections). */
  dropConnections(): void;
  /** Broker sessions and their state, for assertions. */
  sessionStates(): ReadonlyMap<string, string>;
  /** Requests of `op` being answered now, and the most there ever were at once (with `delayMs`). */
  inFlight(op: string): { now: number; peak: number };
  close(): Promise<void>;
}

type State = "WAIT_HELLO" | "WAIT_AUTH" | "WAIT_LIST" | "WAIT_ALLOC" | "WAIT_BYE";

interface Session {
  state: State;
  user?: string;
  password?: string;
  domain?: string;
  dialogPending?: string;
  desktops: readonly FakeDesktop[];
}

interface Conn {
  id: number;
  buf: Buffer;
  busy: boolean;
  idle: ReturnType<typeof setTimeout> | undefined;
}

interface Answer {
  status: number;
  body: string;
  chunked: boolean;
  contentType: string;
}

const DEFAULT_USERS: Record<string, FakeUser> = {};

export async function startFakeBroker(options: FakeBrokerOptions = {}): Promise<FakeBroker> {
  const hostname = options.hostname ?? "127.0.0.1";
  const certs = brokerCertificates();
  const served = certs.serve(options.certificate ?? "good");
  const users = options.users ?? DEFAULT_USERS;
  const launchMode = options.launch ?? "broker";
  const agentTimeoutMs = options.agentTimeoutMs ?? 10_000;
  const idleCloseMs = options.idleCloseMs ?? 2_000;
  const roots = options.roots ?? ["pcoip-client"];
  const replyRoot = options.replyRoot ?? "pcoip-client";
  const domains = options.domains ?? ["corp.example"];
  const byLogIdMode = options.sessionKey === "client-log-id";

  const requests: FakeBrokerRequest[] = [];
  const flights = new Map<string, { now: number; peak: number }>();
  const launches: FakeLaunch[] = [];
  const sessions = new Map<string, Session>();
  let faults: { fault: FakeBrokerFault; op?: string; times: number }[] = [];
  const open = new Set<Socket<Conn>>();
  const held = new Set<Socket<Conn>>();
  let connSeq = 0;
  let listening = true;

  const handlers = {
    open(s: Socket<Conn>) {
      s.data = { id: ++connSeq, buf: Buffer.alloc(0), busy: false, idle: undefined };
      open.add(s);
      armIdle(s);
    },
    data(s: Socket<Conn>, d: Buffer) {
      if (s.data.idle) clearTimeout(s.data.idle);
      s.data.idle = undefined;
      s.data.buf = Buffer.concat([s.data.buf, d]);
      void pump(s);
    },
    close(s: Socket<Conn>) {
      if (s.data.idle) clearTimeout(s.data.idle);
      open.delete(s);
      held.delete(s);
    },
    error() {},
  };

  const listener: TCPSocketListener<Conn> = Bun.listen<Conn>({
    hostname,
    port: options.port ?? 0,
    tls: { cert: served.cert, key: served.key },
    socket: handlers,
  });

  function armIdle(s: Socket<Conn>): void {
    if (s.data.idle) clearTimeout(s.data.idle);
    s.data.idle = setTimeout(() => {
      if (!s.data.busy) s.end();
    }, idleCloseMs);
  }

  async function pump(s: Socket<Conn>): Promise<void> {
    if (s.data.busy) return;
    const parsed = readRequest(s.data.buf);
    if (parsed === "more") return;
    if (parsed === "bad") {
      write(
        s,
        { status: 400, body: errorBody("400 Bad Request", "Bad request"), chunked: false, contentType: "" },
        undefined,
      );
      s.end();
      return;
    }
    s.data.buf = s.data.buf.subarray(parsed.consumed);
    s.data.busy = true;
    try {
      await handle(s, parsed);
    } finally {
      s.data.busy = false;
    }
    if (open.has(s) && !held.has(s)) {
      armIdle(s);
      if (s.data.buf.length > 0) void pump(s);
    }
  }

  async function handle(s: Socket<Conn>, raw: RawRequest): Promise<void> {
    const header = (name: string) => raw.headers.find(([k]) => k.toLowerCase() === name.toLowerCase())?.[1];
    const cookie = /(?:^|;\s*)JSESSIONID=([^;]*)/.exec(header("cookie") ?? "")?.[1];
    const logId = header("client-log-id");
    let sessionId: string | undefined;
    let setCookie: string | undefined;
    if (byLogIdMode) {
      sessionId = logId || randomBytes(16).toString("hex");
      if (!sessions.has(sessionId)) sessions.set(sessionId, { state: "WAIT_HELLO", desktops: [] });
    } else {
      if (cookie && sessions.has(cookie)) sessionId = cookie;
      if (!sessionId) {
        sessionId = randomBytes(16).toString("hex");
        sessions.set(sessionId, { state: "WAIT_HELLO", desktops: [] });
        setCookie = `JSESSIONID=${sessionId}; HttpOnly; Path=/; Secure`;
      }
    }
    const session = sessions.get(sessionId)!;
    // A chunked body is read as empty (what the real broker does).
    const body = raw.chunked ? "" : raw.body;
    const parsed = body === "" ? undefined : parseClientRequest(body, { roots });
    const msg = parsed?.ok ? parsed.msg : undefined;
    const rootMatch = /<([A-Za-z][\w.-]*)[\s>/]/.exec(body.replace(/<\?[^>]*\?>/, ""));
    const record: FakeBrokerRequest = {
      connId: s.data.id,
      method: raw.method,
      path: raw.path,
      headerLines: raw.headers,
      header,
      body: raw.body,
      chunked: raw.chunked,
      ...(rootMatch ? { root: rootMatch[1]! } : {}),
      ...(msg ? { op: msg.op, node: msg.node } : {}),
      ...(cookie !== undefined ? { cookie } : {}),
      sessionId,
    };
    requests.push(record);

    const fault = takeFault(msg?.op);
    if (fault === "timeout") {
      held.add(s);
      return;
    }
    if (fault === "close-before-answer") {
      held.add(s);
      s.end();
      return;
    }
    if (fault === "close-mid-response") {
      const head = `HTTP/1.1 200 OK\r\nServer: gunicorn\r\ncontent-type: application/xml\r\ncontent-length: 400\r\n\r\n`;
      s.write(`${head}<?xml version='1.0' encoding='utf-8'?>\n<pcoip-client version="2.1"><hello-`);
      s.end();
      record.status = 200;
      return;
    }
    const delay = msg ? options.delayMs?.[msg.op] : undefined;
    if (delay) {
      const f = flights.get(msg!.op) ?? { now: 0, peak: 0 };
      flights.set(msg!.op, f);
      f.now++;
      f.peak = Math.max(f.peak, f.now);
      await Bun.sleep(delay);
      f.now--;
    }
    let answer: Answer;
    if (fault === "http-500") {
      session.state = "WAIT_HELLO";
      answer = error(500, "Internal Server Error", "A server error occurred.");
    } else if (fault === "success-without-target") {
      answer = ok(
        "<allocate-resource-resp><result><result-id>ALLOC_SUCCESSFUL</result-id><result-str>Resource was allocated successfully.</result-str></result></allocate-resource-resp>",
      );
    } else if (fault === "garbage") {
      answer = { status: 200, body: "this is not XML at all <<<", chunked: true, contentType: "text/html" };
    } else if (fault === "wrong-root") {
      answer = {
        status: 200,
        body: "<?xml version='1.0' encoding='utf-8'?>\n<html><head><title>Sign in</title></head><body>Proxy login</body></html>",
        chunked: true,
        contentType: "application/xml",
      };
    } else {
      answer = await respond(raw, session, msg, parsed?.ok === false || body === "", header);
    }
    record.status = answer.status;
    write(s, answer, setCookie);
  }

  async function respond(
    raw: RawRequest,
    session: Session,
    msg: ClientRequest | undefined,
    malformed: boolean,
    header: (n: string) => string | undefined,
  ): Promise<Answer> {
    const path = raw.path.replace(/\/$/, "");
    if (path !== "/pcoip-broker/xml") return error(404, "Not Found", "The requested resource was not found.");
    if (raw.method === "GET") {
      return {
        status: 200,
        body: "<html><body>PCoIP broker</body></html>",
        chunked: false,
        contentType: "text/html",
      };
    }
    if (raw.method !== "POST") return error(405, "Method Not Allowed", "Use POST.");
    if (malformed || !msg) return error(400, "Bad Request", "Malformed XML");

    const outOfOrder = (): Answer => {
      session.state = "WAIT_HELLO";
      return error(500, "Internal Server Error", `Unexpected message ${msg.op}`);
    };
    switch (msg.op) {
      case "bye":
        session.state = "WAIT_HELLO";
        delete session.user;
        delete session.password;
        return ok("<bye-resp />");
      case "hello":
        if (session.state !== "WAIT_HELLO") return outOfOrder();
        if (!msg.isProbe) session.state = "WAIT_AUTH";
        return ok(helloResp());
      case "authenticate": {
        if (session.state !== "WAIT_AUTH") return outOfOrder();
        if (msg.method === "password") {
          const u = users[msg.username];
          if (!u || u.password !== msg.password) {
            return ok(authResp("password", "AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD", BAD_LOGIN));
          }
          session.user = msg.username;
          session.password = msg.password;
          session.domain = msg.domain;
          session.desktops = u.desktops;
          if (u.dialogCode !== undefined) {
            session.dialogPending = u.dialogCode;
            return ok(
              authResp(
                "password",
                "AUTH_SUCCESSFUL_AND_INCOMPLETE",
                "Enter the code from your authenticator",
                '<next-authentication><authentication-methods><method>AUTHENTICATE_VIA_DIALOG</method></authentication-methods></next-authentication><dialog><title>Second factor</title><prompt echo="false">Code</prompt></dialog>',
              ),
            );
          }
          session.state = "WAIT_LIST";
          return ok(authResp("password", "AUTH_SUCCESSFUL_AND_COMPLETE", "Authentication successful"));
        }
        if (msg.method === "dialog" && session.dialogPending !== undefined) {
          const answer = textOf(msg.node.response);
          if (answer !== session.dialogPending) {
            return ok(authResp(undefined, "AUTH_FAILED_DIALOG_INVALID_USER_ENTRY", "The code is not valid"));
          }
          delete session.dialogPending;
          session.state = "WAIT_LIST";
          return ok(authResp(undefined, "AUTH_SUCCESSFUL_AND_COMPLETE", "Authentication successful"));
        }
        return ok(authResp(msg.method, "AUTH_FAILED_ACCESS_DENIED", BAD_LOGIN));
      }
      case "get-resource-list":
        if (session.state !== "WAIT_LIST") return outOfOrder();
        session.state = "WAIT_ALLOC";
        return ok(listResp(session.desktops));
      case "allocate-resource": {
        if (session.state !== "WAIT_ALLOC") return outOfOrder();
        const index = /^(0|[1-9]\d*)$/.test(msg.resourceId) ? Number(msg.resourceId) : -1;
        const desktop = session.desktops[index];
        if (!desktop) return outOfOrder();
        if (launchMode === "host-only") {
          session.state = "WAIT_BYE";
          return ok(
            `<allocate-resource-resp><result><result-id>ALLOC_SUCCESSFUL</result-id><result-str>Resource was allocated successfully.</result-str></result><target><ip-address>${esc(desktop.agentHost)}</ip-address><hostname>${esc(desktop.hostname ?? desktop.agentHost)}</hostname></target><resource-id>${esc(msg.resourceId)}</resource-id><protocol>PCOIP</protocol></allocate-resource-resp>`,
          );
        }
        const launched = await launchOnAgent(desktop, session, msg, header("client-log-id") ?? "");
        if (launched === "timeout" || launched === "error") {
          session.state = "WAIT_HELLO";
          return error(500, "Internal Server Error", "A server error occurred.");
        }
        if (launched.resultId !== "SUCCESSFUL" || !launched.sessionInfo) {
          // The real broker passes the agent's code through, with its own misspelling.
          const id =
            launched.resultId === "FAILED_ANOTHER_SESSION_STARTED"
              ? "FAILED_ANOTHER_SESION_STARTED"
              : launched.resultId;
          return ok(
            `<allocate-resource-resp><result><result-id>${esc(id)}</result-id><result-str>${esc(launched.failReason)}</result-str></result></allocate-resource-resp>`,
          );
        }
        session.state = "WAIT_BYE";
        const si = launched.sessionInfo;
        return ok(
          `<allocate-resource-resp><result><result-id>ALLOC_SUCCESSFUL</result-id><result-str>Resource was allocated successfully.</result-str></result><target><ip-address>${esc(si.ipAddress)}</ip-address><hostname>${esc(desktop.hostname ?? desktop.agentHost)}</hostname><sni>${esc(si.sni)}</sni><port>${si.port}</port><session-id>${esc(si.sessionId)}</session-id><connect-tag>${esc(si.sessionTag)}</connect-tag></target><resource-id>${esc(msg.resourceId)}</resource-id><protocol>PCOIP</protocol></allocate-resource-resp>`,
        );
      }
    }
  }

  async function launchOnAgent(
    desktop: FakeDesktop,
    session: Session,
    msg: Extract<ClientRequest, { op: "allocate-resource" }>,
    logId: string,
  ) {
    const body = launchSessionBody(desktop, session, msg, logId);
    const port = desktop.agentPort ?? 60443;
    const answer = await postToAgent(desktop.agentHost, port, body, agentTimeoutMs);
    if (answer === "timeout" || answer === "error") return answer;
    const parsed = parseLaunchSessionResp(answer);
    if (!parsed.ok) return "error" as const;
    launches.push({
      agent: `${desktop.agentHost}:${port}`,
      username: session.user ?? "",
      clientIp: msg.clientIpAddress,
      sessionLogId: logId,
      resultId: parsed.msg.resultId,
    });
    return parsed.msg;
  }

  function takeFault(op: string | undefined): FakeBrokerFault | undefined {
    const f = faults.find((x) => x.op === undefined || x.op === op);
    if (!f) return undefined;
    f.times--;
    if (f.times <= 0) faults = faults.filter((x) => x !== f);
    return f.fault;
  }

  function ok(inner: string): Answer {
    return {
      status: 200,
      body: `<?xml version='1.0' encoding='utf-8'?>\n<${replyRoot} version="2.1">${inner}</${replyRoot}>`,
      chunked: true,
      contentType: "application/xml",
    };
  }

  function helloResp(): string {
    return `<hello-resp><brokers-info><broker-info><product-name>Interstate Love Song</product-name><product-version>2.0.4</product-version><platform>linux</platform><locale>en_US</locale><ip-address>N/A</ip-address><hostname>fake-broker</hostname></broker-info></brokers-info><next-authentication><authentication-methods><method>AUTHENTICATE_VIA_PASSWORD</method></authentication-methods><domains>${domains.map((d) => `<domain>${esc(d)}</domain>`).join("")}</domains></next-authentication><motd>Welcome to the fake broker</motd></hello-resp>`;
  }

  function authResp(method: string | undefined, id: string, text: string, extra = ""): string {
    const m = method !== undefined ? ` method="${esc(method)}"` : "";
    return `<authenticate-resp${m}><result><result-id>${id}</result-id><result-str>${esc(text)}</result-str></result>${extra}</authenticate-resp>`;
  }

  function listResp(desktops: readonly FakeDesktop[]): string {
    const items = desktops
      .map(
        (d, i) =>
          `<resource><resource-name>${esc(d.name)}</resource-name><resource-id>${i}</resource-id><resource-type session-type="VDI">DESKTOP</resource-type><resource-state>UNKNOWN</resource-state><protocols><protocol is-default="true">PCOIP</protocol></protocols></resource>`,
      )
      .join("");
    return `<get-resource-list-resp><result><result-id>LIST_SUCCESSFUL</result-id><result-str>Successfully retrieved the list of resources</result-str></result>${items}</get-resource-list-resp>`;
  }

  function write(s: Socket<Conn>, a: Answer, setCookie: string | undefined): void {
    const lines = [
      `HTTP/1.1 ${a.status} ${REASONS[a.status] ?? "Unknown"}`,
      "Server: gunicorn",
      `Date: ${new Date().toUTCString()}`,
      "Connection: keep-alive",
    ];
    const bytes = Buffer.from(a.body, "utf8");
    if (a.chunked) lines.push("Transfer-Encoding: chunked");
    else lines.push(`content-length: ${bytes.length}`);
    if (a.contentType) lines.push(`content-type: ${a.contentType}`);
    if (setCookie) lines.push(`Set-Cookie: ${setCookie}`);
    let out = `${lines.join("\r\n")}\r\n\r\n`;
    if (a.chunked) {
      // Two chunks, so a reader that stops after the first one is caught.
      const half = Math.floor(bytes.length / 2);
      const parts = [bytes.subarray(0, half), bytes.subarray(half)].filter((p) => p.length > 0);
      s.write(out);
      for (const p of parts)
        s.write(Buffer.concat([Buffer.from(`${p.length.toString(16)}\r\n`), p, Buffer.from("\r\n")]));
      s.write("0\r\n\r\n");
      return;
    }
    out += a.body;
    s.write(out);
  }

  const actualPort = listener.port;
  return {
    hostname,
    port: actualPort,
    url: `https://${hostname}:${actualPort}`,
    certPem: served.cert,
    caCert: certs.ca,
    get inspectionCaCert() {
      return certs.inspectionCa();
    },
    requests,
    launches,
    get connections() {
      return connSeq;
    },
    fail(fault, opts = {}) {
      faults.push({
        fault,
        ...(opts.op ? { op: opts.op } : {}),
        times: opts.times ?? Number.POSITIVE_INFINITY,
      });
    },
    clearFaults() {
      faults = [];
    },
    stopListening() {
      if (listening) listener.stop(false);
      listening = false;
    },
    dropConnections() {
      for (const s of open) s.terminate();
    },
    sessionStates() {
      return new Map([...sessions].map(([id, s]) => [id, s.state]));
    },
    inFlight(op) {
      const f = flights.get(op);
      return { now: f?.now ?? 0, peak: f?.peak ?? 0 };
    },
    async close() {
      if (listening) listener.stop(true);
      listening = false;
      for (const s of open) s.terminate();
    },
  };
}

const BAD_LOGIN = "User authentication failed. Please re-enter username, password, and/or domain.";

const REASONS: Record<number, string> = {
  200: "OK",
  400: "Bad Request",
  404: "Not Found",
  405: "Method Not Allowed",
  500: "Internal Server Error",
};

function error(status: number, title: string, description: string): Answer {
  return {
    status,
    body: errorBody(`${status} ${title}`, description),
    chunked: false,
    contentType: "application/xml; charset=UTF-8",
  };
}

function errorBody(title: string, description: string): string {
  return `<?xml version="1.0" encoding="UTF-8"?><error><title>${esc(title)}</title><description>${esc(description)}</description></error>`;
}

function esc(s: string): string {
  return s
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&apos;");
}

function textOf(v: unknown): string {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && "#text" in v) return String((v as Record<string, unknown>)["#text"]);
  return "";
}

interface RawRequest {
  method: string;
  path: string;
  headers: [string, string][];
  body: string;
  chunked: boolean;
  consumed: number;
}

/** One request from the front of `buf`: "more" when incomplete, "bad" when not HTTP. */
function readRequest(buf: Buffer): RawRequest | "more" | "bad" {
  const end = buf.indexOf("\r\n\r\n");
  if (end < 0) return buf.length > 65536 ? "bad" : "more";
  const lines = buf.subarray(0, end).toString("latin1").split("\r\n");
  const m = /^([A-Z]+) (\S+) HTTP\/1\.[01]$/.exec(lines[0] ?? "");
  if (!m) return "bad";
  const headers: [string, string][] = [];
  for (const l of lines.slice(1)) {
    const c = l.indexOf(":");
    if (c <= 0) return "bad";
    headers.push([l.slice(0, c), l.slice(c + 1).trim()]);
  }
  const get = (n: string) => headers.find(([k]) => k.toLowerCase() === n)?.[1];
  let pos = end + 4;
  if (/chunked/i.test(get("transfer-encoding") ?? "")) {
    const parts: Buffer[] = [];
    for (;;) {
      const le = buf.indexOf("\r\n", pos);
      if (le < 0) return "more";
      const size = Number.parseInt(buf.subarray(pos, le).toString("latin1"), 16);
      if (Number.isNaN(size)) return "bad";
      if (size === 0) {
        if (buf.length < le + 4) return "more";
        pos = le + 4;
        break;
      }
      if (buf.length < le + 2 + size + 2) return "more";
      parts.push(buf.subarray(le + 2, le + 2 + size));
      pos = le + 2 + size + 2;
    }
    return {
      method: m[1]!,
      path: m[2]!,
      headers,
      body: Buffer.concat(parts).toString("utf8"),
      chunked: true,
      consumed: pos,
    };
  }
  const len = Number(get("content-length") ?? "0");
  if (buf.length < pos + len) return "more";
  return {
    method: m[1]!,
    path: m[2]!,
    headers,
    body: buf.subarray(pos, pos + len).toString("utf8"),
    chunked: false,
    consumed: pos + len,
  };
}

/**
 * The launch-session a broker sends the desktop's agent for an allocate-resource: the signed-in user's password
 * logon, the client's MAC and IP, the session's log id. Both fake brokers (this one and falcon-broker.ts) send it.
 */
export function launchSessionBody(
  desktop: { readonly agentHost: string; readonly hostname?: string },
  login: { readonly user?: string; readonly password?: string; readonly domain?: string },
  msg: Extract<ClientRequest, { op: "allocate-resource" }>,
  logId: string,
): string {
  return buildLaunchSession({
    sessionType: "UNSPECIFIED",
    ipAddress: desktop.agentHost,
    hostname: desktop.hostname ?? desktop.agentHost,
    logon: {
      method: WINDOWS_PASSWORD_LOGON,
      username: login.user ?? "",
      password: login.password ?? "",
      domain: login.domain ?? "",
    },
    clientMac: msg.clientMacAddress,
    clientIp: msg.clientIpAddress,
    clientName: "",
    licensePath: "",
    sessionLogId: logId,
  });
}

/** POSTs launch-session to the agent over its own TLS (never through HTTPS_PROXY); "timeout" / "error". */
export function postToAgent(
  host: string,
  port: number,
  body: string,
  timeoutMs: number,
): Promise<string | "timeout" | "error"> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let done = false;
    const socket = tlsConnect({ host, port, rejectUnauthorized: false });
    const finish = (r: string | "timeout" | "error") => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => finish("timeout"), timeoutMs);
    socket.on("error", () => finish("error"));
    socket.on("data", (d: Buffer) => {
      chunks.push(d);
      const r = parseAgentAnswer(Buffer.concat(chunks));
      if (r !== undefined) finish(r);
    });
    socket.on("end", () => finish(parseAgentAnswer(Buffer.concat(chunks), true) ?? "error"));
    socket.once("secureConnect", () => {
      const b = Buffer.from(body, "utf8");
      socket.write(
        `POST /pcoip-agent/xml HTTP/1.1\r\nHost: ${host}:${port}\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-Length: ${b.length}\r\nConnection: close\r\n\r\n`,
      );
      socket.write(b);
    });
  });
}

/** The body of a complete 200 answer, "error" for another status, undefined while incomplete. */
function parseAgentAnswer(buf: Buffer, eof = false): string | "error" | undefined {
  const end = buf.indexOf("\r\n\r\n");
  if (end < 0) return eof ? "error" : undefined;
  const head = buf.subarray(0, end).toString("latin1");
  if (!/^HTTP\/1\.[01] 200/.test(head)) return "error";
  const rest = buf.subarray(end + 4);
  const cl = /\r\ncontent-length:\s*(\d+)/i.exec(head);
  if (cl) return rest.length >= Number(cl[1]) ? rest.subarray(0, Number(cl[1])).toString("utf8") : undefined;
  if (/\r\ntransfer-encoding:\s*chunked/i.test(head)) {
    const parts: Buffer[] = [];
    let pos = 0;
    for (;;) {
      const le = rest.indexOf("\r\n", pos);
      if (le < 0) return eof ? "error" : undefined;
      const size = Number.parseInt(rest.subarray(pos, le).toString("latin1"), 16);
      if (Number.isNaN(size)) return "error";
      if (size === 0) return Buffer.concat(parts).toString("utf8");
      if (rest.length < le + 2 + size + 2) return eof ? "error" : undefined;
      parts.push(rest.subarray(le + 2, le + 2 + size));
      pos = le + 2 + size + 2;
    }
  }
  return eof ? rest.toString("utf8") : undefined;
}

interface BrokerCertSet {
  /** The test CA (what a CM trusts for a "good" broker). */
  ca: string;
  /** The "TLS inspection proxy" CA (made on first use). */
  inspectionCa(): string;
  /** The certificate and key for a mode, made on first use (key generation is slow on a busy machine). */
  serve(mode: FakeBrokerCertificate): { cert: string; key: string };
}

/** Every certificate a fake broker can serve, made when first asked for, in the test PKI's folder. */
function brokerCertificates(): BrokerCertSet {
  const pki = testPki();
  const names = ["localhost", "127.0.0.1", "::1"];
  const dir = pki.dir;
  const file = (n: string) => join(dir, n);
  const makeCa = (base: string, cn: string) => {
    if (!existsSync(file(`${base}.pem`))) makeTestCa(dir, base, cn);
  };
  const makeLeaf = (base: string, caBase: string) => {
    if (!existsSync(file(`${base}.pem`))) signLeaf(dir, base, caBase, names);
  };
  const read = (base: string) => ({
    cert: readFileSync(file(`${base}.pem`), "utf8"),
    key: readFileSync(file(`${base}.key`), "utf8"),
  });
  return {
    ca: pki.ca.cert,
    inspectionCa() {
      makeCa("broker-inspection-ca", "Corp SSL Inspection Proxy CA");
      return read("broker-inspection-ca").cert;
    },
    serve(mode) {
      switch (mode) {
        case "good": {
          const l = pki.leaf(names);
          return { cert: l.cert, key: l.key };
        }
        case "weak-key": {
          const l = pki.leaf(names, { bits: 1024 });
          return { cert: l.cert, key: l.key };
        }
        case "wrong-ca":
          makeCa("broker-other-ca", "Some Other CA");
          makeLeaf("broker-wrong-ca", "broker-other-ca");
          return read("broker-wrong-ca");
        case "inspection":
          makeCa("broker-inspection-ca", "Corp SSL Inspection Proxy CA");
          makeLeaf("broker-inspected", "broker-inspection-ca");
          return read("broker-inspected");
        case "self-signed":
          if (!existsSync(file("broker-self.pem"))) {
            openssl([
              "req",
              "-x509",
              "-newkey",
              "rsa:2048",
              "-nodes",
              "-sha256",
              "-days",
              "30",
              "-subj",
              "/CN=localhost",
              "-keyout",
              file("broker-self.key"),
              "-out",
              file("broker-self.pem"),
              "-addext",
              "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
            ]);
          }
          return read("broker-self");
      }
    },
  };
}

if (import.meta.main) {
  // Demo: bun test/peers/fake-broker.ts --port 8443 --user alice:pw --desktop "CAD 1=127.0.0.1:60443"
  //       [--launch broker|host-only] [--host 127.0.0.1]   (prints one JSON line per request; never bodies)
  const args = process.argv.slice(2);
  const all = (name: string) =>
    args.flatMap((a, i) => (a === `--${name}` && args[i + 1] ? [args[i + 1]!] : []));
  const one = (name: string) => all(name)[0];
  const desktops: FakeDesktop[] = all("desktop").map((d) => {
    const [name = d, at = "127.0.0.1"] = d.split("=");
    const [agentHost = "127.0.0.1", port] = at.split(":");
    return { name, agentHost, ...(port ? { agentPort: Number(port) } : {}) };
  });
  const users = Object.fromEntries(
    all("user").map((u) => {
      const [name = u, password = ""] = u.split(":");
      return [name, { password, desktops }];
    }),
  );
  const launch = one("launch") === "host-only" ? "host-only" : "broker";
  const broker = await startFakeBroker({
    hostname: one("host") ?? "127.0.0.1",
    port: Number(one("port") ?? 0),
    users,
    launch,
  });
  const print = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
  print({ event: "ready", url: broker.url, caFile: `${testPki().dir}/ca.pem` });
  let seen = 0;
  const timer = setInterval(() => {
    for (const r of broker.requests.slice(seen)) {
      print({
        event: "request",
        conn: r.connId,
        op: r.op ?? null,
        status: r.status ?? null,
        client: r.header("x-forwarded-for") ?? null,
      });
    }
    seen = broker.requests.length;
  }, 200);
  process.on("SIGTERM", () => {
    clearInterval(timer);
    broker.close().then(() => process.exit(0));
  });
}
