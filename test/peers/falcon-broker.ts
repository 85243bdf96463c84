/**
 * A test peer that behaves like the real open-source Python/falcon PCoIP broker (interstate_love_song: falcon
 * behind gunicorn, beaker sessions; PROTOCOL.md §10, issue 18) in the ways a CM in front of it must tell apart:
 *
 *   - protocol order (its `BrokerProtocolHandler` routing table): hello → authenticate (repeatable on failure)
 *     → get-resource-list → allocate-resource (repeatable on failure) → bye; a message the state has no route
 *     for RESETS the session to "waiting for hello" and is answered HTTP 500 with falcon's XML error body
 *     `<error><title>500 Internal Server Error</title><description>Unexpected message received, probably a
 *     bug.</description></error>` (Content-Length, kept alive). `bye` is accepted in any state;
 *   - an exception inside a handler (an empty password the directory refuses to bind with, a resource id that
 *     is not in the session's list, an agent that does not answer within the broker's own agent timeout) is
 *     answered by gunicorn: HTTP 500, a plain HTML "Internal Server Error" page, `Connection: close` — and the
 *     session is KEPT where it was (the handler never stored a new state);
 *   - its own cookie: `Set-Cookie: JSESSIONID=<32 hex>; HttpOnly; Path=/; Secure` whenever it creates a session
 *     (a request without a cookie, or with one it does not know — after `forgetSessions()`, a restart);
 *   - success answers chunked (two chunks), lower-case `content-type: application/xml`, single-quoted XML
 *     declaration, kept alive; idle keep-alive connections closed after 2 s;
 *   - allocation launches the session on the desktop's agent itself (launch-session over TLS); an agent refusal
 *     is passed through as a 200 `allocate-resource-resp` with the agent's id (`FAILED_USER_AUTH`, …) and the
 *     session stays waiting for an allocation.
 *
 * Its certificate comes from the shared test CA, or (`certificate: "private-ca"`) from a CA of its own that
 * nothing else uses — what a site with a private broker CA has (`tls.trustedCa`).
 */
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Socket, TCPSocketListener } from "bun";
import { parseLaunchSessionResp } from "../../src/protocol/agent.ts";
import { parseClientRequest } from "../../src/protocol/broker.ts";
import type { ClientRequest } from "../../src/protocol/types.ts";
import { launchSessionBody, postToAgent } from "./fake-broker.ts";
import { makeCa, signLeaf, testPki } from "./test-certs.ts";

export interface FalconDesktop {
  readonly name: string;
  readonly agentHost: string;
  readonly agentPort: number;
  readonly hostname?: string;
}

export interface FalconBrokerOptions {
  readonly users: Readonly<
    Record<string, { readonly password: string; readonly desktops: readonly FalconDesktop[] }>
  >;
  /** The broker's own agent timeout (ILS: 10 s); past it, allocate-resource is an exception (500). */
  readonly agentTimeoutMs?: number;
  /** gunicorn's keep-alive: idle connections closed after this (default 2 s). */
  readonly idleCloseMs?: number;
  /** "test-ca" (default): a leaf of the shared test CA; "private-ca": a leaf of a CA only this broker uses. */
  readonly certificate?: "test-ca" | "private-ca";
}

export interface FalconRequest {
  readonly op: string | undefined;
  readonly cookie: string | undefined;
  /** The broker session that handled it. */
  readonly sessionId: string;
  readonly resourceId?: string;
  readonly status: number;
  /** "ok", "unexpected" (protocol order: session reset), "exception" (session kept), "malformed". */
  readonly outcome: "ok" | "unexpected" | "exception" | "malformed";
  /** Milliseconds the broker took to answer. */
  readonly ms: number;
}

export interface FalconBroker {
  /** https://127.0.0.1:PORT */
  readonly url: string;
  /** The CA that issued the broker's certificate, and its file. */
  readonly caCert: string;
  readonly caCertFile: string;
  readonly requests: readonly FalconRequest[];
  /** Broker sessions by id → state. */
  sessionStates(): ReadonlyMap<string, string>;
  /** Forgets every session (what a broker restart with in-memory sessions does); cookies become unknown. */
  forgetSessions(): void;
  /** Stops accepting connections (ECONNREFUSED) and closes the open ones; `resume()` listens again on the port. */
  pause(): void;
  resume(): void;
  close(): Promise<void>;
}

