/**
 * One client conversation relayed to the upstream broker: its own cookie jar, its own kept-alive connection,
 * and a record of where the broker's side of the conversation stands, because a real broker is strict
 * (PROTOCOL.md §10): hello → authenticate (repeatable on failure) → get-resource-list → allocate-resource →
 * bye, and after a successful allocation only bye is accepted.
 *
 * A failed request says one of three things about the broker's side (PROTOCOL.md §10):
 *   - "this request failed": an HTTP error from an exception in the broker (an empty password, a slow agent)
 *     leaves its conversation where it was — the CM keeps its record and the next request goes straight on;
 *   - "the broker reset our session": its protocol-order error (500 "Unexpected message"), or an answer that
 *     dropped or replaced our cookie — the broker is at "waiting for hello" and did not act on the request, so
 *     the CM rebuilds the conversation and sends the request once more: the client never pays for the broker's
 *     bookkeeping with a failure, nor with a second one after a first;
 *   - unknown (a timeout, a connection closed mid-answer): the cookie is dropped and a fresh broker session is
 *     started (hello and the sign-in replayed) before the next request.
 *
 * The CM's own state machine is more tolerant (a client may list again, or allocate another desktop, after an
 * allocation). When the client asks for something the broker's conversation is past, this module ends it
 * (bye) and rebuilds it — hello and the password steps replayed as the client sent them — before relaying the
 * request; the log says so. A conversation whose sign-in had a dialog step (MFA) cannot be rebuilt without the
 * user: the client gets a failure and signs in again.
 *
 * To rebuild, the conversation keeps the client's hello and password steps (the password with them) until bye or
 * close — the same lifetime as the CM's own pre-session, which keeps the logon for the agent launch.
 *
 * Requests are relayed as the client sent them: every element and attribute of every authenticate method and
 * step, unknown ones included. Answers come back as parsed (node kept), so their result ids, texts and unknown
 * elements reach the client intact.
 */
import type { Logger } from "../../observability/log.ts";
import type {
  AllocateResource,
  AllocateResourceResp,
  Authenticate,
  AuthenticateResp,
  BrokerResponse,
  Bye,
  ByeResp,
  ClientRequest,
  GetResourceList,
  GetResourceListResp,
  Hello,
  HelloResp,
} from "../../protocol/types.ts";
import {
  type ClientFacts,
  type ConnectionSlot,
  type CookieJar,
  type ExchangeSettings,
  exchange,
} from "./upstream-exchange.ts";
import { type BrokerFailure, describeBrokerFailure } from "./upstream-failures.ts";

export interface ConversationSettings extends ExchangeSettings {
  readonly timeoutMs: number;
  readonly allocateTimeoutMs: number;
}

export type Relayed<T> =
  | { readonly ok: true; readonly resp: T }
  | { readonly ok: false; readonly failure: BrokerFailure };

/** Where the broker's side stands. "unknown": a request failed midway, the broker may be anywhere. */
type Phase = "none" | "hello" | "authed" | "listed" | "allocated" | "unknown";

export interface UpstreamConversation {
  hello(req: Hello, facts: ClientFacts): Promise<Relayed<HelloResp>>;
  authenticate(req: Authenticate, facts: ClientFacts): Promise<Relayed<AuthenticateResp>>;
  getResourceList(req: GetResourceList, facts: ClientFacts): Promise<Relayed<GetResourceListResp>>;
  allocateResource(req: AllocateResource, facts: ClientFacts): Promise<Relayed<AllocateResourceResp>>;
  bye(req: Bye, facts: ClientFacts): Promise<Relayed<ByeResp>>;
  /** Ends the conversation: a best-effort bye when the broker holds state, then the connection is closed. */
  close(facts?: ClientFacts): Promise<void>;
  /** For tests and diagnostics. */
  readonly phase: Phase;
  /** Whether the conversation currently holds a broker cookie (never its value). */
  readonly hasCookie: boolean;
  /** Whether `resourceId` was in the last resource list the client got in this conversation. */
  listed(resourceId: string): boolean;
}

/** Relays the client's probe hello (QueryBrokerClient) on its own connection, keeping no cookie and no state. */
export async function relayProbe(
  settings: ConversationSettings,
  req: Hello,
  facts: ClientFacts,
  log: Logger,
): Promise<Relayed<HelloResp>> {
  const slot: ConnectionSlot = { conn: undefined };
  try {
    const r = await exchange(settings, req, facts, undefined, slot, settings.timeoutMs, log);
    if (!r.ok) return logged(r, log, settings);
    return { ok: true, resp: r.resp as HelloResp };
  } finally {
    slot.conn?.close();
  }
}

