/**
 * Session verdicts (observability/session-journal.ts): one line per session naming the last stage reached and
 * the likely cause; the session-end audit line with bytes for sessions the SG carried; stalls reported once.
 */
import { expect, test } from "bun:test";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { createSessionJournal } from "../../src/observability/session-journal.ts";

const ID = "6f1c2d3e-4a5b-4c6d-8e7f-001122334455";

function setup(stallMs = 30_000) {
  const sink = memoryDestination();
  const log = createLogger({ level: "info", destination: sink });
  let t = 1_000_000;
  const journal = createSessionJournal({ log, stallMs, now: () => t, settleMs: 1 });
  const lines = () => sink.lines().map((l) => JSON.parse(l) as Record<string, unknown>);
  return { journal, lines, advance: (ms: number) => (t += ms) };
}

test("a session that ends after its desktop list names the list stage and the likely cause", () => {
  const { journal, lines } = setup();
  journal.reached(ID, "hello");
  journal.reached(ID, "auth");
  journal.reached(ID, "list");
  journal.cmEnded(ID, "bye");
  const v = lines().filter((l) => l.verdict === true);
  expect(v.length).toBe(1);
  expect(v[0]).toMatchObject({ sessionId: ID, stage: "list", outcome: "ended" });
  expect(String(v[0]!.cause)).toContain("did not pick one");
  expect(journal.size).toBe(0);
  journal.stop();
});

test("a failed sign-in is the cause; a later success clears it", () => {
  const { journal, lines } = setup();
  journal.reached(ID, "hello");
  journal.failed(ID, "auth", "AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD");
  journal.cmEnded(ID, "expired");
  expect(lines().find((l) => l.verdict)?.cause).toBe("auth failed: AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD");
  const other = "6f1c2d3e-4a5b-4c6d-8e7f-001122334466";
  journal.reached(other, "hello");
  journal.failed(other, "auth", "AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD");
  journal.reached(other, "auth");
  journal.cmEnded(other, "bye");
  expect(lines().filter((l) => l.verdict)[1]).toMatchObject({ stage: "auth" });
  journal.stop();
});

test("an SG session that got media both ways is done; its end line sums TCP and UDP bytes", async () => {
  const { journal, lines } = setup();
  for (const s of ["hello", "auth", "list", "allocate", "agent-launch"] as const) journal.reached(ID, s);
  journal.viaGateway(ID);
  journal.cmEnded(ID, "bye"); // the CM's pre-session ends; the SG still carries the session
  expect(lines().some((l) => l.verdict)).toBe(false);
  journal.reached(ID, "sg-tcp");
  journal.reached(ID, "udp-from-client");
  journal.reached(ID, "udp-from-agent");
  journal.traffic(ID, { bytesFromClient: 1000, bytesToClient: 2000 });
  journal.traffic(ID, { bytesFromClient: 12, bytesToClient: 24, packetsFromClient: 1, packetsToClient: 2 });
  journal.sgEnded(ID, "closed");
  await Bun.sleep(20);
  const v = lines().find((l) => l.verdict);
  expect(v).toMatchObject({ stage: "done", cause: "media flowed both ways" });
  const end = lines().find((l) => l.event === "session_end");
  expect(end).toMatchObject({
    audit: true,
    sessionId: ID,
    bytesFromClient: 1012,
    bytesToClient: 2024,
    packetsToClient: 2,
    reason: "sg: closed",
  });
  journal.stop();
});

test("an allocated SG session without a control connection stalls once with the TCP 4172 cause", async () => {
  const { journal, lines, advance } = setup(60);
  for (const s of ["hello", "auth", "list", "allocate", "agent-launch"] as const) journal.reached(ID, s);
  journal.viaGateway(ID);
  advance(100);
  await Bun.sleep(120);
  advance(100);
  await Bun.sleep(120);
  const v = lines().filter((l) => l.verdict);
  expect(v.length).toBe(1);
  expect(v[0]).toMatchObject({ outcome: "stalled", stage: "agent-launch" });
  expect(String(v[0]!.cause)).toContain("TCP 4172 blocked");
  journal.sgEnded(ID, "expired");
  await Bun.sleep(20);
  expect(lines().filter((l) => l.verdict).length).toBe(1);
  expect(lines().some((l) => l.event === "session_end")).toBe(true);
  journal.stop();
});

test("an SG milestone for a session the journal does not hold opens no record (nothing would end it)", () => {
  const { journal } = setup();
  journal.reached(ID, "sg-tcp");
  journal.reached(ID, "udp-from-agent");
  journal.traffic(ID, { bytesFromClient: 1, bytesToClient: 1 });
  expect(journal.size).toBe(0);
  journal.reached(ID, "hello");
  expect(journal.size).toBe(1);
  journal.stop();
});
