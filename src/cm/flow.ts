/**
 * The CM's pre-session state machine (PROTOCOL.md §3 "Recommended"), pure: a message and the session's state
 * in, what to answer and what to do out. conversations.ts performs the effects (sessions, broker and agent calls,
 * throttle, audit); nothing here does I/O or reads a clock.
 *
 * ```
 *  (none) ── hello(probe) ──► answer from the broker, no session, no cookie
 *  any    ── hello ─────────► open (or restart) the session ──► HELLO
 *  HELLO / AUTH_PARTIAL ── authenticate ──► COMPLETE → AUTHED, INCOMPLETE → AUTH_PARTIAL, failed → stay
 *  AUTHED / LISTED / ALLOCATED ── get-resource-list ──► LISTED when successful (a refresh is allowed)
 *  LISTED / ALLOCATED ── allocate-resource ──► ALLOCATED when successful (re-allocation allowed), else stay
 *  any    ── bye ───────────► bye-resp, session ended
 *  otherwise ──────────────► the operation's *-resp with a failure result (never HTTP 500)
 * ```
 *
 * A step is two halves around the broker's answer: `plan` decides from the state alone whether to ask the
 * broker or answer at once; the `settle*` functions turn the broker's answer into the reply and the effects.
 */

import { result } from "../protocol/results.ts";
import type {
  AllocateResourceResp,
  Authenticate,
  AuthenticateResp,
  BrokerResponse,
  ClientRequest,
  GetResourceListResp,
} from "../protocol/types.ts";
import type { AuthenticateOutcome } from "./brokers/broker.ts";

export type SessionState = "hello" | "auth_partial" | "authed" | "listed" | "allocated";

/** Which broker call a plan asks for. */
export type BrokerCall = "probe" | "hello" | "authenticate" | "list" | "allocate" | "bye";

export type Effect =
  /** Create the session (new cookie) or restart the existing one: fresh broker conversation, sign-in forgotten. */
  | { readonly kind: "open-session" }
  /** Forget the session (after bye). */
  | { readonly kind: "end-session" }
  | { readonly kind: "set-state"; readonly state: SessionState }
  /** Who signed in (audit, collaboration checks) and the domain the agent's logon gets. */
  | { readonly kind: "signed-in"; readonly user: string; readonly domain: string }
  /** Keep the password step's logon for the agent's launch-session (in memory, until the launch). */
  | {
      readonly kind: "remember-logon";
      readonly logon: { readonly username: string; readonly password: string; readonly domain: string };
    }
  | { readonly kind: "forget-logon" }
  /** A login outcome for the failed-login throttle (credential failures only, never broker trouble). */
  | { readonly kind: "throttle"; readonly outcome: "failure" | "success"; readonly user: string }
  | {
      readonly kind: "audit";
      readonly event: "login_ok" | "login_failed";
      readonly user: string;
      readonly resultId: string;
    };

export type Plan =
  | { readonly kind: "reply"; readonly reply: BrokerResponse; readonly effects: readonly Effect[] }
  | { readonly kind: "broker"; readonly call: BrokerCall; readonly effects: readonly Effect[] };

export interface Settled {
  readonly reply: BrokerResponse;
  readonly effects: readonly Effect[];
}

/** Texts for answers to messages out of order (the result ids are the operation's failure ids). */
export const OUT_OF_ORDER = {
  authenticate: "Sign-in is not expected now. Please start again.",
  list: "Not signed in, or the sign-in has expired. Please sign in again.",
  allocate: "Please sign in and choose a remote workstation first.",
} as const;

/** What to do with `msg` in `state` (undefined = no session). None of the rules depend on time. */
export function plan(msg: ClientRequest, state: SessionState | undefined): Plan {
  switch (msg.op) {
    case "hello":
      if (msg.isProbe) return { kind: "broker", call: "probe", effects: [] };
      return { kind: "broker", call: "hello", effects: [{ kind: "open-session" }] };
    case "authenticate":
      if (state === "hello" || state === "auth_partial") {
        return { kind: "broker", call: "authenticate", effects: [] };
      }
      return reply({
        op: "authenticate-resp",
        method: msg.method || "password",
        result: result("AUTH_FAILED_ACCESS_DENIED", OUT_OF_ORDER.authenticate),
      });
    case "get-resource-list":
      if (state === "authed" || state === "listed" || state === "allocated") {
        return { kind: "broker", call: "list", effects: [] };
      }
      return reply({
        op: "get-resource-list-resp",
        result: result("LIST_FAILED_NO_ENTITLEMENT", OUT_OF_ORDER.list),
        resources: [],
      });
    case "allocate-resource":
      if (state === "listed" || state === "allocated")
        return { kind: "broker", call: "allocate", effects: [] };
      return reply({
        op: "allocate-resource-resp",
        result: result("ALLOC_FAILED_RESOURCE_NOT_AVAILABLE", OUT_OF_ORDER.allocate),
      });
    case "bye":
      if (state === undefined) return reply({ op: "bye-resp" });
      return { kind: "broker", call: "bye", effects: [] };
  }
}

