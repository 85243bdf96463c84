/**
 * The agent protocol, `pcoip-agent` 1.0 (PROTOCOL.md §5): the CM's `launch-session` to an agent's
 * `https://<agent>:60443/pcoip-agent/xml` and the agent's answer. The CM builds requests and parses responses;
 * the fake agent test peer does the opposite, so both directions are here.
 */
import type { LaunchSession, LaunchSessionResp, ParseResult, SessionInfo, XmlNode } from "./types.ts";
import {
  attr,
  buildXml,
  child,
  envelope,
  invalidMessage,
  parsePort,
  parseXml,
  text,
  token,
  unknownOperation,
} from "./xml.ts";

/** The `version` we write on the `pcoip-agent` root (PROTOCOL.md §5.2). */
export const AGENT_PROTOCOL_VERSION = "1.0";

/** The logon method every public sample uses. */
export const WINDOWS_PASSWORD_LOGON = "windows-password";

const ROOT = "pcoip-agent";

/*
 * §5.2 <pcoip-agent version="1.0"><launch-session>
 *   session-type                                  UNSPECIFIED
 *   ip-address hostname                           the agent as the CM knows it
 *   <logon method="windows-password"> username password domain </logon>
 *   client-mac client-ip client-name              the client (may be empty)
 *   license-path                                  27000@licsrv or http://licsrv:7070/request
 *   session-log-id                                UUID-shaped correlation id
 * </launch-session></pcoip-agent>
 */
/** Writes `launch-session` (layout above). Every element is written, empty or not, as ILS does. */
export function buildLaunchSession(ls: LaunchSession): string {
  return buildXml(ROOT, {
    "@_version": AGENT_PROTOCOL_VERSION,
    "launch-session": {
      "session-type": ls.sessionType,
      "ip-address": ls.ipAddress,
      hostname: ls.hostname,
      logon: {
        "@_method": ls.logon.method,
        username: ls.logon.username,
        password: ls.logon.password,
        domain: ls.logon.domain,
      },
      "client-mac": ls.clientMac,
      "client-ip": ls.clientIp,
      "client-name": ls.clientName,
      "license-path": ls.licensePath,
      "session-log-id": ls.sessionLogId,
    },
  });
}

/** Parses `launch-session` (the fake agent's side). Credentials verbatim, other values trimmed; absent → "". */
export function parseLaunchSession(xml: string): ParseResult<LaunchSession> {
  const op = operation(xml, "launch-session");
  if (!op.ok) return op;
  const n = op.msg;
  const logon = child(n, "logon");
  return {
    ok: true,
    msg: {
      sessionType: token(n, "session-type"),
      ipAddress: token(n, "ip-address"),
      hostname: token(n, "hostname"),
      logon: {
        method: attr(logon, "method") ?? "",
        username: text(logon, "username"),
        password: text(logon, "password"),
        domain: text(logon, "domain"),
      },
      clientMac: token(n, "client-mac"),
      clientIp: token(n, "client-ip"),
      clientName: token(n, "client-name"),
      licensePath: token(n, "license-path"),
      sessionLogId: token(n, "session-log-id"),
    },
  };
}

/*
 * §5.2 <pcoip-agent version="1.0"><launch-session-resp>
 *   result-id                      directly under the response: SUCCESSFUL, FAILED_USER_AUTH,
 *                                  FAILED_ANOTHER_SESSION_STARTED, … (any case on the wire)
 *   [fail-reason]                  free text on failures
 *   [<session-info> ip-address sni port session-id session-tag </session-info>]    on success
 * </launch-session-resp></pcoip-agent>
 */
/**
 * Parses an agent's answer (layout above). `resultId` is upper-cased (agents vary, ILS compares without case);
 * a missing `result-id` or a non-numeric `session-info/port` is "invalid_message"; an absent port reads as 0
 * and absent texts as "" — whether that is enough to hand to a client is the caller's call.
 */
export function parseLaunchSessionResp(xml: string): ParseResult<LaunchSessionResp> {
  const op = operation(xml, "launch-session-resp");
  if (!op.ok) return op;
  const n = op.msg;
  const resultId = token(n, "result-id").toUpperCase();
  if (resultId === "") return invalidMessage("launch-session-resp", "no result-id");
  let sessionInfo: SessionInfo | undefined;
  const si = child(n, "session-info");
  if (si) {
    const port = parsePort(token(si, "port"));
    if (port === undefined)
      return invalidMessage("launch-session-resp", "session-info/port is not a port number");
    sessionInfo = {
      ipAddress: token(si, "ip-address"),
      sni: token(si, "sni"),
      port,
      sessionId: token(si, "session-id"),
      sessionTag: text(si, "session-tag"),
    };
  }
  return {
    ok: true,
    msg: { resultId, failReason: text(n, "fail-reason"), ...(sessionInfo ? { sessionInfo } : {}) },
  };
}

/** Writes `launch-session-resp` (layout above; the fake agent's side). `fail-reason` only when non-empty. */
export function buildLaunchSessionResp(r: LaunchSessionResp): string {
  const si = r.sessionInfo;
  return buildXml(ROOT, {
    "@_version": AGENT_PROTOCOL_VERSION,
    "launch-session-resp": {
      "result-id": r.resultId,
      ...(r.failReason !== "" ? { "fail-reason": r.failReason } : {}),
      ...(si
        ? {
            "session-info": {
              "ip-address": si.ipAddress,
              sni: si.sni,
              port: String(si.port),
              "session-id": si.sessionId,
              "session-tag": si.sessionTag,
            },
          }
        : {}),
    },
  });
}

/** The one operation element of a `pcoip-agent` document, which must be `expected`. */
function operation(xml: string, expected: string): ParseResult<XmlNode> {
  const doc = parseXml(xml);
  if (!doc.ok) return doc;
  const env = envelope(doc.msg, [ROOT], false);
  if (!env.ok) return env;
  if (env.msg.operation !== expected) return unknownOperation(env.msg.operation, ROOT);
  return { ok: true, msg: env.msg.node };
}
