// Claim: launch-session and launch-session-resp (PROTOCOL.md §5.2) decode to the expected typed values and
// re-encode to documents that decode the same; agent answers are read leniently (result-id in any case,
// session-info optional) but never without a result-id.
import { describe, expect, test } from "bun:test";
import {
  buildLaunchSession,
  buildLaunchSessionResp,
  parseLaunchSession,
  parseLaunchSessionResp,
} from "../../src/protocol/agent.ts";
import type { LaunchSession, LaunchSessionResp, ParseResult } from "../../src/protocol/types.ts";
import { XML_DECLARATION } from "../../src/protocol/xml.ts";

const LAUNCH_SESSION = `<?xml version="1.0" encoding="UTF-8"?>
<pcoip-agent version="1.0">
  <launch-session>
    <session-type>UNSPECIFIED</session-type>
    <ip-address>10.20.3.14</ip-address>
    <hostname>ws-0003.corp.example</hostname>
    <logon method="windows-password">
      <username>alice</username>
      <password>correct horse</password>
      <domain>corp.example</domain>
    </logon>
    <client-mac>02:42:ac:11:00:02</client-mac>
    <client-ip>198.51.100.77</client-ip>
    <client-name>laptop-17</client-name>
    <license-path>http://10.20.0.9:7070/request</license-path>
    <session-log-id>5b1e0c40-1f2a-11ee-9c1d-000000000000</session-log-id>
  </launch-session>
</pcoip-agent>`;

const SESSION_TAG = `SCS1${"x9+/".repeat(25)}`;
const LAUNCH_SESSION_RESP = `<?xml version="1.0" encoding="UTF-8"?>
<pcoip-agent version="1.0">
  <launch-session-resp>
    <result-id>SUCCESSFUL</result-id>
    <session-info>
      <ip-address>10.20.3.14</ip-address>
      <sni>ws-0003.corp.example</sni>
      <port>4172</port>
      <session-id>2305843009213693957</session-id>
      <session-tag>${SESSION_TAG}</session-tag>
    </session-info>
  </launch-session-resp>
</pcoip-agent>`;

const LS: LaunchSession = {
  sessionType: "UNSPECIFIED",
  ipAddress: "10.20.3.14",
  hostname: "ws-0003.corp.example",
  logon: { method: "windows-password", username: "alice", password: "correct horse", domain: "corp.example" },
  clientMac: "02:42:ac:11:00:02",
  clientIp: "198.51.100.77",
  clientName: "laptop-17",
  licensePath: "http://10.20.0.9:7070/request",
  sessionLogId: "5b1e0c40-1f2a-11ee-9c1d-000000000000",
};

const LSR: LaunchSessionResp = {
  resultId: "SUCCESSFUL",
  failReason: "",
  sessionInfo: {
    ipAddress: "10.20.3.14",
    sni: "ws-0003.corp.example",
    port: 4172,
    sessionId: "2305843009213693957",
    sessionTag: SESSION_TAG,
  },
};

function must<T>(r: ParseResult<T>): T {
  if (!r.ok) throw new Error(`expected a message, got ${r.error.kind}: ${r.error.detail}`);
  return r.msg;
}

function errorOf<T>(r: ParseResult<T>) {
  if (r.ok) throw new Error("expected an error, got a message");
  return r.error;
}

describe("golden (PROTOCOL.md §5.2)", () => {
  test("launch-session: parse, build, parse again", () => {
    expect(must(parseLaunchSession(LAUNCH_SESSION))).toEqual(LS);
    const built = buildLaunchSession(LS);
    expect(built).toBe(
      `${XML_DECLARATION}\n<pcoip-agent version="1.0"><launch-session><session-type>UNSPECIFIED</session-type><ip-address>10.20.3.14</ip-address><hostname>ws-0003.corp.example</hostname><logon method="windows-password"><username>alice</username><password>correct horse</password><domain>corp.example</domain></logon><client-mac>02:42:ac:11:00:02</client-mac><client-ip>198.51.100.77</client-ip><client-name>laptop-17</client-name><license-path>http://10.20.0.9:7070/request</license-path><session-log-id>5b1e0c40-1f2a-11ee-9c1d-000000000000</session-log-id></launch-session></pcoip-agent>`,
    );
    expect(must(parseLaunchSession(built))).toEqual(LS);
  });

  test("launch-session-resp: parse, build, parse again", () => {
    expect(must(parseLaunchSessionResp(LAUNCH_SESSION_RESP))).toEqual(LSR);
    expect(must(parseLaunchSessionResp(buildLaunchSessionResp(LSR)))).toEqual(LSR);
  });

  test("a failure answer: fail-reason, no session-info", () => {
    const fail: LaunchSessionResp = {
      resultId: "FAILED_USER_AUTH",
      failReason: "Session start failed because user authentication failed",
    };
    const xml = buildLaunchSessionResp(fail);
    expect(xml).not.toContain("session-info");
    expect(must(parseLaunchSessionResp(xml))).toEqual(fail);
    expect(buildLaunchSessionResp({ resultId: "SUCCESSFUL", failReason: "" })).not.toContain("fail-reason");
  });
});

describe("lenient but not blind", () => {
  test("result-id is upper-cased, whatever case the agent used", () => {
    const xml = LAUNCH_SESSION_RESP.replace("SUCCESSFUL", " successful ");
    expect(must(parseLaunchSessionResp(xml)).resultId).toBe("SUCCESSFUL");
  });

  test("a missing or empty result-id is invalid_message", () => {
    const none =
      "<pcoip-agent version='1.0'><launch-session-resp><fail-reason>x</fail-reason></launch-session-resp></pcoip-agent>";
    expect(errorOf(parseLaunchSessionResp(none))).toMatchObject({
      kind: "invalid_message",
      operation: "launch-session-resp",
    });
    expect(errorOf(parseLaunchSessionResp(LAUNCH_SESSION_RESP.replace(">SUCCESSFUL<", "><"))).kind).toBe(
      "invalid_message",
    );
  });

  test("session-info/port: a number is parsed, absent is 0, garbage is invalid_message", () => {
    const noPort = LAUNCH_SESSION_RESP.replace("<port>4172</port>", "");
    expect(must(parseLaunchSessionResp(noPort)).sessionInfo?.port).toBe(0);
    const bad = LAUNCH_SESSION_RESP.replace("<port>4172</port>", "<port>4172x</port>");
    expect(errorOf(parseLaunchSessionResp(bad)).kind).toBe("invalid_message");
  });

  test("wrong root, another operation, and broken XML are typed errors", () => {
    expect(
      errorOf(parseLaunchSessionResp("<pcoip-client version='2.1'><bye-resp/></pcoip-client>")).kind,
    ).toBe("wrong_root");
    expect(errorOf(parseLaunchSessionResp(LAUNCH_SESSION))).toMatchObject({
      kind: "unknown_operation",
      operation: "launch-session",
    });
    expect(errorOf(parseLaunchSession(LAUNCH_SESSION_RESP)).kind).toBe("unknown_operation");
    expect(errorOf(parseLaunchSessionResp("<html>502 Bad Gateway")).kind).toBe("not_xml");
    expect(errorOf(parseLaunchSessionResp("")).kind).toBe("not_xml");
  });
});

test("credentials with markup characters and numeric looks survive the trip to the agent", () => {
  const exotic = { ...LS, logon: { ...LS.logon, username: "0012", password: `<>&"' ]]> `, domain: "" } };
  const xml = buildLaunchSession(exotic);
  expect(xml).not.toContain("]]>");
  expect(xml).toContain("<domain/>");
  expect(must(parseLaunchSession(xml))).toEqual(exotic);
});
