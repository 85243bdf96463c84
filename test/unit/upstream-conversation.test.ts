// Claim: one client conversation relayed to a real (fake) broker over real TLS keeps the broker's rules of
// PROTOCOL.md §10 — Content-Length bodies, pcm-info in hello, X-Forwarded-For and Client-Log-Id, cookies from any
// answer, stale keep-alive reconnects that never repeat allocate-resource, the probe relayed statelessly, a
// broker conversation past allocation rebuilt (bye, hello, sign-in replayed) — and relays every message untouched.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import {
  createUpstreamConversation,
  relayProbe,
  type UpstreamConversation,
} from "../../src/cm/brokers/upstream-conversation.ts";
import { resolveUpstreamOptions, type UpstreamOptions } from "../../src/cm/brokers/upstream-settings.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { buildAuthenticateResp, buildHelloResp, parseClientRequest } from "../../src/protocol/broker.ts";
import type { BrokerRoot, ClientRequest } from "../../src/protocol/types.ts";
import { type FakeBroker, type FakeBrokerOptions, startFakeBroker } from "../peers/fake-broker.ts";

const USERS: FakeBrokerOptions["users"] = {
  alice: {
    password: "alice pw <&>",
    desktops: [
      { name: "CAD 1", agentHost: "10.20.3.14" },
      { name: "CAD 2", agentHost: "10.20.3.15" },
    ],
  },
  bob: { password: "bob-pw", desktops: [{ name: "Render 9", agentHost: "10.20.4.9" }] },
  mfa: { password: "mfa-pw", dialogCode: "123456", desktops: [{ name: "Secure 1", agentHost: "10.20.5.1" }] },
};
const PCM = {
  productName: "pcoip-cmsg",
  productVersion: "0.1.0",
  platform: "linux",
  ipAddress: "10.0.1.7",
  hostname: "cm.example.net",
};
const ALICE = { clientIp: "198.51.100.77", clientLogId: "a1ff3a80-8801-1038-a9bd-00505680aded" };
const BOB = { clientIp: "198.51.100.78", clientLogId: "b2ff3a80-8801-1038-a9bd-00505680aded" };

function req<T extends ClientRequest>(inner: string): T {
  const r = parseClientRequest(`<?xml version='1.0'?><pcoip-client version='2.1'>${inner}</pcoip-client>`);
  if (!r.ok) throw new Error(`bad test request: ${r.error.detail}`);
  return r.msg as T;
}
const HELLO = () =>
  req<Extract<ClientRequest, { op: "hello" }>>(
    '<hello><client-info><product-name>Teradici PCoIP Desktop Client</product-name><product-version>23.01.2</product-version></client-info><caps><cap>CAP_DIALOG_AUTHENTICATION</cap></caps><server-address><ip-address>203.0.113.10</ip-address><hostname>cm.example.net</hostname></server-address><x-client-extension a="1">kept</x-client-extension></hello>',
  );
const PROBE = () =>
  req<Extract<ClientRequest, { op: "hello" }>>(
    "<hello><client-info><product-name>QueryBrokerClient</product-name></client-info></hello>",
  );
const AUTH = (user: string, pw: string) =>
  req<Extract<ClientRequest, { op: "authenticate" }>>(
    `<authenticate method="password"><username>${user}</username><password>${pw.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")}</password><domain>corp.example</domain></authenticate>`,
  );
const LIST = () =>
  req<Extract<ClientRequest, { op: "get-resource-list" }>>(
    "<get-resource-list><protocols><protocol>PCOIP</protocol></protocols><resource-types><resource-type>DESKTOP</resource-type></resource-types></get-resource-list>",
  );
const ALLOC = (id: string) =>
  req<Extract<ClientRequest, { op: "allocate-resource" }>>(
    `<allocate-resource><resource-id>${id}</resource-id><protocol>PCOIP</protocol><client-info><ip-address>192.168.1.23</ip-address><mac-address>02:42:ac:11:00:02</mac-address></client-info></allocate-resource>`,
  );
const BYE = () => req<Extract<ClientRequest, { op: "bye" }>>("<bye/>");

function setup(broker: FakeBroker, extra: Partial<UpstreamOptions> = {}) {
  const sink = memoryDestination();
  const log = createLogger({ level: "debug", destination: sink });
  const r = resolveUpstreamOptions({
    brokerUrl: broker.url,
    caCertPem: broker.caCert,
    systemCa: false,
    env: {},
    pcmInfo: PCM,
    ...extra,
  });
  if (!r.ok) throw new Error(r.error.cause);
  const settings = { ...r.value.conversation, connect: { ...r.value.conversation.connect } };
  return { settings, log, sink, conversation: () => createUpstreamConversation(settings, log) };
}

