// Claim: `pcoip-cmsg status` words the drain state from GET /drain: not draining, an operator's drain (with how to
// undo it), a shutdown in progress, and anything unreadable as "unknown" rather than a guess.
import { expect, test } from "bun:test";
import { drainLine } from "../../src/cli/status.ts";

test("status: the draining line", () => {
  expect(drainLine(JSON.stringify({ draining: false, shuttingDown: false, liveSessions: 3 }))).toBe("no");
  expect(drainLine(JSON.stringify({ draining: true, shuttingDown: false, liveSessions: 3 }))).toBe(
    "yes (pcoip-cmsg resume to undo)",
  );
  expect(drainLine(JSON.stringify({ draining: true, shuttingDown: true, liveSessions: 0 }))).toBe(
    "yes (stopping)",
  );
  expect(drainLine("<html>")).toBe("unknown");
});
