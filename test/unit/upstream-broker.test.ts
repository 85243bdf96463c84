// Claim: the upstream broker, through the CM's one broker interface, answers every message with the *-resp the
// client should see: the broker's own answers (with this CM's pcm-info on hello), identities on a completed
// sign-in, "launch" when the broker names only the desktop host, and every broker failure as the operation's
// failure result with the vendor sentence.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { ConversationContext } from "../../src/cm/brokers/broker.ts";
import {
  createUpstreamBroker,
  type UpstreamBroker,
  type UpstreamOptions,
} from "../../src/cm/brokers/upstream.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { buildHelloResp, parseClientRequest } from "../../src/protocol/broker.ts";
import type { ClientRequest } from "../../src/protocol/types.ts";
import { type FakeBroker, startFakeBroker } from "../peers/fake-broker.ts";

const PCM = {
  productName: "pcoip-cmsg",
  productVersion: "0.1.0",
  platform: "linux",
  ipAddress: "10.0.1.7",
  hostname: "cm.example.net",
};

function req<T extends ClientRequest>(inner: string): T {
  const r = parseClientRequest(`<pcoip-client version="2.1">${inner}</pcoip-client>`);
  if (!r.ok) throw new Error(r.error.detail);
  return r.msg as T;
}
const HELLO = () =>
  req<Extract<ClientRequest, { op: "hello" }>>(
    "<hello><client-info><product-name>Teradici PCoIP Desktop Client</product-name></client-info></hello>",
  );
const AUTH = (u: string, p: string) =>
  req<Extract<ClientRequest, { op: "authenticate" }>>(
    `<authenticate method="password"><username>${u}</username><password>${p}</password><domain>corp.example</domain></authenticate>`,
  );
const LIST = () => req<Extract<ClientRequest, { op: "get-resource-list" }>>("<get-resource-list/>");
const ALLOC = (id: string) =>
  req<Extract<ClientRequest, { op: "allocate-resource" }>>(
    `<allocate-resource><resource-id>${id}</resource-id></allocate-resource>`,
  );

function make(broker: FakeBroker, extra: Partial<UpstreamOptions> = {}) {
  const sink = memoryDestination();
  const log = createLogger({ destination: sink });
  const r = createUpstreamBroker({
    brokerUrl: broker.url,
    caCertPem: broker.caCert,
    systemCa: false,
    env: {},
    pcmInfo: PCM,
    agentPort: 60443,
    ...extra,
  });
  if (!r.ok) throw new Error(r.error.cause);
  const ctx: ConversationContext = {
    sessionLogId: "5b1e0c40-1f2a-11ee-9c1d-000000000001",
    clientIp: "198.51.100.77",
    clientLogId: "",
    log,
  };
  return { upstream: r.broker as UpstreamBroker, ctx, sink };
}

