// Claim: in front of a broker that behaves like the real Python/falcon one (test/peers/falcon-broker.ts), a PCoIP
// client going through the whole CM never pays for the broker's bookkeeping (issue 18): after a request the
// broker failed with an exception (empty password, slow agent) the next valid one succeeds; when the broker reset
// or forgot its session the CM rebuilds it and the client sees no failure; an unknown resource id is refused
// ALLOC_FAILED_RESOURCE_NOT_AVAILABLE without asking the broker; agent codes a broker passes through reach the
// client as ALLOC_FAILED_* ids (original logged); HTTP/1.0 requests get Content-Length answers and a close unless
// they asked for keep-alive; the log states the real time a broker 500 took; and while the broker is down, hello
// has the documented shape (password method, no result) and sign-in works once the broker is back. The broker's
// 2 s keep-alive close and its own cookie cost the user nothing.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { type FakeAgent, startFakeAgent } from "../peers/fake-agent.ts";
import { type FalconBroker, startFalconBroker } from "../peers/falcon-broker.ts";
import { type PcoipClient, pcoipClient } from "../peers/pcoip-client.ts";
import { rawConnect } from "../peers/raw-http.ts";
import { testPki } from "../peers/test-certs.ts";
import { startUpstreamCm, type UpstreamCm } from "../peers/upstream-cm.ts";

setDefaultTimeout(30_000);

const PASSWORD = "alice pw";

type CmRig = UpstreamCm;
const startCm = (upstream: Parameters<typeof startUpstreamCm>[0]) => startUpstreamCm(upstream);

const client = (port: number): PcoipClient =>
  pcoipClient({
    host: "127.0.0.1",
    port,
    ca: testPki().ca.cert,
    servername: "localhost",
    clientLogId: crypto.randomUUID(),
  });

const resultOf = (a: { resultId: string }) => a.resultId;

let good: FakeAgent;
let slow: FakeAgent;
let refusing: FakeAgent;
let down: FakeAgent;
let broker: FalconBroker;
let cm: CmRig;

beforeAll(async () => {
  good = await startFakeAgent({ sni: "desktop-1.test" });
  slow = await startFakeAgent({ mode: "slow", slowMs: 4000 });
  refusing = await startFakeAgent({ mode: "user_auth" });
  down = await startFakeAgent({ mode: "down" });
  const at = (a: FakeAgent, name: string) => ({ name, agentHost: a.hostname, agentPort: a.port });
  broker = await startFalconBroker({
    agentTimeoutMs: 600,
    users: {
      alice: {
        password: PASSWORD,
        desktops: [at(good, "Good"), at(slow, "Slow"), at(refusing, "Refusing"), at(down, "Down")],
      },
    },
  });
  cm = await startCm({ brokerUrl: broker.url, caCertPem: broker.caCert, allocateTimeoutMs: 5000 });
});
afterAll(async () => {
  await cm?.stop();
  await broker?.close();
  for (const a of [good, slow, refusing, down]) await a?.close();
});

async function signedInAndListed(): Promise<PcoipClient> {
  const c = client(cm.port);
  await c.probe();
  await c.hello();
  expect(resultOf(await c.authenticate("alice", PASSWORD, "corp.example"))).toBe(
    "AUTH_SUCCESSFUL_AND_COMPLETE",
  );
  expect(resultOf(await c.getResourceList())).toBe("LIST_SUCCESSFUL");
  return c;
}