type State =
  | "WAITING_FOR_HELLO"
  | "WAITING_FOR_AUTHENTICATE"
  | "WAITING_FOR_GETRESOURCELIST"
  | "WAITING_FOR_ALLOCATERESOURCE"
  | "WAITING_FOR_BYE";

interface Session {
  state: State;
  user?: string;
  password?: string;
  domain?: string;
  desktops: readonly FalconDesktop[];
}

interface Conn {
  buf: Buffer;
  busy: boolean;
  idle: ReturnType<typeof setTimeout> | undefined;
}

/** What the handler routes each state to (ILS `BrokerProtocolHandler.__call__`). */
const ROUTE: Readonly<Record<State, ClientRequest["op"]>> = {
  WAITING_FOR_HELLO: "hello",
  WAITING_FOR_AUTHENTICATE: "authenticate",
  WAITING_FOR_GETRESOURCELIST: "get-resource-list",
  WAITING_FOR_ALLOCATERESOURCE: "allocate-resource",
  WAITING_FOR_BYE: "bye",
};

/** An exception in a handler: gunicorn answers it, the session keeps its state. */
class BrokerException extends Error {}

interface Answer {
  status: number;
  body: string;
  kind: "chunked" | "falcon-error" | "gunicorn-error";
}

export async function startFalconBroker(options: FalconBrokerOptions): Promise<FalconBroker> {
  const agentTimeoutMs = options.agentTimeoutMs ?? 10_000;
  const idleCloseMs = options.idleCloseMs ?? 2_000;
  const cert = options.certificate === "private-ca" ? privateCaLeaf() : testLeaf();
  const sessions = new Map<string, Session>();
  const requests: FalconRequest[] = [];
  const open = new Set<Socket<Conn>>();

  const armIdle = (s: Socket<Conn>) => {
    if (s.data.idle) clearTimeout(s.data.idle);
    s.data.idle = setTimeout(() => {
      if (!s.data.busy) s.end();
    }, idleCloseMs);
  };

  const handlers = {
    open(s: Socket<Conn>) {
      s.data = { buf: Buffer.alloc(0), busy: false, idle: undefined };
      open.add(s);
      armIdle(s);
    },
    data(s: Socket<Conn>, d: Buffer) {
      if (s.data.idle) clearTimeout(s.data.idle);
      s.data.buf = Buffer.concat([s.data.buf, d]);
      void pump(s);
    },
    close(s: Socket<Conn>) {
      if (s.data.idle) clearTimeout(s.data.idle);
      open.delete(s);
    },
    error() {},
  };

  const listen = (port: number): TCPSocketListener<Conn> =>
    Bun.listen<Conn>({
      hostname: "127.0.0.1",
      port,
      tls: { cert: cert.cert, key: cert.key },
      socket: handlers,
    });
  let listener: TCPSocketListener<Conn> | undefined = listen(0);
  const port = listener.port;

  async function pump(s: Socket<Conn>): Promise<void> {
    if (s.data.busy) return;
    const raw = readRequest(s.data.buf);
    if (!raw) return;
    s.data.buf = s.data.buf.subarray(raw.consumed);
    s.data.busy = true;
    let close = false;
    try {
      close = await serve(s, raw);
    } finally {
      s.data.busy = false;
    }
    if (close) s.end();
    else if (open.has(s)) {
      armIdle(s);
      if (s.data.buf.length > 0) void pump(s);
    }
  }

  /** Answers one request; true when the connection is to be closed after it. */
  async function serve(s: Socket<Conn>, raw: RawRequest): Promise<boolean> {
    const started = Date.now();
    const cookie = /(?:^|;\s*)JSESSIONID=([0-9a-f]+)/.exec(raw.header("cookie") ?? "")?.[1];
    let sessionId = cookie && sessions.has(cookie) ? cookie : undefined;
    let setCookie: string | undefined;
    if (!sessionId) {
      sessionId = randomBytes(16).toString("hex");
      sessions.set(sessionId, { state: "WAITING_FOR_HELLO", desktops: [] });
      setCookie = `JSESSIONID=${sessionId}; HttpOnly; Path=/; Secure`;
    }
    const session = sessions.get(sessionId)!;
    const parsed = raw.body === "" ? undefined : parseClientRequest(raw.body);
    const msg = parsed?.ok ? parsed.msg : undefined;
    let answer: Answer;
    let outcome: FalconRequest["outcome"];
    if (!msg) {
      answer = falconError(400, "400 Bad Request", "Malformed XML.");
      outcome = "malformed";
    } else if (msg.op !== "bye" && ROUTE[session.state] !== msg.op) {
      // The handler returns (None, None): the session data is cleared, falcon raises its 500.
      session.state = "WAITING_FOR_HELLO";
      session.desktops = [];
      answer = falconError(500, "500 Internal Server Error", "Unexpected message received, probably a bug.");
      outcome = "unexpected";
    } else {
      try {
        answer = {
          status: 200,
          body: await handle(session, msg, raw.header("client-log-id") ?? ""),
          kind: "chunked",
        };
        outcome = "ok";
      } catch (e) {
        if (!(e instanceof BrokerException)) throw e;
        answer = { status: 500, body: GUNICORN_500, kind: "gunicorn-error" };
        outcome = "exception";
      }
    }
    requests.push({
      op: msg?.op,
      cookie,
      sessionId,
      ...(msg?.op === "allocate-resource" ? { resourceId: msg.resourceId } : {}),
      status: answer.status,
      outcome,
      ms: Date.now() - started,
    });
    // gunicorn writes its own error page without the app's headers (no cookie) and closes the connection.
    write(s, answer, answer.kind === "gunicorn-error" ? undefined : setCookie);
    return answer.kind === "gunicorn-error";
  }

  async function handle(session: Session, msg: ClientRequest, logId: string): Promise<string> {
    switch (msg.op) {
      case "bye":
        session.state = "WAITING_FOR_HELLO";
        session.desktops = [];
        delete session.user;
        delete session.password;
        return ok("<bye-resp />");
      case "hello":
        if (!msg.isProbe) session.state = "WAITING_FOR_AUTHENTICATE";
        return ok(
          `<hello-resp><brokers-info><broker-info><product-name>Interstate Love Song</product-name><product-version>2.0.4</product-version><platform>linux</platform><locale>en_US</locale><ip-address>N/A</ip-address><hostname>falcon-broker</hostname></broker-info></brokers-info><next-authentication><authentication-methods><method>AUTHENTICATE_VIA_PASSWORD</method></authentication-methods><domains><domain>corp.example</domain></domains></next-authentication></hello-resp>`,
        );
      case "authenticate": {
        if (msg.method !== "password") throw new BrokerException("no mapper for this method");
        // The directory refuses an anonymous (empty-password) bind with an exception the mapper does not catch.
        if (msg.password === "") throw new BrokerException("empty password");
        const user = options.users[msg.username];
        if (!user || user.password !== msg.password) {
          return ok(
            `<authenticate-resp method="password"><result><result-id>AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD</result-id><result-str>User authentication failed. Please re-enter username, password, and/or domain.</result-str></result></authenticate-resp>`,
          );
        }
        session.user = msg.username;
        session.password = msg.password;
        session.domain = msg.domain;
        session.desktops = user.desktops;
        session.state = "WAITING_FOR_GETRESOURCELIST";
        return ok(
          `<authenticate-resp method="password"><result><result-id>AUTH_SUCCESSFUL_AND_COMPLETE</result-id><result-str>Authentication successful</result-str></result></authenticate-resp>`,
        );
      }
      case "get-resource-list": {
        session.state = "WAITING_FOR_ALLOCATERESOURCE";
        const items = session.desktops
          .map(
            (d, i) =>
              `<resource><resource-name>${esc(d.name)}</resource-name><resource-id>${i}</resource-id><resource-type session-type="VDI">DESKTOP</resource-type><resource-state>UNKNOWN</resource-state><protocols><protocol is-default="true">PCOIP</protocol></protocols></resource>`,
          )
          .join("");
        return ok(
          `<get-resource-list-resp><result><result-id>LIST_SUCCESSFUL</result-id><result-str>Successfully retrieved the list of resources</result-str></result>${items}</get-resource-list-resp>`,
        );
      }
      case "allocate-resource": {
        // session.resources[resource_id]: an id that is not a position in the list raises.
        const desktop = /^(0|[1-9]\d*)$/.test(msg.resourceId)
          ? session.desktops[Number(msg.resourceId)]
          : undefined;
        if (!desktop) throw new BrokerException(`no resource ${msg.resourceId}`);
        const body = launchSessionBody(desktop, session, msg, logId);
        const reply = await postToAgent(desktop.agentHost, desktop.agentPort, body, agentTimeoutMs);
        if (reply === "timeout" || reply === "error") throw new BrokerException(`agent ${reply}`);
        const launched = parseLaunchSessionResp(reply);
        if (!launched.ok) throw new BrokerException("agent answer unreadable");
        const si = launched.msg.sessionInfo;
        if (launched.msg.resultId !== "SUCCESSFUL" || !si) {
          // Passed through as the agent said it; the session keeps waiting for an allocation (a retry may work).
          return ok(
            `<allocate-resource-resp><result><result-id>${esc(launched.msg.resultId)}</result-id><result-str>${esc(launched.msg.failReason || "Failed to allocate a session on the given resource")}</result-str></result></allocate-resource-resp>`,
          );
        }
        session.state = "WAITING_FOR_BYE";
        return ok(
          `<allocate-resource-resp><result><result-id>ALLOC_SUCCESSFUL</result-id><result-str>Resource was allocated successfully.</result-str></result><target><ip-address>${esc(si.ipAddress)}</ip-address><hostname>${esc(desktop.hostname ?? desktop.agentHost)}</hostname><sni>${esc(si.sni)}</sni><port>${si.port}</port><session-id>${esc(si.sessionId)}</session-id><connect-tag>${esc(si.sessionTag)}</connect-tag></target><resource-id>${esc(msg.resourceId)}</resource-id><protocol>PCOIP</protocol></allocate-resource-resp>`,
        );
      }
    }
  }

  return {
    url: `https://127.0.0.1:${port}`,
    caCert: cert.ca,
    caCertFile: cert.caFile,
    requests,
    sessionStates: () => new Map([...sessions].map(([id, s]) => [id, s.state])),
    forgetSessions: () => sessions.clear(),
    pause() {
      listener?.stop(true);
      listener = undefined;
      for (const s of open) s.terminate();
    },
    resume() {
      listener ??= listen(port);
    },
    async close() {
      listener?.stop(true);
      listener = undefined;
      for (const s of open) s.terminate();
    },
  };
}

