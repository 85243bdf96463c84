// Claim: the agent protocol (src/protocol/agent.ts) and the CM's agent call (src/cm/agent-client.ts) never throw
// past their boundary. Agent-shaped documents — mutated, with arbitrary values in every slot — parse to a message
// or a typed error, and what parses has the shape the CM relies on; and a live agent answering with fuzzed raw
// HTTP (any status, framing, body, cut anywhere) always yields a LaunchResult, whose failures are typed
// ALLOC_FAILED_* results, within the call's timeout.
import { afterAll, describe, expect, test } from "bun:test";
import fc from "fast-check";
import { type AgentFailureKind, createAgentClient, type LaunchRequest } from "../../src/cm/agent-client.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import {
  buildLaunchSessionResp,
  parseLaunchSession,
  parseLaunchSessionResp,
} from "../../src/protocol/agent.ts";
import type { ParseResult, ProtocolError } from "../../src/protocol/types.ts";
import { testPki } from "../peers/test-certs.ts";

const KINDS: readonly ProtocolError["kind"][] = [
  "too_large",
  "not_xml",
  "forbidden_markup",
  "wrong_root",
  "no_operation",
  "unknown_operation",
  "invalid_message",
];

const SUCCESS = buildLaunchSessionResp({
  resultId: "SUCCESSFUL",
  failReason: "",
  sessionInfo: {
    ipAddress: "10.20.3.14",
    sni: "ws-3.corp.example",
    port: 4172,
    sessionId: "2305843009213693957",
    sessionTag: "SCS1q2w3e4r5t6y7u8i9o0p+/=",
  },
});
const SEEDS = [
  SUCCESS,
  buildLaunchSessionResp({
    resultId: "FAILED_USER_AUTH",
    failReason: "Session start failed because user authentication failed",
  }),
  buildLaunchSessionResp({ resultId: "FAILED_ANOTHER_SESSION_STARTED", failReason: "another <user> & more" }),
  `<?xml version="1.0"?><pcoip-agent version="1.0"><launch-session-resp><result-id>successful</result-id><session-info><ip-address>::1</ip-address><sni></sni><port/><session-id>1</session-id><session-tag>SCS1</session-tag></session-info></launch-session-resp></pcoip-agent>`,
  `<pcoip-agent version='1.0'><launch-session><session-type>UNSPECIFIED</session-type><logon method='windows-password'><username>alice</username><password> p&amp;w </password><domain>corp</domain></logon></launch-session></pcoip-agent>`,
];

const FRAGMENTS = [
  "<",
  ">",
  "</",
  "/>",
  "&",
  "&amp;",
  "&#0;",
  "&#x110000;",
  "&e;",
  "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>",
  "<!ENTITY a 'aaaa'>",
  "<![CDATA[",
  "]]>",
  "<!--",
  "-->",
  "<port>",
  "</port>",
  "65536",
  "-1",
  "4172.5",
  "0x10",
  "<session-info>",
  "</session-info>",
  "<result-id>",
  "</result-id>",
  "pcoip-broker",
  "pcoip-agent",
  "launch-session-resp",
  "__proto__",
  "\u0000",
  "\uFEFF",
  "\uD800",
];

const mutated = fc
  .tuple(
    fc.constantFrom(...SEEDS),
    fc.array(
      fc.record({
        at: fc.nat(),
        cut: fc.nat({ max: 20 }),
        insert: fc.oneof(fc.constantFrom(...FRAGMENTS, ""), fc.string({ unit: "binary", maxLength: 10 })),
      }),
      { minLength: 1, maxLength: 5 },
    ),
  )
  .map(([seed, es]) =>
    es.reduce((doc, { at, cut, insert }) => {
      const i = at % (doc.length + 1);
      return doc.slice(0, i) + insert + doc.slice(i + cut);
    }, seed),
  );

/** The success seed with one text slot replaced by an arbitrary (escaped) value. */
const slotEdited = fc.tuple(fc.nat(), fc.string({ unit: "binary", maxLength: 40 })).map(([k, value]) => {
  const slots = [...SUCCESS.matchAll(/>([^<>]+)</g)];
  const slot = slots[k % slots.length]!;
  const start = slot.index + 1;
  const escaped = value.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  return SUCCESS.slice(0, start) + escaped + SUCCESS.slice(start + slot[1]!.length);
});

