/**
 * The CM's conversations: finds the session a request belongs to, runs one request of a session at a time, asks
 * flow.ts what to do and performs it — opening and ending sessions, the broker calls, the failed-login throttle,
 * the audit lines — and hands allocations to the pipeline (establish.ts). server.ts owns the HTTP around it.
 *
 * Sessions are found by the `JSESSIONID` cookie, else by the `Client-Log-Id` header — the fallback for clients
 * that drop cookies — from the session's own client IP only, and only while no request has come back with the
 * cookie: the header is not a secret (clients write it into their logs, the agent gets it), and behind one NAT
 * many users share an IP, so a conversation continued by its cookie is reachable by the cookie alone. The cookie
 * is replaced at a successful sign-in (the pre-login value names nothing afterwards).
 *
 * The session id (SPEC §2) is made here, a random UUID: it keys the SG admission, its relays and the journal, so
 * two clients sending the same Client-Log-Id never share or replace each other's session. The client's
 * Client-Log-Id is logged (`clientLogId`) for correlation only.
 */
import { type Logger, sessionLogger } from "../observability/log.ts";
import type { SessionJournal } from "../observability/session-journal.ts";
import type { WindowedWarn } from "../observability/windowed-log.ts";
import { RESULTS, result, VENDOR_TEXT } from "../protocol/results.ts";
import type {
  AllocateResource,
  AllocateResourceResp,
  Authenticate,
  BrokerResponse,
  ClientRequest,
} from "../protocol/types.ts";
import type { AuthenticateOutcome, Broker, ConversationContext } from "./brokers/broker.ts";
import type { CmCounters } from "./counters.ts";
import { type EstablishDeps, type EstablishmentSlots, establish, SHUTTING_DOWN } from "./establish.ts";
import {
  type Effect,
  plan,
  type Settled,
  settleAllocate,
  settleAuthenticate,
  settleBye,
  settleHello,
  settleList,
} from "./flow.ts";
import type { PasswordCheckGate } from "./password-checks.ts";
import type { Session, SessionStore } from "./sessions.ts";
import type { Throttle } from "./throttle.ts";

/** What the HTTP side extracted from one broker-protocol request. */
export interface CmRequest {
  readonly clientIp: string;
  /** The client's Client-Log-Id header ("" when absent or too long). */
  readonly clientLogId: string;
  /** The JSESSIONID cookie when it has our shape. */
  readonly cookie: string | undefined;
}

export interface Answer {
  readonly reply: BrokerResponse;
  /** The session the answer belongs to (its cookie goes out when the request did not carry it). */
  readonly session?: Session;
}

export interface CmRandom {
  /** `n` random bytes (the cookie value). */
  bytes(n: number): Uint8Array;
  /** A UUIDv4 (the session id). */
  uuid(): string;
}

export interface ConversationsDeps {
  readonly log: Logger;
  readonly broker: Broker;
  readonly store: SessionStore;
  readonly throttle: Throttle;
  /** cm.maxPasswordChecksPerIp (node state: shared by reload generations). */
  readonly passwordChecks: PasswordCheckGate;
  /** Refusals a flood repeats are logged once per window (observability/windowed-log.ts). */
  readonly warnOnce: WindowedWarn;
  readonly slots: EstablishmentSlots;
  readonly establish: EstablishDeps;
  readonly counters: CmCounters;
  readonly journal: SessionJournal | undefined;
  readonly random: CmRandom;
}

export class Conversations {
  readonly #d: ConversationsDeps;

  constructor(deps: ConversationsDeps) {
    this.#d = deps;
  }