const GUNICORN_500 =
  "<html>\n  <head>\n    <title>Internal Server Error</title>\n  </head>\n  <body>\n    <h1><p>Internal Server Error</p></h1>\n    \n  </body>\n</html>\n";

function ok(inner: string): string {
  return `<?xml version='1.0' encoding='utf-8'?>\n<pcoip-client version="2.1">${inner}</pcoip-client>`;
}

function falconError(status: number, title: string, description: string): Answer {
  return {
    status,
    body: `<?xml version="1.0" encoding="UTF-8"?><error><title>${esc(title)}</title><description>${esc(description)}</description></error>`,
    kind: "falcon-error",
  };
}

function write(s: Socket<Conn>, a: Answer, setCookie: string | undefined): void {
  const reason = a.status === 200 ? "OK" : a.status === 400 ? "Bad Request" : "Internal Server Error";
  const body = Buffer.from(a.body, "utf8");
  const lines = [`HTTP/1.1 ${a.status} ${reason}`, "Server: gunicorn", `Date: ${new Date().toUTCString()}`];
  if (a.kind === "gunicorn-error") {
    lines.push("Connection: close", "Content-Type: text/html", `Content-Length: ${body.length}`);
    s.write(`${lines.join("\r\n")}\r\n\r\n${a.body}`);
    return;
  }
  lines.push("Connection: keep-alive");
  if (a.kind === "chunked") lines.push("Transfer-Encoding: chunked", "content-type: application/xml");
  else lines.push(`content-length: ${body.length}`, "content-type: application/xml; charset=UTF-8");
  if (setCookie) lines.push(`Set-Cookie: ${setCookie}`);
  const head = `${lines.join("\r\n")}\r\n\r\n`;
  if (a.kind !== "chunked") {
    s.write(head + a.body);
    return;
  }
  // Two chunks, so a reader that stops after the first is caught.
  const half = Math.floor(body.length / 2);
  const chunk = (b: Buffer) =>
    Buffer.concat([Buffer.from(`${b.length.toString(16)}\r\n`), b, Buffer.from("\r\n")]);
  s.write(
    Buffer.concat([
      Buffer.from(head),
      chunk(body.subarray(0, half)),
      chunk(body.subarray(half)),
      Buffer.from("0\r\n\r\n"),
    ]),
  );
}

