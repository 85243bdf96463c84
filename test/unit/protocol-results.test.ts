// Claim: every result id has its text in one table, the four vendor sentences are verbatim and appear in no
// other source file, and protocol errors map to the error-resp ids.
import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  isResultId,
  RESULTS,
  result,
  resultForProtocolError,
  VENDOR_TEXT,
} from "../../src/protocol/results.ts";

test("the four vendor sentences, verbatim", () => {
  expect(Object.values(VENDOR_TEXT)).toEqual([
    "Error occurred while communicating with broker",
    "Timeout occurred while communicating with broker",
    "Error occurred while communicating with agent",
    "Timeout occurred while communicating with agent",
  ]);
});

/** Source without its comments: quoting a sentence in a comment is fine, sending a copy of it is not. */
function codeOf(source: string): string {
  return source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/(^|[^:])\/\/.*$/gm, "$1");
}

test("the vendor sentences live in results.ts and nowhere else in the code under src/", () => {
  const src = join(import.meta.dir, "../../src");
  const files = readdirSync(src, { recursive: true, encoding: "utf8" }).filter((f) => f.endsWith(".ts"));
  expect(files.length).toBeGreaterThan(3);
  expect(
    Object.values(VENDOR_TEXT).every((s) =>
      codeOf(readFileSync(join(src, "protocol/results.ts"), "utf8")).includes(s),
    ),
  ).toBe(true);
  const offenders = files.filter(
    (f) =>
      !f.endsWith(join("protocol", "results.ts")) &&
      Object.values(VENDOR_TEXT).some((s) => codeOf(readFileSync(join(src, f), "utf8")).includes(s)),
  );
  expect(offenders).toEqual([]);
});

test("ids are upper snake case with a text; the ids PROTOCOL.md §2 names are all present", () => {
  for (const [id, text] of Object.entries(RESULTS)) {
    expect(id).toMatch(/^[A-Z]+(_[A-Z0-9]+)+$/);
    expect(text.length).toBeGreaterThan(10);
  }
  for (const id of [
    "AUTH_SUCCESSFUL_AND_COMPLETE",
    "AUTH_SUCCESSFUL_AND_INCOMPLETE",
    "AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD",
    "AUTH_FAILED_ACCESS_DENIED",
    "AUTH_FAILED_USER_HAS_NO_RESOURCE",
    "AUTH_FAILED_DIALOG_INVALID_USER_ENTRY",
    "AUTH_FAILED_EXPIRED_PASSWORD",
    "LIST_SUCCESSFUL",
    "LIST_FAILED_NO_ENTITLEMENT",
    "ALLOC_SUCCESSFUL",
    "ALLOC_FAILED_TO_ALLOCATE_BROKER",
    "ALLOC_FAILED_TO_ALLOCATE_BROKER_PORT_UNREACHABLE",
    "ALLOC_FAILED_TO_ALLOCATE_AGENT",
    "ALLOC_FAILED_NO_LICENSE",
    "ALLOC_PENDING_TRY_AGAIN",
  ]) {
    expect(isResultId(id)).toBe(true);
  }
  expect(isResultId("toString")).toBe(false);
  expect(isResultId("FAILED_USER_AUTH")).toBe(false);
});

test("texts seen in real logs are kept verbatim", () => {
  expect(RESULTS.LIST_SUCCESSFUL).toBe("Successfully retrieved the list of resources");
  expect(RESULTS.LIST_FAILED_NO_ENTITLEMENT).toBe("User has not been assigned any remote workstations");
  expect(RESULTS.ALLOC_SUCCESSFUL).toBe("Successfully allocated remote workstation");
  expect(RESULTS.ALLOC_FAILED_TO_ALLOCATE_BROKER_PORT_UNREACHABLE).toBe(
    "Broker failed to reach resource on port 60443.",
  );
  expect(RESULTS.AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD).toBe(
    "User authentication failed. Please re-enter username, password, and/or domain.",
  );
});

test("result() gives the standard text or the one passed", () => {
  expect(result("ALLOC_SUCCESSFUL")).toEqual({
    resultId: "ALLOC_SUCCESSFUL",
    resultStr: "Successfully allocated remote workstation",
  });
  expect(result("ALLOC_FAILED_TO_ALLOCATE_AGENT", VENDOR_TEXT.agentTimeout)).toEqual({
    resultId: "ALLOC_FAILED_TO_ALLOCATE_AGENT",
    resultStr: "Timeout occurred while communicating with agent",
  });
});

test("protocol errors map to error-resp results", () => {
  expect(resultForProtocolError({ kind: "too_large", detail: "" }).resultId).toBe(
    "PROTOCOL_ERROR_REQUEST_TOO_LARGE",
  );
  expect(resultForProtocolError({ kind: "unknown_operation", detail: "", operation: "x" }).resultId).toBe(
    "PROTOCOL_ERROR_UNKNOWN_OPERATION",
  );
  for (const kind of [
    "not_xml",
    "forbidden_markup",
    "wrong_root",
    "no_operation",
    "invalid_message",
  ] as const) {
    expect(resultForProtocolError({ kind, detail: "" }).resultId).toBe("PROTOCOL_ERROR_MALFORMED_REQUEST");
  }
});