describe("upstream broker behind the broker interface", () => {
  let broker: FakeBroker;
  beforeAll(async () => {
    broker = await startFakeBroker({
      launch: "host-only",
      users: {
        alice: {
          password: "alice-pw",
          desktops: [{ name: "CAD 1", agentHost: "10.20.3.14", hostname: "cad1.corp.example" }],
        },
        mfa: { password: "mfa-pw", dialogCode: "4242", desktops: [] },
      },
    });
  });
  afterAll(async () => {
    await broker?.close();
  });

  test("configuration mistakes are values", () => {
    const bad = createUpstreamBroker({ brokerUrl: "http://broker", pcmInfo: PCM, env: {} });
    expect(!bad.ok && bad.error.cause).toContain("https://");
    const badProxy = createUpstreamBroker({
      brokerUrl: broker.url,
      pcmInfo: PCM,
      env: { HTTPS_PROXY: "socks5://x:1" },
    });
    expect(!badProxy.ok && badProxy.error.what).toBe("reading HTTPS_PROXY");
    const badCa = createUpstreamBroker({
      brokerUrl: broker.url,
      pcmInfo: PCM,
      env: {},
      caCertPem: "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----",
    });
    expect(!badCa.ok && badCa.error.what).toContain("tls.trustedCa");
  });

  test("probe and hello: the broker's hello-resp with this CM's pcm-info; the session id stands in for a missing Client-Log-Id", async () => {
    const { upstream, ctx } = make(broker);
    expect(upstream.kind).toBe("upstream");
    expect(upstream.description).toContain(broker.url);
    const probe = await upstream.probe(HELLO(), ctx);
    expect(probe.pcm).toEqual(PCM);
    expect(probe.brokers[0]?.productName).toBe("Interstate Love Song");
    const conv = upstream.openConversation(ctx);
    const hello = await conv.hello(HELLO());
    expect(hello.pcm).toEqual(PCM);
    expect(hello.authenticationMethods).toEqual(["AUTHENTICATE_VIA_PASSWORD"]);
    expect(broker.requests.at(-1)!.header("client-log-id")).toBe(ctx.sessionLogId);
    await conv.close();
  });

  test("sign-in gives the identity exactly on AUTH_SUCCESSFUL_AND_COMPLETE; a host-only target means launch", async () => {
    const { upstream, ctx } = make(broker);
    const conv = upstream.openConversation({ ...ctx, clientLogId: "a1ff3a80-8801-1038-a9bd-00505680aded" });
    await conv.hello(HELLO());
    const bad = await conv.authenticate(AUTH("alice", "nope"));
    expect(bad.identity).toBeUndefined();
    expect(bad.resp.result.resultId).toBe("AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD");
    const good = await conv.authenticate(AUTH("alice", "alice-pw"));
    expect(good.identity).toEqual({ user: "alice", domain: "corp.example" });
    const list = await conv.getResourceList(LIST());
    expect(list.resources.map((r) => r.resourceId)).toEqual(["0"]);
    const alloc = await conv.allocateResource(ALLOC("0"));
    expect(alloc.kind).toBe("launch");
    if (alloc.kind !== "launch") return;
    expect(alloc.resourceId).toBe("0");
    expect(alloc.agent).toEqual({ host: "10.20.3.14", port: 60443, hostname: "cad1.corp.example" });
    expect(alloc.resp?.result.resultId).toBe("ALLOC_SUCCESSFUL");
    expect(broker.requests.at(-1)!.header("client-log-id")).toBe("a1ff3a80-8801-1038-a9bd-00505680aded");
    expect((await conv.bye(req("<bye/>"))).op).toBe("bye-resp");
    await conv.close();
  });

  test("a dialog step that completes the sign-in yields the identity named by the password step", async () => {
    const { upstream, ctx } = make(broker);
    const conv = upstream.openConversation(ctx);
    await conv.hello(HELLO());
    const step1 = await conv.authenticate(AUTH("mfa", "mfa-pw"));
    expect(step1.resp.result.resultId).toBe("AUTH_SUCCESSFUL_AND_INCOMPLETE");
    expect(step1.identity).toBeUndefined();
    const step2 = await conv.authenticate(
      req('<authenticate method="dialog"><response>4242</response></authenticate>'),
    );
    expect(step2.resp.result.resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    expect(step2.identity).toEqual({ user: "mfa", domain: "corp.example" });
    await conv.close();
  });

  test("broker failures become each operation's failure result with the vendor sentence", async () => {
    const { upstream, ctx, sink } = make(broker, { timeoutMs: 300 });
    const conv = upstream.openConversation(ctx);
    broker.fail("http-500", { op: "hello", times: 1 });
    const hello = await conv.hello(HELLO());
    // The documented hello-resp shape (PROTOCOL.md §2.2): the password step then reports the broker error.
    expect(hello.authenticationMethods).toEqual(["AUTHENTICATE_VIA_PASSWORD"]);
    const xml = buildHelloResp(hello);
    expect(xml).not.toContain("<result>");
    expect(xml).toContain("<pcm-info>");
    expect(xml).toContain("<next-authentication>");

    await conv.hello(HELLO());
    broker.fail("garbage", { op: "authenticate", times: 1 });
    const auth = await conv.authenticate(AUTH("alice", "alice-pw"));
    expect(auth.resp).toEqual({
      op: "authenticate-resp",
      method: "password",
      result: {
        resultId: "AUTH_FAILED_BROKER_ERROR",
        resultStr: "Error occurred while communicating with broker",
      },
    });
    expect(auth.identity).toBeUndefined();
    await conv.authenticate(AUTH("alice", "alice-pw"));
    broker.fail("timeout", { op: "get-resource-list", times: 1 });
    const list = await conv.getResourceList(LIST());
    expect(list.result).toEqual({
      resultId: "LIST_FAILED_BROKER_ERROR",
      resultStr: "Timeout occurred while communicating with broker",
    });
    expect(list.resources).toEqual([]);
    const relisted = await conv.getResourceList(LIST());
    expect(relisted.result.resultId).toBe("LIST_SUCCESSFUL");
    broker.fail("wrong-root", { op: "allocate-resource", times: 1 });
    const alloc = await conv.allocateResource(ALLOC("0"));
    expect(alloc).toEqual({
      kind: "refused",
      resp: {
        op: "allocate-resource-resp",
        result: {
          resultId: "ALLOC_FAILED_TO_ALLOCATE_BROKER",
          resultStr: "Error occurred while communicating with broker",
        },
      },
    });
    const kinds = sink
      .lines()
      .map((l) => JSON.parse(l).failure)
      .filter(Boolean);
    expect(kinds).toEqual(["http_status", "bad_xml", "timeout", "wrong_root"]);
    await conv.close();
  });

  test("ALLOC_SUCCESSFUL without a target is a failure", async () => {
    const { upstream, ctx } = make(broker);
    const conv = upstream.openConversation(ctx);
    await conv.hello(HELLO());
    await conv.authenticate(AUTH("alice", "alice-pw"));
    await conv.getResourceList(LIST());
    broker.fail("success-without-target", { op: "allocate-resource", times: 1 });
    const alloc = await conv.allocateResource(ALLOC("0"));
    expect(alloc.kind).toBe("refused");
    expect(alloc.kind === "refused" && alloc.resp.result.resultId).toBe("ALLOC_FAILED_TO_ALLOCATE_BROKER");
    await conv.close();
  });

  test("close() mid-conversation says bye to the broker, once", async () => {
    const { upstream, ctx } = make(broker);
    const conv = upstream.openConversation(ctx);
    await conv.hello(HELLO());
    const start = broker.requests.length;
    await conv.close();
    await conv.close();
    expect(broker.requests.slice(start).map((r) => r.op)).toEqual(["bye"]);
  });
});
