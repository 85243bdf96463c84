// Claim: every result id the CM can send a client for an upstream broker's answer is in docs/PROTOCOL.md's
// "Upstream result ids" table, and ids outside the client's vocabulary are mapped as that table says (agent codes
// to ALLOC_FAILED_*, unknown ids to the answer's generic failure) with the broker's original id logged.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  CLIENT_VOCABULARY,
  inClientVocabulary,
  mapUpstreamResultId,
} from "../../src/cm/brokers/upstream-results.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import type { GetResourceListResp } from "../../src/protocol/types.ts";

const protocol = readFileSync(join(import.meta.dir, "../../docs/PROTOCOL.md"), "utf8");
const table = protocol.slice(protocol.indexOf("**Upstream result ids"), protocol.indexOf("### 2.6"));
/** Rows of the table: answer | upstream id(s) | client gets. */
const rows = table
  .split("\n")
  .filter((l) => /^\| (hello|authenticate|get-resource-list|allocate-resource) \|/.test(l))
  .map((l) => l.split("|").map((c) => c.trim()));

describe("the PROTOCOL.md table and the code agree", () => {
  test("every id a client may get unchanged is listed as unchanged for its answer", () => {
    for (const [answer, ids] of Object.entries(CLIENT_VOCABULARY)) {
      const unchanged = rows
        .filter((r) => r[1] === answer && r[3] === "unchanged")
        .map((r) => r[2]!)
        .join(" ");
      for (const id of ids) expect(`${answer}: ${unchanged}`).toContain(`\`${id}\``);
    }
  });

  test.each([
    ["authenticate", "AUTH_SUCCESSFUL", "AUTH_SUCCESSFUL_AND_COMPLETE"],
    ["authenticate", "SOMETHING_ELSE", "AUTH_FAILED_ACCESS_DENIED"],
    ["get-resource-list", "LIST_OK", "LIST_FAILED_BROKER_ERROR"],
    ["allocate-resource", "FAILED_USER_AUTH", "ALLOC_FAILED_TO_ALLOCATE_AGENT"],
    ["allocate-resource", "FAILED_ANOTHER_SESSION_STARTED", "ALLOC_FAILED_RESOURCE_IN_USE"],
    ["allocate-resource", "FAILED_ANOTHER_SESION_STARTED", "ALLOC_FAILED_RESOURCE_IN_USE"],
    ["allocate-resource", "FAILED_NO_LICENSE_AVAILABLE", "ALLOC_FAILED_NO_LICENSE"],
    ["allocate-resource", "FAILED_SOMETHING", "ALLOC_FAILED_TO_ALLOCATE_AGENT"],
    ["allocate-resource", "ALLOC_FAILED_NEW_REASON", "ALLOC_FAILED_TO_ALLOCATE_BROKER"],
  ] as const)("%s %s → %s, a mapped id the table lists for that answer", (answer, id, expected) => {
    const mapped = mapUpstreamResultId(answer, id);
    expect(mapped.resultId).toBe(expected);
    const listed = rows
      .filter((r) => r[1] === answer)
      .map((r) => r[3]!)
      .join(" ");
    expect(listed).toContain(`\`${expected}\``);
  });
});

test("a mapped answer keeps nothing the client could misread; the log names the broker's own id", () => {
  const sink = memoryDestination();
  const log = createLogger({ level: "debug", destination: sink });
  const resp = inClientVocabulary(
    {
      op: "allocate-resource-resp",
      result: {
        resultId: "FAILED_USER_AUTH",
        resultStr: "Failed to allocate a session on the given resource",
      },
    },
    log,
    "https://broker.test/pcoip-broker/xml",
  );
  expect(resp.result.resultId).toBe("ALLOC_FAILED_TO_ALLOCATE_AGENT");
  const line = JSON.parse(sink.lines().at(-1)!);
  expect(line.upstreamResultId).toBe("FAILED_USER_AUTH");
  expect(line.upstreamResultStr).toBe("Failed to allocate a session on the given resource");
  const list = inClientVocabulary(
    {
      op: "get-resource-list-resp",
      result: { resultId: "WHATEVER", resultStr: "x" },
      resources: [
        {
          resourceId: "0",
          resourceName: "A",
          resourceType: "DESKTOP",
          sessionType: "VDI",
          resourceState: "UNKNOWN",
          protocols: [],
        },
      ],
    } satisfies GetResourceListResp as GetResourceListResp,
    log,
    "https://broker.test/pcoip-broker/xml",
  );
  expect(list.result.resultId).toBe("LIST_FAILED_BROKER_ERROR");
  expect(list.resources).toEqual([]);
});
