/**
 * One request to the upstream broker and its answer, judged: the request written under the configured root
 * (`pcm-info` added to `hello`), headers the broker may rely on (`X-Forwarded-For` with the canonical client
 * IP, the client's `Client-Log-Id`, the conversation's cookies), the broker's cookies taken from every answer
 * (errors included), and the answer accepted only when it is HTTP 200 with a `pcoip-client` (or
 * `pcoip-broker`) document answering the question asked (PROTOCOL.md §10). Everything else is a BrokerFailure.
 *
 * A kept-alive connection that turns out closed before the broker answered is reopened (same cookies) and the
 * request sent again — except allocate-resource, which is never repeated blindly (the broker may already have
 * started a session); it gets a fresh connection up front instead when the kept one has been idle a while.
 */
import type { Logger } from "../../observability/log.ts";
import { buildClientRequest, parseBrokerResponse } from "../../protocol/broker.ts";
import type {
  BrokerResponse,
  BrokerRoot,
  ClientRequest,
  ProductInfo,
  ProtocolError,
} from "../../protocol/types.ts";
import type { BrokerFailure } from "./upstream-failures.ts";
import {
  createHttpConnection,
  type HttpConnection,
  type HttpResponse,
  headerValues,
} from "./upstream-http.ts";
import { authority, type ConnectBrokerOptions, connectBroker } from "./upstream-transport.ts";

/** What every exchange of one upstream broker shares (built once from the configuration). */
export interface ExchangeSettings {
  readonly connect: Omit<ConnectBrokerOptions, "timeoutMs">;
  readonly dialect: BrokerRoot;
  readonly pcmInfo: ProductInfo;
  readonly userAgent: string;
  /** A kept connection idle longer than this is not used for allocate-resource (the broker may be closing it). */
  readonly freshConnectionMs: number;
  /** A kept connection idle this long is closed by the CM (a broker that never closes idle ones). */
  readonly keepAliveMs: number;
}

/** Per-request facts about the client behind the conversation. */
export interface ClientFacts {
  /** Canonical client IP (X-Forwarded-For). */
  readonly clientIp: string;
  /** The client's Client-Log-Id (forwarded unchanged; the broker may use it as its session key). */
  readonly clientLogId: string;
}

/** The broker's cookies for one conversation (name → value), latest wins. */
export type CookieJar = Map<string, string>;

/** A connection slot: the kept-alive connection of one conversation (or none). */
export interface ConnectionSlot {
  conn: HttpConnection | undefined;
}

export type ExchangeResult =
  | { readonly ok: true; readonly resp: BrokerResponse }
  | { readonly ok: false; readonly failure: BrokerFailure };

/**
 * Sends `req` and returns the broker's answer to it. `jar` is read and updated; `slot` holds the connection to
 * reuse (and receives the new one). Pass `jar: undefined` for a stateless request (the probe hello).
 */
export async function exchange(
  settings: ExchangeSettings,
  req: ClientRequest,
  facts: ClientFacts,
  jar: CookieJar | undefined,
  slot: ConnectionSlot,
  timeoutMs: number,
  log: Logger,
): Promise<ExchangeResult> {
  const { endpoint } = settings.connect;
  const what = `relaying ${req.op} to the broker ${endpoint.url}`;
  const deadline = Date.now() + timeoutMs;
  const repeatable = req.op !== "allocate-resource";
  const body = buildClientRequest(
    req,
    settings.dialect,
    req.op === "hello" ? { pcmInfo: settings.pcmInfo } : {},
  );

  const request = () => ({
    method: "POST" as const,
    host: authority(endpoint),
    path: endpoint.path,
    headers: requestHeaders(settings, facts, jar),
    body,
  });

  let conn = slot.conn;
  if (conn && (conn.closed || (!repeatable && conn.idleMs() > settings.freshConnectionMs))) {
    conn.close();
    conn = undefined;
  }
  let reused = conn !== undefined;
  for (let attempt = 0; ; attempt++) {
    if (!conn) {
      const opened = await connectBroker({
        ...settings.connect,
        timeoutMs: remaining(deadline),
        onWarning:
          settings.connect.onWarning ??
          ((message, fix) => log.warn({ broker: endpoint.url, fix }, `broker connection: ${message}`)),
      });
      if (!opened.ok) {
        slot.conn = undefined;
        return { ok: false, failure: { what, ...opened.failure } };
      }
      conn = createHttpConnection(opened.socket, Date.now, { idleCloseMs: settings.keepAliveMs });
      reused = false;
    }
    slot.conn = conn;
    const sentAt = Date.now();
    const r = await conn.exchange(request(), remaining(deadline));
    if (r.ok) {
      const renewed = jar ? takeCookiesNoticingRenewal(jar, r.response, req.op) : false;
      if (!r.response.reusable || conn.closed) slot.conn = undefined;
      return judge(r.response, req, what, endpoint.url, { elapsedMs: Date.now() - sentAt, renewed });
    }
    slot.conn = undefined;
    if (r.kind === "closed_before_response" && reused && attempt === 0) {
      if (repeatable) {
        log.debug(
          { broker: endpoint.url, op: req.op },
          "kept-alive broker connection was closed; reconnecting",
        );
        conn = undefined;
        continue;
      }
      return {
        ok: false,
        failure: {
          kind: "not_replayed",
          timeout: false,
          what,
          cause:
            "the kept-alive connection to the broker closed before it answered; allocate-resource was not sent again because the broker may already have started a session",
          fix: "the user can retry; if this repeats, lower the broker's keep-alive timeout mismatch (the broker closes idle connections sooner than expected)",
        },
      };
    }
    return { ok: false, failure: exchangeFailure(r.kind, r.detail, what, endpoint.url, timeoutMs) };
  }
}