/** After the broker answered a real hello. */
export function settleHello(resp: BrokerResponse): Settled {
  return { reply: resp, effects: [{ kind: "set-state", state: "hello" }] };
}

/** Result ids that mean "these credentials are wrong" (they count for throttling; broker trouble does not). */
export function isCredentialFailure(resultId: string): boolean {
  return resultId.startsWith("AUTH_FAILED_") && resultId !== "AUTH_FAILED_BROKER_ERROR";
}

/** After the broker answered authenticate. */
export function settleAuthenticate(
  state: SessionState,
  req: Authenticate,
  outcome: AuthenticateOutcome,
): Settled {
  const resp: AuthenticateResp = outcome.resp;
  const id = resp.result.resultId;
  if (id === "AUTH_SUCCESSFUL_AND_COMPLETE") {
    const identity = outcome.identity ?? { user: req.username, domain: req.domain };
    const effects: Effect[] = [{ kind: "set-state", state: "authed" }];
    // A final dialog (MFA) step carries no password: the password step's logon, kept earlier, stays.
    if (isPasswordStep(req)) {
      effects.push({
        kind: "remember-logon",
        logon: { username: req.username, password: req.password, domain: identity.domain },
      });
    }
    effects.push(
      { kind: "signed-in", user: identity.user, domain: identity.domain },
      { kind: "throttle", outcome: "success", user: req.username },
      { kind: "audit", event: "login_ok", user: identity.user, resultId: id },
    );
    return { reply: resp, effects };
  }
  if (id === "AUTH_SUCCESSFUL_AND_INCOMPLETE") {
    // The password step passed and another (dialog) step follows: keep the password for the agent's logon.
    const effects: Effect[] = [{ kind: "set-state", state: "auth_partial" }];
    if (isPasswordStep(req)) {
      effects.push({
        kind: "remember-logon",
        logon: { username: req.username, password: req.password, domain: req.domain },
      });
    }
    return { reply: resp, effects };
  }
  const effects: Effect[] = [{ kind: "set-state", state }];
  if (isCredentialFailure(id)) effects.push({ kind: "throttle", outcome: "failure", user: req.username });
  effects.push({ kind: "audit", event: "login_failed", user: req.username, resultId: id });
  return { reply: resp, effects };
}

/** After the broker answered get-resource-list. */
export function settleList(state: SessionState, resp: GetResourceListResp): Settled {
  const ok = resp.result.resultId === "LIST_SUCCESSFUL";
  // A refresh after an allocation keeps ALLOCATED: the client may still allocate again.
  const next: SessionState = ok && state !== "allocated" ? "listed" : state;
  return { reply: resp, effects: [{ kind: "set-state", state: next }] };
}

/** After the allocation pipeline (broker, agent, SG) produced the client's answer. */
export function settleAllocate(state: SessionState, resp: AllocateResourceResp): Settled {
  if (resp.result.resultId === "ALLOC_SUCCESSFUL" && resp.target) {
    return { reply: resp, effects: [{ kind: "set-state", state: "allocated" }, { kind: "forget-logon" }] };
  }
  return { reply: resp, effects: [{ kind: "set-state", state }] };
}

/** After bye: the session ends whatever the broker said. */
export function settleBye(resp: BrokerResponse): Settled {
  return { reply: resp, effects: [{ kind: "forget-logon" }, { kind: "end-session" }] };
}

function isPasswordStep(req: Authenticate): boolean {
  return req.method === "password" || req.method === "";
}

function reply(r: BrokerResponse): Plan {
  return { kind: "reply", reply: r, effects: [] };
}