describe("relaying one conversation", () => {
  let broker: FakeBroker;
  const open: UpstreamConversation[] = [];
  beforeAll(async () => {
    broker = await startFakeBroker({ launch: "host-only", users: USERS, idleCloseMs: 400 });
  });
  afterEach(async () => {
    for (const c of open.splice(0)) await c.close();
  });
  afterAll(async () => {
    await broker?.close();
  });
  const requestsSince = (n: number) => broker.requests.slice(n);

  test("hello → authenticate → list → allocate → bye, as the broker wants it on the wire", async () => {
    const { conversation, sink } = setup(broker);
    const c = conversation();
    open.push(c);
    const start = broker.requests.length;
    const hello = await c.hello(HELLO(), ALICE);
    expect(hello.ok).toBe(true);
    if (!hello.ok) return;
    // The broker's answer reaches the client with its unknown elements.
    expect(buildHelloResp(hello.resp)).toContain("<motd>Welcome to the fake broker</motd>");
    expect(hello.resp.brokers[0]?.ipAddress).toBe("N/A");
    const auth = await c.authenticate(AUTH("alice", "alice pw <&>"), ALICE);
    expect(auth.ok && auth.resp.result).toEqual({
      resultId: "AUTH_SUCCESSFUL_AND_COMPLETE",
      resultStr: "Authentication successful",
    });
    const list = await c.getResourceList(LIST(), ALICE);
    expect(list.ok && list.resp.resources.map((r) => [r.resourceId, r.resourceName])).toEqual([
      ["0", "CAD 1"],
      ["1", "CAD 2"],
    ]);
    const alloc = await c.allocateResource(ALLOC("1"), ALICE);
    expect(alloc.ok && alloc.resp.result.resultId).toBe("ALLOC_SUCCESSFUL");
    expect(alloc.ok && alloc.resp.target?.ipAddress).toBe("10.20.3.15");
    expect((await c.bye(BYE(), ALICE)).ok).toBe(true);

    const sent = requestsSince(start);
    expect(sent.map((r) => r.op)).toEqual([
      "hello",
      "authenticate",
      "get-resource-list",
      "allocate-resource",
      "bye",
    ]);
    for (const r of sent) {
      expect(r.chunked).toBe(false);
      expect(r.header("content-length")).toBe(String(Buffer.byteLength(r.body)));
      expect(r.root).toBe("pcoip-client");
      expect(r.header("x-forwarded-for")).toBe("198.51.100.77");
      expect(r.header("client-log-id")).toBe(ALICE.clientLogId);
    }
    // The first request has no cookie; every later one carries the one the broker set, unchanged.
    expect(sent[0]!.cookie).toBeUndefined();
    expect(new Set(sent.slice(1).map((r) => r.cookie))).toEqual(new Set([sent[0]!.sessionId]));
    // hello carries pcm-info (this CM) and the client's own elements, unknown ones included.
    expect(sent[0]!.body).toContain("<pcm-info><product-name>pcoip-cmsg</product-name>");
    expect(sent[0]!.body).toContain('<x-client-extension a="1">kept</x-client-extension>');
    expect(sent[0]!.body).toContain("<cap>CAP_DIALOG_AUTHENTICATION</cap>");
    // The password reached the broker exactly, and never the log.
    expect(sent[1]!.body).toContain("<password>alice pw &lt;&amp;&gt;</password>");
    expect(sink.text()).not.toContain("alice pw");
    expect(sink.text()).not.toContain(sent[0]!.sessionId);
  });

  test("a failed sign-in passes the broker's result through and may be retried", async () => {
    const { conversation } = setup(broker);
    const c = conversation();
    open.push(c);
    await c.hello(HELLO(), ALICE);
    const bad = await c.authenticate(AUTH("alice", "wrong"), ALICE);
    expect(bad.ok && bad.resp.result.resultId).toBe("AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD");
    expect(bad.ok && bad.resp.result.resultStr).toBe(
      "User authentication failed. Please re-enter username, password, and/or domain.",
    );
    const good = await c.authenticate(AUTH("alice", "alice pw <&>"), ALICE);
    expect(good.ok && good.resp.result.resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
  });

  test("dialog (MFA) steps and unknown methods are relayed untouched; INCOMPLETE and its prompt reach the client", async () => {
    const { conversation } = setup(broker);
    const c = conversation();
    open.push(c);
    await c.hello(HELLO(), ALICE);
    const step1 = await c.authenticate(AUTH("mfa", "mfa-pw"), ALICE);
    expect(step1.ok).toBe(true);
    if (!step1.ok) return;
    expect(step1.resp.result.resultId).toBe("AUTH_SUCCESSFUL_AND_INCOMPLETE");
    expect(step1.resp.nextAuthenticationMethods).toEqual(["AUTHENTICATE_VIA_DIALOG"]);
    const toClient = buildAuthenticateResp(step1.resp);
    expect(toClient).toContain('<prompt echo="false">Code</prompt>');

    const start = broker.requests.length;
    const unknown = await c.authenticate(
      req('<authenticate method="smartcard-x"><reader slot="2">r1</reader><pin-hint/></authenticate>'),
      ALICE,
    );
    expect(unknown.ok && unknown.resp.result.resultId).toBe("AUTH_FAILED_ACCESS_DENIED");
    const dialog = await c.authenticate(
      req('<authenticate method="dialog"><response>123456</response></authenticate>'),
      ALICE,
    );
    expect(dialog.ok && dialog.resp.result.resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    expect(dialog.ok && dialog.resp.method).toBeUndefined();
    const sent = requestsSince(start);
    expect(sent[0]!.body).toContain(
      '<authenticate method="smartcard-x"><reader slot="2">r1</reader><pin-hint',
    );
    expect(sent[0]!.body).not.toContain("<username>");
    expect(sent[1]!.body).toContain(
      '<authenticate method="dialog"><response>123456</response></authenticate>',
    );
    const list = await c.getResourceList(LIST(), ALICE);
    expect(list.ok && list.resp.resources[0]?.resourceName).toBe("Secure 1");
  });

  test("the probe is relayed statelessly: no cookie sent, none kept, no conversation", async () => {
    const { settings, log, conversation } = setup(broker);
    const start = broker.requests.length;
    const probe = await relayProbe(settings, PROBE(), ALICE, log);
    expect(probe.ok && probe.resp.op).toBe("hello-resp");
    const c = conversation();
    open.push(c);
    expect(c.hasCookie).toBe(false);
    await c.hello(HELLO(), { ...ALICE, clientLogId: "" });
    const [p, h] = requestsSince(start);
    expect(p!.cookie).toBeUndefined();
    expect(h!.cookie).toBeUndefined();
    expect(h!.sessionId).not.toBe(p!.sessionId);
  });

  test("a kept-alive connection the broker closed while the user typed is reopened with the same cookie", async () => {
    const { conversation } = setup(broker);
    const c = conversation();
    open.push(c);
    const start = broker.requests.length;
    await c.hello(HELLO(), ALICE);
    await Bun.sleep(600); // the broker closes idle connections after 400 ms here (2 s for gunicorn)
    const auth = await c.authenticate(AUTH("alice", "alice pw <&>"), ALICE);
    expect(auth.ok && auth.resp.result.resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    const [h, a] = requestsSince(start);
    expect(a!.connId).not.toBe(h!.connId);
    expect(a!.cookie).toBe(h!.sessionId);
  });

  test("a connection that dies before answering: list is sent again, allocate-resource never is", async () => {
    const { conversation, sink } = setup(broker);
    const c = conversation();
    open.push(c);
    await c.hello(HELLO(), ALICE);
    await c.authenticate(AUTH("alice", "alice pw <&>"), ALICE);
    let start = broker.requests.length;
    broker.fail("close-before-answer", { op: "get-resource-list", times: 1 });
    const list = await c.getResourceList(LIST(), ALICE);
    expect(list.ok).toBe(true);
    expect(requestsSince(start).map((r) => r.op)).toEqual(["get-resource-list", "get-resource-list"]);

    start = broker.requests.length;
    broker.fail("close-before-answer", { op: "allocate-resource", times: 1 });
    const alloc = await c.allocateResource(ALLOC("0"), ALICE);
    expect(alloc.ok).toBe(false);
    if (alloc.ok) return;
    expect(alloc.failure.kind).toBe("not_replayed");
    expect(requestsSince(start).map((r) => r.op)).toEqual(["allocate-resource"]);
    expect(sink.text()).toContain("allocate-resource was not sent again");
  });

  test("after an allocation, listing again ends the broker's conversation and rebuilds it (bye, hello, sign-in)", async () => {
    const { conversation, sink } = setup(broker);
    const c = conversation();
    open.push(c);
    await c.hello(HELLO(), ALICE);
    await c.authenticate(AUTH("alice", "alice pw <&>"), ALICE);
    await c.getResourceList(LIST(), ALICE);
    await c.allocateResource(ALLOC("0"), ALICE);
    const start = broker.requests.length;
    const again = await c.getResourceList(LIST(), ALICE);
    expect(again.ok && again.resp.result.resultId).toBe("LIST_SUCCESSFUL");
    const alloc = await c.allocateResource(ALLOC("1"), ALICE);
    expect(alloc.ok && alloc.resp.target?.ipAddress).toBe("10.20.3.15");
    expect(requestsSince(start).map((r) => r.op)).toEqual([
      "bye",
      "hello",
      "authenticate",
      "get-resource-list",
      "allocate-resource",
    ]);
    expect(requestsSince(start).every((r) => r.status === 200)).toBe(true);
    expect(sink.text()).toContain("rebuilding the broker conversation");
  });

  test("allocating again after an allocation rebuilds up to a fresh list, then allocates", async () => {
    const { conversation } = setup(broker);
    const c = conversation();
    open.push(c);
    await c.hello(HELLO(), ALICE);
    await c.authenticate(AUTH("alice", "alice pw <&>"), ALICE);
    await c.getResourceList(LIST(), ALICE);
    await c.allocateResource(ALLOC("0"), ALICE);
    const start = broker.requests.length;
    const alloc = await c.allocateResource(ALLOC("1"), ALICE);
    expect(alloc.ok && alloc.resp.result.resultId).toBe("ALLOC_SUCCESSFUL");
    expect(requestsSince(start).map((r) => r.op)).toEqual([
      "bye",
      "hello",
      "authenticate",
      "get-resource-list",
      "allocate-resource",
    ]);
  });

  test("after a dialog sign-in the conversation cannot be rebuilt: a clear failure, nothing replayed", async () => {
    const { conversation } = setup(broker);
    const c = conversation();
    open.push(c);
    await c.hello(HELLO(), ALICE);
    await c.authenticate(AUTH("mfa", "mfa-pw"), ALICE);
    await c.authenticate(
      req('<authenticate method="dialog"><response>123456</response></authenticate>'),
      ALICE,
    );
    await c.getResourceList(LIST(), ALICE);
    await c.allocateResource(ALLOC("0"), ALICE);
    const start = broker.requests.length;
    const again = await c.getResourceList(LIST(), ALICE);
    expect(again.ok).toBe(false);
    if (!again.ok) expect(again.failure.kind).toBe("conversation_lost");
    expect(requestsSince(start)).toEqual([]);
  });

  test("a broker that reset its side on a 500 without saying so: its 'Unexpected message' next time makes the CM rebuild and resend", async () => {
    const { conversation, sink } = setup(broker);
    const c = conversation();
    open.push(c);
    await c.hello(HELLO(), ALICE);
    await c.authenticate(AUTH("alice", "alice pw <&>"), ALICE);
    broker.fail("http-500", { op: "get-resource-list", times: 1 });
    const failed = await c.getResourceList(LIST(), ALICE);
    expect(failed.ok).toBe(false);
    if (!failed.ok) {
      expect(failed.failure.kind).toBe("http_status");
      expect(failed.failure.status).toBe(500);
      expect(failed.failure.cause).toContain('HTTP 500 Internal Server Error ("A server error occurred.")');
    }
    expect(sink.text()).toContain("the broker answered HTTP 500");
    const start = broker.requests.length;
    const retry = await c.getResourceList(LIST(), ALICE);
    expect(retry.ok).toBe(true);
    expect(requestsSince(start).map((r) => `${r.op}:${r.status}`)).toEqual([
      "get-resource-list:500",
      "hello:200",
      "authenticate:200",
      "get-resource-list:200",
    ]);
    expect(sink.text()).toContain("sending get-resource-list again");
  });

  test("the broker's cookie is taken from an error answer too, and sent from then on", async () => {
    const { conversation } = setup(broker);
    const c = conversation();
    open.push(c);
    const start = broker.requests.length;
    broker.fail("http-500", { op: "hello", times: 1 });
    const failed = await c.hello(HELLO(), ALICE);
    expect(failed.ok).toBe(false);
    expect(c.hasCookie).toBe(true);
    const again = await c.hello(HELLO(), ALICE);
    expect(again.ok).toBe(true);
    const [first, second] = requestsSince(start);
    expect(first!.status).toBe(500);
    expect(first!.cookie).toBeUndefined();
    expect(second!.cookie).toBe(first!.sessionId);
  });

  test("two conversations interleaved keep their own cookies and broker sessions", async () => {
    const { conversation } = setup(broker);
    const a = conversation();
    const b = conversation();
    open.push(a, b);
    const start = broker.requests.length;
    await a.hello(HELLO(), ALICE);
    await b.hello(HELLO(), BOB);
    await b.authenticate(AUTH("bob", "bob-pw"), BOB);
    await a.authenticate(AUTH("alice", "alice pw <&>"), ALICE);
    const [la, lb] = await Promise.all([a.getResourceList(LIST(), ALICE), b.getResourceList(LIST(), BOB)]);
    expect(la.ok && la.resp.resources.map((r) => r.resourceName)).toEqual(["CAD 1", "CAD 2"]);
    expect(lb.ok && lb.resp.resources.map((r) => r.resourceName)).toEqual(["Render 9"]);
    const [xa, xb] = await Promise.all([
      a.allocateResource(ALLOC("1"), ALICE),
      b.allocateResource(ALLOC("0"), BOB),
    ]);
    expect(xa.ok && xa.resp.target?.ipAddress).toBe("10.20.3.15");
    expect(xb.ok && xb.resp.target?.ipAddress).toBe("10.20.4.9");
    const sent = requestsSince(start);
    const byClient = (ip: string) => sent.filter((r) => r.header("x-forwarded-for") === ip);
    const sessionsA = new Set(byClient(ALICE.clientIp).map((r) => r.sessionId));
    const sessionsB = new Set(byClient(BOB.clientIp).map((r) => r.sessionId));
    expect(sessionsA.size).toBe(1);
    expect(sessionsB.size).toBe(1);
    expect([...sessionsA][0]).not.toBe([...sessionsB][0]);
  });
});

describe.each<BrokerRoot>(["pcoip-client", "pcoip-broker"])("dialect %s", (dialect) => {
  let broker: FakeBroker;
  beforeAll(async () => {
    broker = await startFakeBroker({
      launch: "host-only",
      users: USERS,
      roots: [dialect],
      replyRoot: dialect,
    });
  });
  afterAll(async () => {
    await broker?.close();
  });
  test("requests go under the configured root; replies are accepted under it", async () => {
    const { conversation } = setup(broker, { dialect });
    const c = conversation();
    const h = await c.hello(HELLO(), ALICE);
    const a = await c.authenticate(AUTH("bob", "bob-pw"), ALICE);
    await c.close(ALICE);
    expect(h.ok).toBe(true);
    expect(a.ok && a.resp.result.resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    expect(broker.requests[0]!.root).toBe(dialect);
    expect(broker.requests[0]!.body).toContain(`<${dialect} version="2.1"><hello>`);
  });
});

test("replies are accepted under either root, whatever the dialect of the requests", async () => {
  const broker = await startFakeBroker({
    launch: "host-only",
    users: USERS,
    roots: ["pcoip-client"],
    replyRoot: "pcoip-broker",
  });
  try {
    const { conversation } = setup(broker, { dialect: "pcoip-client" });
    const c = conversation();
    const h = await c.hello(HELLO(), ALICE);
    const a = await c.authenticate(AUTH("bob", "bob-pw"), ALICE);
    await c.close(ALICE);
    expect(h.ok).toBe(true);
    expect(a.ok && a.resp.result.resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
  } finally {
    await broker.close();
  }
});

test("a cookie-less broker (Client-Log-Id as its session key) works through the forwarded Client-Log-Id", async () => {
  const broker = await startFakeBroker({ launch: "host-only", users: USERS, sessionKey: "client-log-id" });
  try {
    const { conversation } = setup(broker);
    const c = conversation();
    await c.hello(HELLO(), ALICE);
    const a = await c.authenticate(AUTH("bob", "bob-pw"), ALICE);
    const l = await c.getResourceList(LIST(), ALICE);
    await c.close(ALICE);
    expect(a.ok && a.resp.result.resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    expect(l.ok && l.resp.resources[0]?.resourceName).toBe("Render 9");
    expect(c.hasCookie).toBe(false);
  } finally {
    await broker.close();
  }
});