function requestHeaders(
  settings: ExchangeSettings,
  facts: ClientFacts,
  jar: CookieJar | undefined,
): [string, string][] {
  const headers: [string, string][] = [
    ["User-Agent", settings.userAgent],
    ["Accept", "text/xml, application/xml, */*"],
    ["Content-Type", "text/xml; charset=UTF-8"],
    ["Connection", "keep-alive"],
  ];
  if (jar && jar.size > 0) {
    headers.push(["Cookie", [...jar].map(([k, v]) => `${k}=${v}`).join("; ")]);
  }
  if (facts.clientIp) headers.push(["X-Forwarded-For", facts.clientIp]);
  if (facts.clientLogId) headers.push(["Client-Log-Id", facts.clientLogId]);
  return headers;
}

/** Takes every Set-Cookie of an answer into the jar (a cookie with Max-Age=0 or a past Expires is dropped). */
export function takeCookies(jar: CookieJar, resp: Pick<HttpResponse, "headers">): void {
  for (const line of headerValues(resp.headers, "set-cookie")) {
    const [pair = "", ...attrs] = line.split(";");
    const eq = pair.indexOf("=");
    if (eq <= 0) continue;
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    const expired = attrs.some((a) => {
      const [k = "", v = ""] = a.split("=").map((x) => x.trim());
      if (k.toLowerCase() === "max-age") return Number(v) <= 0;
      if (k.toLowerCase() === "expires") return Date.parse(v) < Date.now();
      return false;
    });
    if (expired) jar.delete(name);
    else jar.set(name, value);
  }
}

/**
 * Takes the answer's cookies into the jar and says whether they replaced the broker session the jar held: a
 * cookie we held was dropped or given another value, or a request other than hello (which opens a session) was
 * answered with a first cookie. Either way the broker is now holding a new, empty session for us.
 */
function takeCookiesNoticingRenewal(
  jar: CookieJar,
  resp: Pick<HttpResponse, "headers">,
  op: string,
): boolean {
  const before = new Map(jar);
  takeCookies(jar, resp);
  if (before.size === 0) return op !== "hello" && jar.size > 0;
  for (const [name, value] of before) if (jar.get(name) !== value) return true;
  return false;
}

/**
 * The protocol-order error of a falcon/ILS-style broker: its handler found no route for the message in the
 * session's state, reset the session to "waiting for hello" and answered 500 "Unexpected message received…".
 */
const RESET_MARKER = /unexpected message/i;

function judge(
  resp: HttpResponse,
  req: ClientRequest,
  what: string,
  url: string,
  seen: { elapsedMs: number; renewed: boolean },
): ExchangeResult {
  if (resp.status !== 200) {
    const said = errorDescription(resp.body);
    const reset = seen.renewed || RESET_MARKER.test(said || resp.body.slice(0, 2048));
    return {
      ok: false,
      failure: {
        kind: "http_status",
        timeout: false,
        what,
        status: resp.status,
        brokerSession: reset ? "reset" : "kept",
        elapsedMs: seen.elapsedMs,
        cause: `the broker answered HTTP ${resp.status}${resp.reason ? ` ${resp.reason}` : ""}${said ? ` ("${said}")` : ""} after ${formatElapsed(seen.elapsedMs)}${reset ? "; it started its side of the conversation over" : ""}`,
        fix: statusFix(resp.status, req.op, seen.elapsedMs, reset),
      },
    };
  }
  const parsed = parseBrokerResponse(resp.body);
  if (!parsed.ok) return { ok: false, failure: parseFailure(parsed.error, what, url) };
  const expected = `${req.op}-resp`;
  if (parsed.msg.op !== expected) {
    return {
      ok: false,
      failure: {
        kind: "unexpected_answer",
        timeout: false,
        what,
        cause: `the broker answered ${parsed.msg.op} to ${req.op}`,
        fix: "check that brokerUrl points at a PCoIP broker and see the broker's log",
      },
    };
  }
  return { ok: true, resp: parsed.msg };
}