describe("1. a broker error fails one request, not the next", () => {
  test("after an empty password (an exception at the broker), the right password signs in", async () => {
    const c = client(cm.port);
    await c.hello();
    const start = broker.requests.length;
    const empty = await c.authenticate("alice", "", "corp.example");
    expect(resultOf(empty)).toBe("AUTH_FAILED_BROKER_ERROR");
    const right = await c.authenticate("alice", PASSWORD, "corp.example");
    expect(resultOf(right)).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    // The broker kept its session: the right password went straight to it, nothing replayed.
    expect(broker.requests.slice(start).map((r) => `${r.op}:${r.outcome}`)).toEqual([
      "authenticate:exception",
      "authenticate:ok",
    ]);
    c.close();
  });

  test("after a slow agent (the broker's own agent timeout, a 500), the next allocation succeeds", async () => {
    const c = await signedInAndListed();
    const start = broker.requests.length;
    const first = await c.allocate("1");
    expect(first.msg?.op === "allocate-resource-resp" && first.msg.result).toEqual({
      resultId: "ALLOC_FAILED_TO_ALLOCATE_BROKER",
      resultStr: "Error occurred while communicating with broker",
    });
    const second = await c.allocate("0");
    expect(resultOf(second)).toBe("ALLOC_SUCCESSFUL");
    expect(broker.requests.slice(start).map((r) => `${r.op}:${r.outcome}`)).toEqual([
      "allocate-resource:exception",
      "allocate-resource:ok",
    ]);
    c.close();
  });

  test("a broker that forgot the session (restart): the CM rebuilds it and the client's allocation succeeds", async () => {
    const c = await signedInAndListed();
    broker.forgetSessions();
    const start = broker.requests.length;
    const alloc = await c.allocate("0");
    expect(resultOf(alloc)).toBe("ALLOC_SUCCESSFUL");
    // Told by the broker's "Unexpected message" and its new cookie, the CM replays the sign-in and allocates again.
    expect(broker.requests.slice(start).map((r) => `${r.op}:${r.outcome}`)).toEqual([
      "allocate-resource:unexpected",
      "hello:ok",
      "authenticate:ok",
      "get-resource-list:ok",
      "allocate-resource:ok",
    ]);
    c.close();
  });
});

describe("the broker's own keep-alive and cookie", () => {
  test("a user who types longer than the broker's 2 s keep-alive: the CM reconnects with the same cookie, nothing replayed", async () => {
    const c = client(cm.port);
    await c.hello();
    const start = broker.requests.length;
    await Bun.sleep(2300);
    expect(resultOf(await c.authenticate("alice", PASSWORD, "corp.example"))).toBe(
      "AUTH_SUCCESSFUL_AND_COMPLETE",
    );
    const sent = broker.requests.slice(start);
    expect(sent.map((r) => `${r.op}:${r.outcome}`)).toEqual(["authenticate:ok"]);
    expect(sent[0]!.cookie).toBe(broker.requests[start - 1]!.sessionId);
    c.close();
  });
});

describe("2. resource ids are checked against the list the client got", () => {
  test("an unknown id is ALLOC_FAILED_RESOURCE_NOT_AVAILABLE without asking the broker; a listed one then works", async () => {
    const c = await signedInAndListed();
    const start = broker.requests.length;
    const unknown = await c.allocate("nonexistent-99");
    expect(unknown.msg?.op === "allocate-resource-resp" && unknown.msg.result).toEqual({
      resultId: "ALLOC_FAILED_RESOURCE_NOT_AVAILABLE",
      resultStr: "The requested remote workstation is not available to this user",
    });
    expect(broker.requests.slice(start)).toEqual([]);
    expect(resultOf(await c.allocate("0"))).toBe("ALLOC_SUCCESSFUL");
    c.close();
  });
});

describe("3. upstream result ids outside the client's vocabulary are mapped", () => {
  test("FAILED_USER_AUTH passed through by the broker reaches the client as ALLOC_FAILED_TO_ALLOCATE_AGENT; the log keeps the original", async () => {
    const c = await signedInAndListed();
    const alloc = await c.allocate("2");
    expect(alloc.msg?.op === "allocate-resource-resp" && alloc.msg.result).toEqual({
      resultId: "ALLOC_FAILED_TO_ALLOCATE_AGENT",
      resultStr: "The remote workstation did not accept the user name, password or domain",
    });
    expect(alloc.body).not.toContain("FAILED_USER_AUTH");
    const line = cm.lines().findLast((l) => l.upstreamResultId === "FAILED_USER_AUTH")!;
    expect(line.resultId).toBe("ALLOC_FAILED_TO_ALLOCATE_AGENT");
    // The broker still waits for an allocation: another desktop works.
    expect(resultOf(await c.allocate("0"))).toBe("ALLOC_SUCCESSFUL");
    c.close();
  });
});