function typed(r: ParseResult<unknown>): void {
  if (!r.ok) {
    expect(KINDS).toContain(r.error.kind);
    expect(typeof r.error.detail).toBe("string");
  }
}

describe("agent documents", () => {
  test("mutated and slot-edited agent answers: a message or a typed error, the message well-shaped", () => {
    let parsed = 0;
    fc.assert(
      fc.property(fc.oneof(mutated, slotEdited, fc.string({ unit: "binary", maxLength: 200 })), (doc) => {
        const r = parseLaunchSessionResp(doc);
        typed(r);
        typed(parseLaunchSession(doc));
        if (r.ok) {
          parsed++;
          expect(r.msg.resultId).not.toBe("");
          expect(r.msg.resultId).toBe(r.msg.resultId.toUpperCase());
          expect(typeof r.msg.failReason).toBe("string");
          const si = r.msg.sessionInfo;
          if (si) {
            expect(Number.isInteger(si.port)).toBe(true);
            expect(si.port).toBeGreaterThanOrEqual(0);
            expect(si.port).toBeLessThanOrEqual(65535);
            for (const v of [si.ipAddress, si.sni, si.sessionId, si.sessionTag])
              expect(typeof v).toBe("string");
          }
        }
      }),
      { numRuns: 2000 },
    );
    expect(parsed).toBeGreaterThan(200); // the generators reach the success path, not only refusals
  });

  test("entity tricks in an agent answer are refused, not expanded", () => {
    const xxe = `<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><pcoip-agent version="1.0"><launch-session-resp><result-id>&e;</result-id></launch-session-resp></pcoip-agent>`;
    const laughs = `<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><pcoip-agent version="1.0"><launch-session-resp><result-id>&c;&c;&c;</result-id></launch-session-resp></pcoip-agent>`;
    for (const doc of [xxe, laughs]) {
      const r = parseLaunchSessionResp(doc);
      expect(r.ok ? "ok" : r.error.kind).toBe("forbidden_markup");
    }
  });
});

// ---- a live agent answering fuzzed raw HTTP -------------------------------------------------------------------

interface RawAnswer {
  bytes: Uint8Array;
  /** Close after writing (else keep the connection open and silent). */
  close: boolean;
}

let next: RawAnswer = { bytes: new Uint8Array(0), close: true };
const pki = testPki();
const leaf = pki.leaf(["localhost", "127.0.0.1"]);
const raw = Bun.listen<{ text: string; answered: boolean }>({
  hostname: "127.0.0.1",
  port: 0,
  tls: { cert: leaf.cert, key: leaf.key },
  socket: {
    open(s) {
      s.data = { text: "", answered: false };
    },
    data(s, d) {
      // Answer once the whole request arrived (an early answer would race the client's own writes).
      s.data.text += Buffer.from(d).toString("latin1");
      const headEnd = s.data.text.indexOf("\r\n\r\n");
      const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(s.data.text)?.[1] ?? 0);
      if (s.data.answered || headEnd < 0 || s.data.text.length < headEnd + 4 + length) return;
      s.data.answered = true;
      const a = next;
      s.write(a.bytes);
      if (a.close) s.end();
    },
  },
});
afterAll(() => raw.stop(true));

const FAILURE_KINDS: readonly AgentFailureKind[] = [
  "dns",
  "refused",
  "unreachable",
  "tls",
  "certificate",
  "timeout",
  "http_status",
  "bad_answer",
  "user_auth",
  "another_session",
  "no_license",
  "agent_refused",
];

const enc = (s: string) => new Uint8Array(Buffer.from(s, "utf8"));