function esc(s: string): string {
  return s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll('"', "&quot;");
}

interface RawRequest {
  header(name: string): string | undefined;
  body: string;
  consumed: number;
}

/** One Content-Length request from the front of `buf` (the CM never sends chunked bodies), or undefined. */
function readRequest(buf: Buffer): RawRequest | undefined {
  const end = buf.indexOf("\r\n\r\n");
  if (end < 0) return undefined;
  const lines = buf.subarray(0, end).toString("latin1").split("\r\n").slice(1);
  const headers = lines.map((l) => [
    l.slice(0, l.indexOf(":")).toLowerCase(),
    l.slice(l.indexOf(":") + 1).trim(),
  ]);
  const header = (name: string) => headers.find(([k]) => k === name)?.[1];
  const length = Number(header("content-length") ?? "0");
  if (buf.length < end + 4 + length) return undefined;
  return {
    header,
    body: buf.subarray(end + 4, end + 4 + length).toString("utf8"),
    consumed: end + 4 + length,
  };
}

function testLeaf(): { cert: string; key: string; ca: string; caFile: string } {
  const pki = testPki();
  const leaf = pki.leaf(["localhost", "127.0.0.1", "::1"]);
  return { cert: leaf.cert, key: leaf.key, ca: pki.ca.cert, caFile: pki.ca.certFile };
}