describe("4. HTTP/1.0 clients", () => {
  const hello = `<?xml version='1.0' encoding='UTF-8'?><pcoip-client version='2.1'><hello><client-info><product-name>QueryBrokerClient</product-name><product-version>1.0</product-version><platform>PCoIP</platform></client-info></hello></pcoip-client>`;
  const request = (connection: string) =>
    `POST /pcoip-broker/xml HTTP/1.0\r\nHost: cm\r\nContent-Type: text/xml\r\n${connection}Content-Length: ${Buffer.byteLength(hello)}\r\n\r\n${hello}`;

  test("a Content-Length body and Connection: close, then the close", async () => {
    const c = await rawConnect({ port: cm.port, ca: testPki().ca.cert });
    c.send(request(""));
    const text = await c.waitFor((t) => t.includes("</pcoip-client>"));
    const [head = "", body = ""] = text.split("\r\n\r\n");
    expect(head).toMatch(/^HTTP\/1\.[01] 200 /);
    expect(head.toLowerCase()).not.toContain("transfer-encoding");
    expect(head).toContain("\r\nConnection: close");
    expect(Number(/\r\nContent-Length: (\d+)/.exec(head)?.[1])).toBe(Buffer.byteLength(body));
    expect(body).toContain("<hello-resp>");
    expect(await c.closed()).toBe(true);
  });

  test("asked for keep-alive: Content-Length, kept alive, a second request answered on the same connection", async () => {
    const c = await rawConnect({ port: cm.port, ca: testPki().ca.cert });
    c.send(request("Connection: keep-alive\r\n"));
    await c.waitFor((t) => t.split("</pcoip-client>").length === 2);
    c.send(request("Connection: keep-alive\r\n"));
    const text = await c.waitFor((t) => t.split("</pcoip-client>").length === 3);
    const heads = text.split(/<\/pcoip-client>\n?/).filter((p) => p.includes("HTTP/1."));
    expect(heads.length).toBe(2);
    for (const h of heads) {
      expect(h).toContain("\r\nConnection: keep-alive");
      expect(h).toMatch(/\r\nContent-Length: \d+/);
      expect(h.toLowerCase()).not.toContain("transfer-encoding");
    }
    c.end();
  });
});

describe("6. the log states how long a broker error took", () => {
  test("a 500 that came back at once says so, not 'about 10 s'", async () => {
    const c = await signedInAndListed();
    const alloc = await c.allocate("3"); // the desktop's agent refuses connections: the broker fails at once
    expect(resultOf(alloc)).toBe("ALLOC_FAILED_TO_ALLOCATE_BROKER");
    const took = broker.requests.findLast((r) => r.op === "allocate-resource")!.ms;
    expect(took).toBeLessThan(1000);
    const line = cm.lines().findLast((l) => l.failure === "http_status")!;
    expect(String(line.cause)).toMatch(/HTTP 500 .* after \d+ ms/);
    expect(String(line.fix)).toContain("too soon for its agent timeout");
    expect(String(line.msg)).not.toContain("a 500 about 10 s after allocate-resource");
    c.close();
  });
});

describe("7. hello while the broker is down", () => {
  test("the documented hello-resp shape (password method, no result); sign-in works once the broker is back", async () => {
    const c = client(cm.port);
    broker.pause();
    try {
      const probe = await c.probe();
      const hello = await c.hello();
      for (const a of [probe, hello]) {
        expect(a.msg?.op === "hello-resp" && a.msg.authenticationMethods).toEqual([
          "AUTHENTICATE_VIA_PASSWORD",
        ]);
        expect(a.msg?.op === "hello-resp" && a.msg.pcm?.productName).toBe("pcoip-cmsg");
        expect(a.body).toContain("<next-authentication>");
        expect(a.body).not.toContain("<result>");
      }
      const stillDown = await c.authenticate("alice", PASSWORD, "corp.example");
      expect(stillDown.msg?.op === "authenticate-resp" && stillDown.msg.result).toEqual({
        resultId: "AUTH_FAILED_BROKER_ERROR",
        resultStr: "Error occurred while communicating with broker",
      });
    } finally {
      broker.resume();
    }
    expect(resultOf(await c.authenticate("alice", PASSWORD, "corp.example"))).toBe(
      "AUTH_SUCCESSFUL_AND_COMPLETE",
    );
    expect(resultOf(await c.getResourceList())).toBe("LIST_SUCCESSFUL");
    expect(resultOf(await c.allocate("0"))).toBe("ALLOC_SUCCESSFUL");
    c.close();
  });
});