/** The `<description>` of an `<error>` body (the real broker's error format), short and single-line. */
function errorDescription(body: string): string {
  const m =
    /<description>([^<]{0,200})<\/description>/.exec(body) ?? /<title>([^<]{0,200})<\/title>/.exec(body);
  return m ? m[1]!.replace(/\s+/g, " ").trim() : "";
}

/** "21 ms", "10.4 s". */
function formatElapsed(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** A broker's own agent timeout is about 10 s (ILS); an error this late after allocate-resource is most likely it. */
const AGENT_TIMEOUT_HINT_MS = 5000;

function statusFix(status: number, op: string, elapsedMs: number, reset: boolean): string {
  if (status === 404) return "check the path of brokerUrl (the broker serves /pcoip-broker/xml)";
  if (status === 400)
    return "the broker could not read the request; check upstream.dialect (pcoip-client or pcoip-broker)";
  if (status === 401 || status === 403)
    return "the broker refuses this CM; check the broker's access rules for this host";
  if (status >= 500 && reset) {
    return "see the broker's log; it reset its side of the conversation (a message out of the order it expects), so the CM starts it over";
  }
  if (status >= 500 && op === "allocate-resource") {
    return elapsedMs >= AGENT_TIMEOUT_HINT_MS
      ? `see the broker's log; an error ${formatElapsed(elapsedMs)} after allocate-resource usually means the broker could not reach the desktop's agent (port 60443) within its own agent timeout`
      : `see the broker's log; it answered within ${formatElapsed(elapsedMs)}, too soon for its agent timeout (about 10 s): the broker refused or could not handle this allocation`;
  }
  if (status >= 500) return "see the broker's log (an error inside the broker; its conversation is kept)";
  return "see the broker's log";
}

function parseFailure(e: ProtocolError, what: string, url: string): BrokerFailure {
  if (e.kind === "wrong_root") {
    return {
      kind: "wrong_root",
      timeout: false,
      what,
      cause: `the broker's answer is not a pcoip-client document (${e.detail})`,
      fix: `check that ${url} is a PCoIP broker and not a web page, login portal or another service`,
    };
  }
  if (e.kind === "unknown_operation" || e.kind === "invalid_message" || e.kind === "no_operation") {
    return {
      kind: "unexpected_answer",
      timeout: false,
      what,
      cause: `the broker's answer is not a valid reply (${e.detail})`,
      fix: "see the broker's log; the broker may speak a different protocol version",
    };
  }
  return {
    kind: "bad_xml",
    timeout: false,
    what,
    cause: `the broker's answer is not valid XML (${e.detail})`,
    fix: `check that ${url} is a PCoIP broker; see the broker's log`,
  };
}

function exchangeFailure(
  kind: "closed_before_response" | "closed_mid_response" | "timeout" | "bad_response" | "too_large",
  detail: string,
  what: string,
  url: string,
  timeoutMs: number,
): BrokerFailure {
  switch (kind) {
    case "timeout":
      return {
        kind: "timeout",
        timeout: true,
        what,
        cause: `the broker did not answer within ${timeoutMs} ms`,
        fix: "check the broker's health and load; raise upstream.timeoutMs / allocateTimeoutMs if it is just slow",
      };
    case "closed_before_response":
    case "closed_mid_response":
      return {
        kind: "closed",
        timeout: false,
        what,
        cause: `the broker closed the connection ${kind === "closed_mid_response" ? "in the middle of its answer" : "without answering"} (${detail})`,
        fix: "see the broker's log (a crash or restart), or a load balancer's idle timeout in between",
      };
    case "too_large":
      return {
        kind: "bad_xml",
        timeout: false,
        what,
        cause: `the broker's answer is too large (${detail})`,
        fix: `check that ${url} is a PCoIP broker`,
      };
    case "bad_response":
      return {
        kind: "bad_xml",
        timeout: false,
        what,
        cause: `the broker's answer is not valid HTTP (${detail})`,
        fix: `check that ${url} is the broker's HTTPS port`,
      };
  }
}

function remaining(deadline: number): number {
  return Math.max(1, deadline - Date.now());
}