/** A leaf for 127.0.0.1 from "Falcon Broker Private CA", made once in the test PKI's folder. */
function privateCaLeaf(): { cert: string; key: string; ca: string; caFile: string } {
  const dir = testPki().dir;
  const f = (n: string) => join(dir, n);
  if (!existsSync(f("falcon-leaf.pem"))) {
    makeCa(dir, "falcon-ca", "Falcon Broker Private CA");
    signLeaf(dir, "falcon-leaf", "falcon-ca", ["localhost", "127.0.0.1"]);
  }
  return {
    cert: readFileSync(f("falcon-leaf.pem"), "utf8"),
    key: readFileSync(f("falcon-leaf.key"), "utf8"),
    ca: readFileSync(f("falcon-ca.pem"), "utf8"),
    caFile: f("falcon-ca.pem"),
  };
}

if (import.meta.main) {
  // Demo: bun test/peers/falcon-broker.ts --user alice:pw --desktop "CAD 1=127.0.0.1:60443" [--private-ca]
  //       (prints its URL and CA file, then one JSON line per request; never bodies)
  const args = process.argv.slice(2);
  const all = (name: string) =>
    args.flatMap((a, i) => (a === `--${name}` && args[i + 1] ? [args[i + 1]!] : []));
  const desktops = all("desktop").map((d) => {
    const [name = d, at = "127.0.0.1:60443"] = d.split("=");
    const [agentHost = "127.0.0.1", port = "60443"] = at.split(":");
    return { name, agentHost, agentPort: Number(port) };
  });
  const users = Object.fromEntries(
    all("user").map((u) => {
      const [name = u, password = ""] = u.split(":");
      return [name, { password, desktops }];
    }),
  );
  const broker = await startFalconBroker({
    users,
    ...(args.includes("--private-ca") ? { certificate: "private-ca" as const } : {}),
  });
  const print = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
  print({ event: "ready", url: broker.url, caFile: broker.caCertFile });
  let seen = 0;
  const timer = setInterval(() => {
    for (const r of broker.requests.slice(seen))
      print({ event: "request", ...r, cookie: r.cookie ? "set" : null });
    seen = broker.requests.length;
  }, 200);
  process.on("SIGTERM", () => {
    clearInterval(timer);
    broker.close().then(() => process.exit(0));
  });
}