export function createUpstreamConversation(
  settings: ConversationSettings,
  log: Logger,
): UpstreamConversation {
  return new RelayedConversation(settings, log);
}

/** The state of one relayed conversation and the steps that keep the broker's side in line with it. */
class RelayedConversation implements UpstreamConversation {
  private readonly jar: CookieJar = new Map();
  private readonly slot: ConnectionSlot = { conn: undefined };
  private state: Phase = "none";
  private savedHello: Hello | undefined;
  /** The authenticate steps that succeeded since the last hello, in order. */
  private steps: Authenticate[] = [];
  private authComplete = false;
  /** resource-id → resource-name of the last list the client saw (to check a rebuilt list still matches). */
  private names = new Map<string, string>();
  private lastListReq: GetResourceList | undefined;
  // One request at a time: a client that sends two at once must not interleave them on one broker conversation.
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly settings: ConversationSettings,
    private readonly log: Logger,
  ) {}

  get phase(): Phase {
    return this.state;
  }

  get hasCookie(): boolean {
    return this.jar.size > 0;
  }

  listed(resourceId: string): boolean {
    return this.names.has(resourceId);
  }

  private get url(): string {
    return this.settings.connect.endpoint.url;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async send<T extends BrokerResponse>(req: ClientRequest, facts: ClientFacts): Promise<Relayed<T>> {
    const { settings } = this;
    const timeout = req.op === "allocate-resource" ? settings.allocateTimeoutMs : settings.timeoutMs;
    const r = await exchange(settings, req, facts, this.jar, this.slot, timeout, this.log);
    if (!r.ok) {
      // An HTTP error answer says whether the broker reset its side or kept it (module header); the
      // other failures leave it unknown.
      if (r.failure.kind === "http_status") {
        if (r.failure.brokerSession === "reset") this.state = "none";
      } else this.state = "unknown";
      return logged(r, this.log, settings);
    }
    return { ok: true, resp: r.resp as T };
  }

  /**
   * `send`, and when the broker answers that it reset its side without acting on the request, the conversation
   * rebuilt up to `before` (the phase the request needs) and the request sent once more.
   */
  private async sendRecovering<T extends BrokerResponse>(
    req: ClientRequest,
    facts: ClientFacts,
    before: "none" | "hello" | "authed" | "listed",
  ): Promise<Relayed<T>> {
    const r = await this.send<T>(req, facts);
    if (r.ok || r.failure.brokerSession !== "reset") return r;
    const why = `the broker reset its side of the conversation when it got ${req.op}`;
    if (before !== "none") {
      const picked = req.op === "allocate-resource" ? req.resourceId : undefined;
      const rebuilt = await this.rebuildFor(before, facts, why, picked);
      if (!rebuilt.ok) return rebuilt;
    }
    this.log.info({ broker: this.url, op: req.op }, `${why}; sending ${req.op} again`);
    return this.send<T>(req, facts);
  }

  private dropBrokerSession(): void {
    this.jar.clear();
    this.slot.conn?.close();
    this.slot.conn = undefined;
    this.state = "none";
  }

  /** Ends the broker's side, so that the next step starts from "waiting for hello". */
  private async endBrokerSide(facts: ClientFacts, why: string): Promise<void> {
    if (this.state === "none") return;
    if (this.state === "unknown") {
      // The last request failed midway (timeout, closed): a bye could cost another timeout. Start a new broker
      // session instead (no cookie); the old one expires at the broker.
      this.log.info({ broker: this.url, why }, "starting a new broker session before going on");
      this.dropBrokerSession();
      return;
    }
    this.log.info(
      { broker: this.url, phase: this.state, why },
      "ending the broker conversation before going on",
    );
    const { settings } = this;
    const bye: ClientRequest = { op: "bye", node: {} };
    const r = await exchange(settings, bye, facts, this.jar, this.slot, settings.timeoutMs, this.log);
    if (!r.ok) this.jar.clear(); // the broker's session is in an unknown state: start a new one
    this.state = "none";
  }

  /** Forgets what a rebuild would replay (the password among it) once the conversation is over. */
  private forget(): void {
    this.savedHello = undefined;
    this.steps = [];
    this.authComplete = false;
    this.lastListReq = undefined;
    this.names = new Map();
  }

  /** A failure saying the conversation cannot be rebuilt without the user, logged. */
  private cannot(cause: string): Relayed<undefined> {
    const failure: BrokerFailure = {
      kind: "conversation_lost",
      timeout: false,
      what: `rebuilding the conversation with the broker ${this.url}`,
      cause,
      fix: "the user signs in again (the client reconnects); nothing to change on the CM",
    };
    this.log.warn({ broker: this.url, failure: failure.kind }, describeBrokerFailure(failure));
    return { ok: false, failure };
  }

  /** Brings the broker's side to `target` by replaying what the client already did. */
  private async rebuild(
    target: "hello" | "authed" | "listed",
    facts: ClientFacts,
    why: string,
  ): Promise<Relayed<undefined>> {
    const { steps } = this;
    if (!this.savedHello) return this.cannot(`${why}, and no hello is known to replay`);
    if (
      target !== "hello" &&
      (!this.authComplete || steps.some((s) => s.method.toLowerCase() !== "password"))
    ) {
      return this.cannot(
        `${why}, and the sign-in had a step that cannot be replayed (${steps.map((s) => s.method).join(", ") || "none completed"})`,
      );
    }
    await this.endBrokerSide(facts, why);
    this.log.info(
      {
        broker: this.url,
        target,
        replay: ["hello", ...(target !== "hello" ? steps.map((s) => `authenticate(${s.method})`) : [])],
      },
      `rebuilding the broker conversation: ${why}`,
    );
    const h = await this.send<HelloResp>(this.savedHello, facts);
    if (!h.ok) return h;
    this.state = "hello";
    if (target === "hello") return { ok: true, resp: undefined };
    for (const step of steps) {
      const a = await this.send<AuthenticateResp>(step, facts);
      if (!a.ok) return a;
      if (!/^AUTH_SUCCESSFUL/.test(a.resp.result.resultId)) {
        return this.cannot(`${why}, and the broker refused the replayed sign-in (${a.resp.result.resultId})`);
      }
    }
    this.state = "authed";
    if (target === "authed") return { ok: true, resp: undefined };
    if (!this.lastListReq) return this.cannot(`${why}, and no resource list request is known to replay`);
    const l = await this.send<GetResourceListResp>(this.lastListReq, facts);
    if (!l.ok) return l;
    this.state = "listed";
    this.names = resourceNames(l.resp);
    return { ok: true, resp: undefined };
  }

  /**
   * `rebuild`, and for an allocation the check that the rebuilt list still names the same desktop under the id
   * the client picked (resource ids may be list positions: "0", "1", …).
   */
  private async rebuildFor(
    target: "hello" | "authed" | "listed",
    facts: ClientFacts,
    why: string,
    picked?: string,
  ): Promise<Relayed<undefined>> {
    const before = this.names;
    const rebuilt = await this.rebuild(target, facts, why);
    if (!rebuilt.ok || picked === undefined) return rebuilt;
    const name = before.get(picked);
    if (name !== undefined && this.names.get(picked) !== name) {
      const failure: BrokerFailure = {
        kind: "conversation_lost",
        timeout: false,
        what: `rebuilding the conversation with the broker ${this.url}`,
        cause: `the broker's resource list changed: resource id "${picked}" no longer names "${name}"`,
        fix: "the user refreshes the desktop list and picks again",
      };
      this.log.warn({ broker: this.url, failure: failure.kind }, describeBrokerFailure(failure));
      return { ok: false, failure };
    }
    return rebuilt;
  }

  hello(req: Hello, facts: ClientFacts): Promise<Relayed<HelloResp>> {
    return this.serial(async () => {
      await this.endBrokerSide(facts, "the client said hello again");
      this.forget();
      this.savedHello = req;
      const r = await this.sendRecovering<HelloResp>(req, facts, "none");
      if (r.ok) this.state = "hello";
      return r;
    });
  }

  authenticate(req: Authenticate, facts: ClientFacts): Promise<Relayed<AuthenticateResp>> {
    return this.serial(async () => {
      if (this.state !== "hello" && this.savedHello) {
        const why =
          this.state === "none" || this.state === "unknown"
            ? "the broker no longer holds this conversation"
            : "the client signs in again after signing in";
        const rebuilt = await this.rebuild("hello", facts, why);
        if (!rebuilt.ok) return rebuilt;
        this.steps = [];
        this.authComplete = false;
      }
      // A first step can be sent again after a reset; a later one (a dialog) needs the steps before it.
      const r =
        this.steps.length === 0
          ? await this.sendRecovering<AuthenticateResp>(req, facts, "hello")
          : await this.send<AuthenticateResp>(req, facts);
      if (!r.ok) return r;
      const id = r.resp.result.resultId;
      if (id === "AUTH_SUCCESSFUL_AND_COMPLETE" || id === "AUTH_SUCCESSFUL") {
        this.steps.push(req);
        this.authComplete = true;
        this.state = "authed";
      } else if (id.startsWith("AUTH_SUCCESSFUL")) {
        this.steps.push(req);
      }
      return r;
    });
  }

  getResourceList(req: GetResourceList, facts: ClientFacts): Promise<Relayed<GetResourceListResp>> {
    return this.serial(async () => {
      if (this.state !== "authed" && this.authComplete) {
        const rebuilt = await this.rebuild("authed", facts, reason(this.state, "list"));
        if (!rebuilt.ok) return rebuilt;
      }
      const r = this.authComplete
        ? await this.sendRecovering<GetResourceListResp>(req, facts, "authed")
        : await this.send<GetResourceListResp>(req, facts);
      if (!r.ok) return r;
      this.state = "listed";
      this.lastListReq = req;
      this.names = resourceNames(r.resp);
      return r;
    });
  }

  allocateResource(req: AllocateResource, facts: ClientFacts): Promise<Relayed<AllocateResourceResp>> {
    return this.serial(async () => {
      const canRebuild = this.authComplete && this.lastListReq !== undefined;
      if (this.state !== "listed" && canRebuild) {
        const why = reason(this.state, "allocate");
        const rebuilt = await this.rebuildFor("listed", facts, why, req.resourceId);
        if (!rebuilt.ok) return rebuilt;
      }
      const r = canRebuild
        ? await this.sendRecovering<AllocateResourceResp>(req, facts, "listed")
        : await this.send<AllocateResourceResp>(req, facts);
      if (!r.ok) return r;
      if (r.resp.result.resultId === "ALLOC_SUCCESSFUL" && r.resp.target) this.state = "allocated";
      return r;
    });
  }

  bye(req: Bye, facts: ClientFacts): Promise<Relayed<ByeResp>> {
    return this.serial(async () => {
      if (this.state === "none" && this.jar.size === 0) {
        this.forget();
        return { ok: true, resp: { op: "bye-resp" } };
      }
      const r = await this.send<ByeResp>(req, facts);
      this.state = "none";
      this.forget();
      this.slot.conn?.close();
      this.slot.conn = undefined;
      return r;
    });
  }

  close(facts?: ClientFacts): Promise<void> {
    return this.serial(async () => {
      if (facts && this.state !== "none" && this.state !== "unknown") {
        const { settings } = this;
        const bye: ClientRequest = { op: "bye", node: {} };
        await exchange(settings, bye, facts, this.jar, this.slot, settings.timeoutMs, this.log);
      }
      this.state = "none";
      this.forget();
      this.slot.conn?.close();
      this.slot.conn = undefined;
    });
  }
}

function resourceNames(resp: GetResourceListResp): Map<string, string> {
  return new Map(resp.resources.map((res) => [res.resourceId, res.resourceName]));
}

function reason(phase: Phase, next: "list" | "allocate"): string {
  if (phase === "allocated")
    return `the client asks to ${next} after an allocation (the broker then accepts only bye)`;
  if (phase === "listed" && next === "list")
    return "the client lists again (the broker then accepts only allocate-resource)";
  if (phase === "none" || phase === "unknown") return "the broker no longer holds this conversation";
  return `the broker's conversation is at "${phase}"`;
}

function logged<T>(
  r: { ok: false; failure: BrokerFailure },
  log: Logger,
  settings: ExchangeSettings,
): Relayed<T> {
  const f = r.failure;
  log.warn(
    {
      broker: settings.connect.endpoint.url,
      failure: f.kind,
      ...(f.status !== undefined ? { status: f.status } : {}),
      cause: f.cause,
      fix: f.fix,
    },
    describeBrokerFailure(f),
  );
  return r;
}
