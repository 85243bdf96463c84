/**
 * The one broker interface of the CM (SPEC §3 "Brokers"): `builtin` (desktops and entitlements from the config
 * file, passwords checked by LDAP or local accounts) and `upstream` (each client conversation relayed to a
 * third-party broker) both implement it, and both run the contract suite in test/unit/cm-broker-contract.ts.
 *
 * A broker answers in the broker protocol's own terms: every method resolves to the `*-resp` the client should
 * see (a broker that cannot be reached answers with a failure result and one of the VENDOR_TEXT sentences, and
 * logs the cause beside it). Methods never throw for expected failures; a throw is a bug, and the CM answers
 * it with a failure result of the operation.
 *
 * Conversations: the CM opens one per client pre-session (`openConversation`) and keeps it until bye, expiry,
 * eviction or a restarting hello, then calls `close()`. State the broker needs between messages (the signed-in
 * identity and groups of the built-in broker; the upstream broker's cookie jar and connection) lives in the
 * conversation object, never in the broker or in module globals.
 *
 * The CM, not the broker, keeps what the agent launch needs: the user's password stays in the CM's session only
 * until the launch-session call (agent-client.ts), the state machine lives in flow.ts, the SG admission and the
 * address rewrite in server.ts.
 *
 * @example
 * const conv = broker.openConversation({ sessionLogId, clientIp, clientLogId, log });
 * const hello = await conv.hello(req);                 // HelloResp with pcm-info and domains
 * const auth = await conv.authenticate(authReq);       // { resp, identity? }
 * const alloc = await conv.allocateResource(allocReq); // target | launch | refused
 * await conv.close();
 */
import type { Logger } from "../../observability/log.ts";
import type {
  AllocateResource,
  AllocateResourceResp,
  Authenticate,
  AuthenticateResp,
  Bye,
  ByeResp,
  GetResourceList,
  GetResourceListResp,
  Hello,
  HelloResp,
  Target,
} from "../../protocol/types.ts";

/** What the CM knows about the client conversation a broker call belongs to. */
export interface ConversationContext {
  /** The session id (SPEC §2): Client-Log-Id when UUID-shaped, else a UUIDv4. Sent to agents as session-log-id. */
  readonly sessionLogId: string;
  /** Canonical client IP (net/client-address.ts). */
  readonly clientIp: string;
  /** The client's raw Client-Log-Id header ("" when absent); an upstream broker gets it unchanged. */
  readonly clientLogId: string;
  /** The session's logger: every line carries the session id. */
  readonly log: Logger;
}

/** Who signed in, once `authenticate` answered AUTH_SUCCESSFUL_AND_COMPLETE. */
export interface Identity {
  /** The user name as the authority spells it (audit, entitlements, the agent's logon). */
  readonly user: string;
  /** The domain to pass to the agent's Windows logon (the chosen one, or the broker's default). */
  readonly domain: string;
}

export interface AuthenticateOutcome {
  readonly resp: AuthenticateResp;
  /** Present exactly when `resp.result.resultId` is AUTH_SUCCESSFUL_AND_COMPLETE. */
  readonly identity?: Identity;
}

/** Where the CM sends launch-session (PROTOCOL.md §5): `https://host:port/pcoip-agent/xml`. */
export interface AgentAddress {
  /** Host name or IP literal the CM connects to. */
  readonly host: string;
  /** 60443 unless configured otherwise. */
  readonly port: number;
  /** The host name written into launch-session/hostname and target/hostname. */
  readonly hostname: string;
}

/** What an allocate-resource came to. */
export type Allocation =
  /**
   * The broker launched the session itself: `resp.target` is complete (ip-address, port, session-id,
   * connect-tag). With the SG on, the CM admits it and rewrites only ip-address and port.
   */
  | {
      readonly kind: "target";
      readonly resourceId: string;
      readonly resp: AllocateResourceResp & { readonly target: Target };
    }
  /**
   * The broker picked the desktop; the CM launches the session on its agent. `resp`, when given, is the broker's
   * own answer (its unknown elements pass through to the client with the CM's target laid over it).
   */
  | {
      readonly kind: "launch";
      readonly resourceId: string;
      readonly agent: AgentAddress;
      readonly resp?: AllocateResourceResp;
    }
  /** The broker said no (not entitled, unknown id, broker down…): the answer goes to the client as it is. */
  | { readonly kind: "refused"; readonly resp: AllocateResourceResp };

/** One client conversation with the broker (its own state; see the module header). */
export interface BrokerConversation {
  /** A real (non-probe) hello; the answer offers the authentication methods and `domains`. */
  hello(req: Hello): Promise<HelloResp>;
  /** A password (or relayed dialog) step. */
  authenticate(req: Authenticate): Promise<AuthenticateOutcome>;
  /** The resources entitled to the signed-in user. */
  getResourceList(req: GetResourceList): Promise<GetResourceListResp>;
  /** Picks (and maybe launches) the desktop `req.resourceId`. */
  allocateResource(req: AllocateResource): Promise<Allocation>;
  bye(req: Bye): Promise<ByeResp>;
  /** Forgets the conversation (best effort; never throws). Called once, whatever ended it. */
  close(): Promise<void>;
}

export interface Broker {
  /** "builtin" or "upstream" (logs, metrics, diagnose). */
  readonly kind: string;
  /** One line for the startup log. */
  readonly description: string;
  /** Answers the client's probe hello (QueryBrokerClient) without any conversation state. */
  probe(req: Hello, ctx: ConversationContext): Promise<HelloResp>;
  /** A new conversation for one client pre-session. */
  openConversation(ctx: ConversationContext): BrokerConversation;
  /**
   * Whether the broker answers right now (readiness, SPEC §2): a probe hello on its own connection. Absent for the
   * built-in broker, which is always there. The reason names the broker and the cause when it does not answer.
   */
  checkReachable?(log: Logger): Promise<{ ok: true } | { ok: false; reason: string }>;
  /** Releases what the broker holds (directory connections…). */
  close?(): Promise<void>;
}

/** The one authentication method this CM offers itself (PROTOCOL.md §2.2, §7 Q5). */
export const PASSWORD_METHOD = "AUTHENTICATE_VIA_PASSWORD";