const body = fc.oneof(fc.constantFrom(...SEEDS), mutated, slotEdited, fc.string({ maxLength: 300 }));
const framing = fc.constantFrom("length", "chunked", "close", "wrong-length", "bad-chunk", "both");
const rawAnswer = fc
  .record({
    status: fc.constantFrom(200, 200, 200, 204, 301, 400, 404, 500, 503, 999),
    framing,
    body,
    extraHeaders: fc.array(
      fc.constantFrom(
        "X-A: b",
        "Content-Type: text/html",
        "Connection: close",
        "Transfer-Encoding: gzip",
        ": no name",
        "Bad Header",
        `X-Long: ${"v".repeat(3000)}`,
      ),
      { maxLength: 3 },
    ),
    lineEnd: fc.constantFrom("\r\n", "\n"),
    cut: fc.option(fc.nat(), { nil: undefined }),
    close: fc.boolean(),
    garbagePrefix: fc.option(fc.constantFrom("HTTP/1.1", "SSH-2.0-OpenSSH\r\n", "\u0000\u0001", "<html>"), {
      nil: undefined,
    }),
  })
  .map((a): RawAnswer => {
    const b = enc(a.body);
    const eol = a.lineEnd;
    const headers = [`HTTP/1.1 ${a.status} X`, ...a.extraHeaders];
    let payload: string;
    if (a.framing === "length") headers.push(`Content-Length: ${b.length}`);
    if (a.framing === "wrong-length") headers.push(`Content-Length: ${b.length + 50}`);
    if (a.framing === "chunked" || a.framing === "bad-chunk" || a.framing === "both")
      headers.push("Transfer-Encoding: chunked");
    if (a.framing === "both") headers.push(`Content-Length: ${b.length}`);
    const text = Buffer.from(b).toString("latin1");
    if (a.framing === "chunked" || a.framing === "both")
      payload = `${b.length.toString(16)}\r\n${text}\r\n0\r\n\r\n`;
    else if (a.framing === "bad-chunk") payload = `zz\r\n${text}\r\n0\r\n\r\n`;
    else payload = text;
    let all = Buffer.from(`${a.garbagePrefix ?? ""}${headers.join(eol)}${eol}${eol}${payload}`, "latin1");
    if (a.cut !== undefined) all = all.subarray(0, a.cut % (all.length + 1));
    // Without a length, only the close ends the body: keep such answers closing so most calls end before the timeout.
    return { bytes: new Uint8Array(all), close: a.close || a.framing === "close" || a.cut !== undefined };
  });

/** Well-framed answers of every kind an agent gives (success, refusals, bad documents), for the outcomes past HTTP. */
const framedAnswer = fc
  .tuple(fc.oneof(fc.constantFrom(...SEEDS.slice(0, 4)), mutated), fc.boolean())
  .map(([b, chunked]): RawAnswer => {
    const bytes = Buffer.from(b, "utf8");
    const head = chunked
      ? "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      : `HTTP/1.1 200 OK\r\nContent-Length: ${bytes.length}\r\n\r\n`;
    const tail = chunked ? "\r\n0\r\n\r\n" : "";
    const size = chunked ? `${bytes.length.toString(16)}\r\n` : "";
    return {
      bytes: new Uint8Array(
        Buffer.concat([Buffer.from(head + size, "latin1"), bytes, Buffer.from(tail, "latin1")]),
      ),
      close: true,
    };
  });

const request: LaunchRequest = {
  agent: { host: "127.0.0.1", port: raw.port, hostname: "localhost" },
  logon: { username: "alice", password: "fuzz-s3cret", domain: "corp" },
  clientIp: "198.51.100.7",
  clientName: "laptop",
  clientMac: "",
  licensePath: "",
  sessionLogId: "5b1e0c40-1f2a-41ee-9c1d-00000000f022",
};

describe("the CM's agent call against fuzzed raw answers", () => {
  test("always a LaunchResult within the timeout; failures typed as ALLOC_FAILED_*; the password never logged", async () => {
    const sink = memoryDestination();
    const log = createLogger({ level: "debug", destination: sink });
    const client = createAgentClient({ timeoutMs: 400 });
    const seen = new Set<string>();
    await fc.assert(
      fc.asyncProperty(fc.oneof(rawAnswer, framedAnswer), async (a) => {
        next = a;
        const t0 = Date.now();
        const r = await client.launch(request, log);
        expect(Date.now() - t0).toBeLessThan(3000);
        if (r.ok) {
          expect(Number.isInteger(r.sessionInfo.port)).toBe(true);
          seen.add("ok");
        } else {
          expect(FAILURE_KINDS).toContain(r.failure.kind);
          expect(r.failure.result.resultId).toStartWith("ALLOC_FAILED_");
          expect(r.failure.result.resultStr.length).toBeGreaterThan(0);
          expect(r.failure.cause.length).toBeGreaterThan(0);
          seen.add(r.failure.kind);
        }
      }),
      { numRuns: 120 },
    );
    // The fuzz reached several outcomes, not one failure mode over and over.
    expect(seen.size).toBeGreaterThanOrEqual(4);
    expect(sink.text()).not.toContain("fuzz-s3cret");
  }, 60_000);
});