  /** Answers one request: in its session's queue when it has one, at once otherwise. */
  async handle(req: CmRequest, msg: ClientRequest): Promise<Answer> {
    const { store } = this.#d;
    const now = this.#now();
    const byCookie = req.cookie ? store.get(req.cookie, now) : undefined;
    const byLogId =
      !byCookie && req.clientLogId !== "" ? store.byClientLogId(req.clientLogId, now) : undefined;
    const s =
      byCookie ??
      (byLogId && !byLogId.continuedByCookie && byLogId.clientIp === req.clientIp ? byLogId : undefined);
    if (!s) return this.#run(req, msg, undefined);
    store.touch(s, now);
    // Only the cookie moves a session to another address; a fallback-only conversation stays bound to its IP.
    if (byCookie) {
      s.continuedByCookie = true;
      s.clientIp = req.clientIp;
    }
    // One request of a session at a time, in arrival order.
    const done = s.queue.then(() => this.#run(req, msg, s));
    s.queue = done.catch(() => undefined);
    return done;
  }

  /** A fresh session id: made by the server, never taken from the client. */
  #newId(): string {
    return this.#d.random.uuid();
  }

  #now(): number {
    return this.#d.establish.clock.now();
  }

  async #run(req: CmRequest, msg: ClientRequest, found: Session | undefined): Promise<Answer> {
    const { store, broker, counters, journal, log } = this.#d;
    let session = found && store.get(found.cookie, this.#now()) === found ? found : undefined;
    const p = plan(msg, session?.state);
    if (p.kind === "reply") {
      session?.log.info(
        { op: msg.op, state: session.state },
        `${msg.op} out of order: answered with a failure`,
      );
      return { reply: p.reply, ...(session ? { session } : {}) };
    }
    for (const e of p.effects) if (e.kind === "open-session") session = this.#open(req, session);
    if (p.call !== "probe" && !session) return { reply: this.#refusedOpen(req, msg) };
    try {
      switch (p.call) {
        case "probe": {
          counters.probes++;
          const id = this.#newId();
          const ctx = this.#context(req, id, sessionLogger(log, id));
          return { reply: await broker.probe(msg as Extract<ClientRequest, { op: "hello" }>, ctx) };
        }
        case "hello": {
          const s = session!;
          if (msg.op === "hello") s.clientName = msg.clientInfo.hostname;
          const resp = await s.conversation.hello(msg as Extract<ClientRequest, { op: "hello" }>);
          return this.#finish(s, settleHello(resp));
        }
        case "authenticate":
          return this.#finish(session!, await this.#authenticate(session!, msg as Authenticate));
        case "list": {
          const s = session!;
          const resp = await s.conversation.getResourceList(
            msg as Extract<ClientRequest, { op: "get-resource-list" }>,
          );
          if (resp.result.resultId === "LIST_SUCCESSFUL") journal?.reached(s.logId, "list");
          else journal?.failed(s.logId, "list", resp.result.resultId);
          return this.#finish(s, settleList(s.state, resp));
        }
        case "allocate": {
          const s = session!;
          const resp = await this.#d.slots.run(
            (): AllocateResourceResp => ({
              op: "allocate-resource-resp",
              result: result("ALLOC_FAILED_SERVER_BUSY"),
            }),
            () => establish(this.#d.establish, s, msg as AllocateResource),
          );
          counters.allocations[resp.result.resultId] = (counters.allocations[resp.result.resultId] ?? 0) + 1;
          return this.#finish(s, settleAllocate(s.state, resp));
        }
        case "bye": {
          const s = session!;
          const resp = await s.conversation.bye(msg as Extract<ClientRequest, { op: "bye" }>);
          return this.#finish(s, settleBye(resp));
        }
      }
    } catch (e) {
      // A broker or agent module threw: a bug. The client still gets its operation's failure, never a 500.
      (session?.log ?? log).error({ err: e, op: msg.op }, `handling ${msg.op}: unexpected error`);
      if (session && msg.op === "bye") {
        store.remove(session, "bye");
        return { reply: failureFor(msg) };
      }
      return { reply: failureFor(msg), ...(session ? { session } : {}) };
    }
  }

  #context(req: CmRequest, id: string, slog: Logger): ConversationContext {
    return { sessionLogId: id, clientIp: req.clientIp, clientLogId: req.clientLogId, log: slog };
  }

  /** The answer when no pre-session could be opened: every one the IP (or the node) holds is signing in or in. */
  #refusedOpen(req: CmRequest, msg: ClientRequest): BrokerResponse {
    this.#d.counters.preSessionsRefused++;
    this.#d.counters.busy++;
    this.#d.warnOnce(
      "pre_sessions_refused",
      { clientIp: req.clientIp },
      "pre-sessions: a hello was refused: every pre-session of its client IP (cm.maxPreSessionsPerIp) or of the node (cm.maxPreSessions) is signed in or signing in; raise the limit if that many users really start at once",
    );
    return failureFor(msg);
  }

  /**
   * Creates a session, or restarts `existing` in place (same cookie, fresh conversation, sign-in forgotten);
   * undefined when the store refused a new one (nothing it may evict).
   */
  #open(req: CmRequest, existing: Session | undefined): Session | undefined {
    const { store, broker, log, journal } = this.#d;
    const now = this.#now();
    if (existing) {
      existing.logon = undefined;
      existing.user = undefined;
      existing.state = "hello";
      void existing.conversation.close().catch(() => undefined);
      if (req.clientLogId !== existing.clientLogId) store.setClientLogId(existing, req.clientLogId);
      existing.conversation = broker.openConversation(this.#context(req, existing.logId, existing.log));
      existing.log.info(
        { clientIp: req.clientIp, clientLogId: req.clientLogId },
        "pre-session restarted by a new hello",
      );
      return existing;
    }
    const id = this.#newId();
    const slog = sessionLogger(log, id);
    const s: Session = {
      cookie: this.#newCookie(),
      continuedByCookie: false,
      logId: id,
      clientLogId: req.clientLogId,
      state: "hello",
      createdAt: now,
      lastSeen: now,
      clientIp: req.clientIp,
      clientName: "",
      conversation: broker.openConversation(this.#context(req, id, slog)),
      log: slog,
      queue: Promise.resolve(),
    };
    if (!store.add(s, now)) {
      void s.conversation.close().catch(() => undefined);
      return undefined;
    }
    slog.info({ clientIp: req.clientIp, clientLogId: req.clientLogId }, "pre-session opened");
    journal?.reached(s.logId, "hello");
    return s;
  }

  #newCookie(): string {
    return Buffer.from(this.#d.random.bytes(16)).toString("hex");
  }

  #finish(s: Session, settled: Settled): Answer {
    this.#apply(s, settled.effects);
    return this.#d.store.get(s.cookie, this.#now()) === s
      ? { reply: settled.reply, session: s }
      : { reply: settled.reply };
  }

  #apply(s: Session, effects: readonly Effect[]): void {
    const { store, throttle, counters, journal } = this.#d;
    const now = this.#now();
    for (const e of effects) {
      switch (e.kind) {
        case "set-state":
          s.state = e.state;
          break;
        case "signed-in":
          s.user = e.user;
          // A fresh cookie at sign-in: a value seen before it (a shared machine, a proxy log) names nothing now.
          store.rekey(s, this.#newCookie());
          break;
        case "remember-logon":
          s.logon = e.logon;
          break;
        case "forget-logon":
          s.logon = undefined;
          break;
        case "throttle":
          if (e.outcome === "failure") throttle.recordFailure(s.clientIp, e.user, now);
          else throttle.recordSuccess(s.clientIp, e.user, now);
          break;
        case "audit":
          if (e.event === "login_ok") counters.loginsOk++;
          else counters.loginsFailed++;
          if (e.event === "login_ok") journal?.reached(s.logId, "auth");
          else journal?.failed(s.logId, "auth", e.resultId);
          s.log.info(
            { audit: true, event: e.event, user: e.user, clientIp: s.clientIp, resultId: e.resultId },
            e.event === "login_ok" ? `login ok: ${e.user}` : `login failed: ${e.user} (${e.resultId})`,
          );
          break;
        case "end-session":
          store.remove(s, "bye");
          s.log.info({ state: s.state }, "pre-session ended by bye");
          break;
        case "open-session":
          break;
      }
    }
  }

  /** The throttle's verdict first (refuse, or wait), then the password check in an establishment slot. */
  async #authenticate(s: Session, msg: Authenticate): Promise<Settled> {
    const { throttle, counters } = this.#d;
    const method = msg.method || "password";
    // A draining node takes no new sign-ins (pcoip-cmsg drain, SIGTERM): its allocations are refused anyway, so the
    // user is told at once, before a password check or a broker call, and reconnects through the balancer.
    if (this.#d.establish.drain.draining) {
      s.log.info(
        { reason: "draining" },
        "sign-in refused: this node is draining (shutting down or out of rotation)",
      );
      this.#d.journal?.failed(s.logId, "auth", "the node is draining");
      return {
        reply: { op: "authenticate-resp", method, result: result("AUTH_FAILED_BROKER_ERROR", SHUTTING_DOWN) },
        effects: [],
      };
    }
    const verdict = throttle.admit(s.clientIp, msg.username, this.#now());
    if (verdict.kind === "refuse") {
      counters.loginsThrottled++;
      counters.loginsFailed++;
      s.log.info(
        {
          audit: true,
          event: "login_failed",
          user: msg.username,
          clientIp: s.clientIp,
          throttled: verdict.reason,
        },
        `login failed: ${msg.username} (throttled: ${verdict.reason})`,
      );
      return {
        reply: {
          op: "authenticate-resp",
          method,
          result: result("AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD"),
        },
        effects: [],
      };
    }
    const busy = (): AuthenticateOutcome => ({
      resp: {
        op: "authenticate-resp" as const,
        method,
        result: result("AUTH_FAILED_BROKER_ERROR", RESULTS.ALLOC_FAILED_SERVER_BUSY),
      },
    });
    // Mid-authentication from here to the answer: the pre-session store never evicts this session.
    s.authenticating = true;
    try {
      if (verdict.waitMs > 0) {
        s.log.info(
          { waitMs: verdict.waitMs, user: msg.username },
          "failed logins: delaying the password check",
        );
        await this.#d.establish.clock.sleep(verdict.waitMs);
      }
      const slot = await this.#d.passwordChecks.acquire(s.clientIp);
      if (slot.kind === "busy") {
        counters.busy++;
        this.#d.warnOnce(
          `password_checks_${slot.reason}`,
          { clientIp: s.clientIp, reason: slot.reason },
          `busy: a password check of ${s.clientIp} waited for one of its cm.maxPasswordChecksPerIp slots ${slot.reason === "wait_timeout" ? "longer than 10 s" : "behind too many others"}; answered busy`,
        );
        return settleAuthenticate(s.state, msg, busy());
      }
      try {
        const outcome = await this.#d.slots.run<AuthenticateOutcome>(busy, () =>
          s.conversation.authenticate(msg),
        );
        return settleAuthenticate(s.state, msg, outcome);
      } finally {
        slot.release();
      }
    } finally {
      s.authenticating = false;
      verdict.release();
    }
  }
}

/** The operation's failure answer for an unexpected error (VENDOR_TEXT: the broker side failed). */
function failureFor(msg: ClientRequest): BrokerResponse {
  switch (msg.op) {
    case "hello":
      return { op: "hello-resp", brokers: [], authenticationMethods: [], domains: [] };
    case "authenticate":
      return {
        op: "authenticate-resp",
        method: msg.method || "password",
        result: result("AUTH_FAILED_BROKER_ERROR", VENDOR_TEXT.brokerError),
      };
    case "get-resource-list":
      return { op: "get-resource-list-resp", result: result("LIST_FAILED_BROKER_ERROR"), resources: [] };
    case "allocate-resource":
      return { op: "allocate-resource-resp", result: result("ALLOC_FAILED_TO_ALLOCATE_BROKER") };
    case "bye":
      return { op: "bye-resp" };
  }
}
