// Claim: the CM's state machine is PROTOCOL.md §3 "Recommended": each (state, message) row either asks the
// broker or answers at once with the operation's failure (never an HTTP error), and each broker answer moves
// the state as the table says. Rows, not prose.
import { describe, expect, test } from "bun:test";
import {
  isCredentialFailure,
  OUT_OF_ORDER,
  plan,
  type SessionState,
  settleAllocate,
  settleAuthenticate,
  settleBye,
  settleList,
} from "../../src/cm/flow.ts";
import { result } from "../../src/protocol/results.ts";
import type { ClientRequest } from "../../src/protocol/types.ts";

const clientInfo = {
  productName: "Teradici PCoIP Desktop Client",
  productVersion: "23.01",
  platform: "linux",
  locale: "en_US",
  hostname: "h",
  serialNumber: "",
  deviceName: "",
  pcoipUniqueId: "",
};
const M = {
  probe: {
    op: "hello",
    clientInfo: { ...clientInfo, productName: "QueryBrokerClient" },
    caps: [],
    serverAddress: { ipAddress: "", hostname: "" },
    isProbe: true,
    node: {},
  },
  hello: {
    op: "hello",
    clientInfo,
    caps: [],
    serverAddress: { ipAddress: "", hostname: "" },
    isProbe: false,
    node: {},
  },
  auth: {
    op: "authenticate",
    method: "password",
    username: "alice",
    password: "pw",
    domain: "corp",
    node: {},
  },
  list: { op: "get-resource-list", protocols: [], resourceTypes: [], node: {} },
  alloc: {
    op: "allocate-resource",
    resourceId: "ws-1",
    protocol: "PCOIP",
    clientIpAddress: "",
    clientMacAddress: "",
    node: {},
  },
  bye: { op: "bye", node: {} },
} satisfies Record<string, ClientRequest>;

type Row = [state: SessionState | undefined, msg: keyof typeof M, expected: string];
// expected: "broker:<call>" or "reply:<op>:<result-id>"
const rows: Row[] = [
  [undefined, "probe", "broker:probe"],
  ["listed", "probe", "broker:probe"],
  [undefined, "hello", "broker:hello+open"],
  ["allocated", "hello", "broker:hello+open"],
  [undefined, "auth", "reply:authenticate-resp:AUTH_FAILED_ACCESS_DENIED"],
  ["hello", "auth", "broker:authenticate"],
  ["auth_partial", "auth", "broker:authenticate"],
  ["authed", "auth", "reply:authenticate-resp:AUTH_FAILED_ACCESS_DENIED"],
  ["listed", "auth", "reply:authenticate-resp:AUTH_FAILED_ACCESS_DENIED"],
  [undefined, "list", "reply:get-resource-list-resp:LIST_FAILED_NO_ENTITLEMENT"],
  ["hello", "list", "reply:get-resource-list-resp:LIST_FAILED_NO_ENTITLEMENT"],
  ["auth_partial", "list", "reply:get-resource-list-resp:LIST_FAILED_NO_ENTITLEMENT"],
  ["authed", "list", "broker:list"],
  ["listed", "list", "broker:list"],
  ["allocated", "list", "broker:list"],
  [undefined, "alloc", "reply:allocate-resource-resp:ALLOC_FAILED_RESOURCE_NOT_AVAILABLE"],
  ["hello", "alloc", "reply:allocate-resource-resp:ALLOC_FAILED_RESOURCE_NOT_AVAILABLE"],
  ["authed", "alloc", "reply:allocate-resource-resp:ALLOC_FAILED_RESOURCE_NOT_AVAILABLE"],
  ["listed", "alloc", "broker:allocate"],
  ["allocated", "alloc", "broker:allocate"],
  [undefined, "bye", "reply:bye-resp:"],
  ["hello", "bye", "broker:bye"],
  ["allocated", "bye", "broker:bye"],
];

describe("plan: (state, message) → broker call or immediate answer", () => {
  for (const [state, msg, expected] of rows) {
    test(`${state ?? "none"} × ${msg} → ${expected}`, () => {
      const p = plan(M[msg], state);
      if (p.kind === "broker") {
        const open = p.effects.some((e) => e.kind === "open-session") ? "+open" : "";
        expect(`broker:${p.call}${open}`).toBe(expected);
      } else {
        const id = "result" in p.reply ? p.reply.result.resultId : "";
        expect(`reply:${p.reply.op}:${id}`).toBe(expected);
        expect(p.effects).toEqual([]);
      }
    });
  }

  test("out-of-order answers say what to do", () => {
    const p = plan(M.list, "hello");
    expect(p.kind === "reply" && "result" in p.reply && p.reply.result.resultStr).toBe(OUT_OF_ORDER.list);
  });
});

