// Claim: one admission cannot hold the relays every other session needs (issue 16 #3): 60 control connections on
// one allocation get exactly sg.maxConnectionsPerSession (4) relays, the rest are refused, counted as
// session_connection_limit and logged in one line; another user's session admitted afterwards still connects
// while the relay budget is small (a budget the 60 would have exhausted without the cap).
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { createRelayLimits, RESERVED_FDS } from "../../src/sg/limits.ts";
import { type ControlClient, connectControl } from "../peers/agent-endpoint.ts";
import { type SgFixture, startSgFixture } from "../peers/sg-fixture.ts";
import { testPki } from "../peers/test-certs.ts";

const SNI = "agent-3.corp.test";
const VICTIM_SNI = "victim-3.corp.test";
const sink = memoryDestination();
const log = createLogger({ destination: sink, level: "info" });
const pki = testPki();
let sg: SgFixture;

beforeAll(async () => {
  sg = await startSgFixture({
    sni: SNI,
    agentNames: [VICTIM_SNI],
    idPrefix: "33333333",
    log,
    // 20 relays' worth of descriptors (2 per TCP relay): the 60 connections would take all of them uncapped.
    tcp: { limits: createRelayLimits({ nofile: RESERVED_FDS + 3 * 20 }) },
  });
});
afterEach(() => sg.checkKeeper(3000));
afterAll(() => sg?.close());

function connect(serverName: string) {
  return connectControl({
    hostname: "127.0.0.1",
    port: sg.tcp.ports[0]!,
    serverName,
    ca: pki.ca.cert,
    timeoutMs: 3000,
  });
}

describe("TCP relays per admission", () => {
  test("60 connections on one allocation: 4 relayed, 56 refused and counted, one log line; another session still connects", async () => {
    const r = sg.admit();
    if (!r.ok) throw new Error(r.reason);
    const held: ControlClient[] = [];
    let refused = 0;
    const before = sg.tcp.counters.refused.session_connection_limit;
    try {
      // Batches of 10 so the hello-phase descriptors of one batch do not count against the next.
      for (let batch = 0; batch < 6; batch++) {
        const results = await Promise.all(Array.from({ length: 10 }, () => connect(SNI)));
        for (const c of results) {
          if (c.ok) held.push(c.client);
          else refused++;
        }
      }
      const counted = sg.tcp.counters.refused.session_connection_limit - before;
      console.log(
        `figure: 60 connections on one admission → ${held.length} relayed, ${refused} refused (${counted} counted session_connection_limit)`,
      );
      expect(held.length).toBe(4);
      expect(sg.tcp.connectionsOf(r.admission.sessionLogId)).toBe(4);
      expect(counted).toBe(56);
      const lines = sink.lines().filter((l) => l.includes('"reason":"session_connection_limit"'));
      expect(lines.length).toBe(1);

      const victim = sg.admit({ sni: VICTIM_SNI });
      if (!victim.ok) throw new Error(victim.reason);
      const v = await connect(VICTIM_SNI);
      expect(v.ok).toBe(true);
      if (v.ok) {
        v.client.write("victim-ping");
        await v.client.waitFor("victim-ping", 3000);
        v.client.close();
      }
    } finally {
      for (const c of held) c.close();
    }
  });
});