describe("settle: broker answer → state and effects", () => {
  const authResp = (id: Parameters<typeof result>[0]) => ({
    resp: { op: "authenticate-resp" as const, method: "password", result: result(id) },
  });

  test("complete sign-in: AUTHED, logon kept, throttle success, audit login_ok", () => {
    const s = settleAuthenticate("hello", M.auth, {
      ...authResp("AUTH_SUCCESSFUL_AND_COMPLETE"),
      identity: { user: "Alice", domain: "corp.example" },
    });
    expect(s.effects).toEqual([
      { kind: "set-state", state: "authed" },
      { kind: "remember-logon", logon: { username: "alice", password: "pw", domain: "corp.example" } },
      { kind: "signed-in", user: "Alice", domain: "corp.example" },
      { kind: "throttle", outcome: "success", user: "alice" },
      { kind: "audit", event: "login_ok", user: "Alice", resultId: "AUTH_SUCCESSFUL_AND_COMPLETE" },
    ]);
  });

  test("a final dialog step keeps the password step's logon", () => {
    const dialog = { ...M.auth, method: "dialog", password: "", username: "" };
    const s = settleAuthenticate("auth_partial", dialog, {
      ...authResp("AUTH_SUCCESSFUL_AND_COMPLETE"),
      identity: { user: "alice", domain: "corp" },
    });
    expect(s.effects.some((e) => e.kind === "remember-logon")).toBe(false);
    expect(s.effects[0]).toEqual({ kind: "set-state", state: "authed" });
  });

  test("incomplete: AUTH_PARTIAL with the password kept", () => {
    const s = settleAuthenticate("hello", M.auth, authResp("AUTH_SUCCESSFUL_AND_INCOMPLETE"));
    expect(s.effects).toEqual([
      { kind: "set-state", state: "auth_partial" },
      { kind: "remember-logon", logon: { username: "alice", password: "pw", domain: "corp" } },
    ]);
  });

  const failures: [Parameters<typeof result>[0], boolean][] = [
    ["AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD", true],
    ["AUTH_FAILED_EXPIRED_PASSWORD", true],
    ["AUTH_FAILED_ACCESS_DENIED", true],
    ["AUTH_FAILED_BROKER_ERROR", false],
  ];
  for (const [id, counts] of failures) {
    test(`${id}: state stays, ${counts ? "counts" : "does not count"} for the throttle, audit login_failed`, () => {
      const s = settleAuthenticate("hello", M.auth, authResp(id));
      expect(s.effects[0]).toEqual({ kind: "set-state", state: "hello" });
      expect(s.effects.some((e) => e.kind === "throttle")).toBe(counts);
      expect(isCredentialFailure(id)).toBe(counts);
      expect(s.effects.at(-1)).toEqual({ kind: "audit", event: "login_failed", user: "alice", resultId: id });
    });
  }

  const listRows: [SessionState, Parameters<typeof result>[0], SessionState][] = [
    ["authed", "LIST_SUCCESSFUL", "listed"],
    ["listed", "LIST_SUCCESSFUL", "listed"],
    ["allocated", "LIST_SUCCESSFUL", "allocated"],
    ["authed", "LIST_FAILED_NO_ENTITLEMENT", "authed"],
    ["authed", "LIST_FAILED_BROKER_ERROR", "authed"],
  ];
  for (const [from, id, to] of listRows) {
    test(`list ${id} in ${from} → ${to}`, () => {
      const s = settleList(from, { op: "get-resource-list-resp", result: result(id), resources: [] });
      expect(s.effects).toEqual([{ kind: "set-state", state: to }]);
    });
  }

  const target = {
    ipAddress: "1.2.3.4",
    hostname: "h",
    sni: "h",
    port: 4172,
    sessionId: "1",
    connectTag: "SCS1x",
  };
  test("allocation success → ALLOCATED and the logon dropped", () => {
    const s = settleAllocate("listed", {
      op: "allocate-resource-resp",
      result: result("ALLOC_SUCCESSFUL"),
      target,
    });
    expect(s.effects).toEqual([{ kind: "set-state", state: "allocated" }, { kind: "forget-logon" }]);
  });
  test("allocation failure → state stays, logon kept for a retry", () => {
    const s = settleAllocate("listed", {
      op: "allocate-resource-resp",
      result: result("ALLOC_FAILED_TO_ALLOCATE_AGENT"),
    });
    expect(s.effects).toEqual([{ kind: "set-state", state: "listed" }]);
  });
  test("ALLOC_SUCCESSFUL without a target is not a success", () => {
    const s = settleAllocate("listed", { op: "allocate-resource-resp", result: result("ALLOC_SUCCESSFUL") });
    expect(s.effects).toEqual([{ kind: "set-state", state: "listed" }]);
  });
  test("bye ends the session and drops the logon", () => {
    expect(settleBye({ op: "bye-resp" }).effects).toEqual([
      { kind: "forget-logon" },
      { kind: "end-session" },
    ]);
  });
});
