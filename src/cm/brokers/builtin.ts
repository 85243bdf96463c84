/**
 * The built-in broker (SPEC §3): desktops and entitlements from the config file, passwords checked by the
 * configured authenticators (LDAP, local accounts) in the configured order. The CM launches every session on
 * the desktop's agent itself, so `allocateResource` answers "launch" with the agent's address.
 *
 * Authenticators are asked in order; the first that knows the user decides. One that does not know the name
 * ("unknown_user") or cannot be asked ("unavailable") passes to the next; when none decides, an unreachable one
 * makes the answer a broker failure (so the admin looks at the directory, not at the user's password).
 *
 * Entitlement: a desktop is offered when its `users` holds "*" or the user's name (without regard to case), or
 * its `groups` names one of the user's groups, compared without regard to case as a whole DN or as the group's
 * CN (a directory gives DNs, admins write either).
 */
import type { Logger } from "../../observability/log.ts";
import { result } from "../../protocol/results.ts";
import type { GetResourceListResp, HelloResp, ProductInfo, Resource } from "../../protocol/types.ts";
import type { Authenticator, AuthOutcome } from "../auth/authenticator.ts";
import {
  type AgentAddress,
  type Allocation,
  type Broker,
  type BrokerConversation,
  type ConversationContext,
  type Identity,
  PASSWORD_METHOD,
} from "./broker.ts";

/** The agent's broker-facing port (PROTOCOL.md §5.1). */
export const DEFAULT_AGENT_PORT = 60443;

export interface BuiltinDesktop {
  /** Resource id shown to and echoed by the client (opaque, matched exactly). */
  readonly id: string;
  /** Display name ("" → the id). */
  readonly name: string;
  /** Host or IP the CM sends launch-session to. */
  readonly agentHost: string;
  /** Default 60443. */
  readonly agentPort?: number;
  /** Host name written into launch-session and target (default: agentHost). */
  readonly hostname?: string;
  /** Entitled user names; "*" = every signed-in user. */
  readonly users: readonly string[];
  /** Entitled groups (CN or DN). */
  readonly groups: readonly string[];
}

export interface BuiltinBrokerOptions {
  readonly desktops: readonly BuiltinDesktop[];
  /** Tried in this order (e.g. [ldap, local]). */
  readonly authenticators: readonly Authenticator[];
  /** Offered in hello-resp (the client shows them in a list). */
  readonly domains: readonly string[];
  /** This broker in hello-resp/brokers-info. */
  readonly brokerInfo: ProductInfo;
  /** This CM in hello-resp/pcm-info (the client tells a CM from a direct agent by it). */
  readonly pcmInfo: ProductInfo;
}

export function createBuiltinBroker(options: BuiltinBrokerOptions): Broker {
  const desktops = options.desktops.map((d) => ({
    ...d,
    users: d.users.map((u) => u.toLowerCase()),
    groups: d.groups.map(normaliseDn),
  }));

  const helloResp = (): HelloResp => ({
    op: "hello-resp",
    brokers: [options.brokerInfo],
    pcm: options.pcmInfo,
    authenticationMethods: [PASSWORD_METHOD],
    domains: [...options.domains],
  });

  const entitled = (who: Signed) =>
    desktops.filter(
      (d) =>
        d.users.includes("*") ||
        d.users.includes(who.user.toLowerCase()) ||
        d.groups.some((g) => who.groups.some((ug) => groupMatches(g, ug))),
    );

  const check = async (
    creds: { username: string; password: string; domain: string },
    log: Logger,
  ): Promise<AuthOutcome> => {
    let unavailable: AuthOutcome | undefined;
    let last: AuthOutcome = { ok: false, reason: "unknown_user", detail: "no authenticator is configured" };
    for (const a of options.authenticators) {
      const outcome = await a.authenticate(creds, log);
      if (outcome.ok) return outcome;
      log.debug({ authenticator: a.name, reason: outcome.reason }, `authenticating: ${outcome.detail}`);
      if (outcome.reason === "unavailable") {
        unavailable ??= outcome;
        continue;
      }
      last = outcome;
      if (outcome.reason !== "unknown_user") return outcome;
    }
    return unavailable ?? last;
  };

  return {
    kind: "builtin",
    description: `built-in broker: ${desktops.length} desktop(s), authenticators ${options.authenticators.map((a) => a.name).join(", ") || "(none)"}`,
    async probe() {
      return helloResp();
    },
    openConversation(ctx: ConversationContext): BrokerConversation {
      let signed: Signed | undefined;
      return {
        async hello() {
          signed = undefined;
          return helloResp();
        },
        async authenticate(req) {
          signed = undefined;
          const method = req.method === "" ? "password" : req.method;
          if (method !== "password") {
            return {
              resp: {
                op: "authenticate-resp",
                method,
                result: result(
                  "AUTH_FAILED_ACCESS_DENIED",
                  `Authentication method "${method}" is not supported`,
                ),
              },
            };
          }
          const outcome = await check(
            { username: req.username, password: req.password, domain: req.domain },
            ctx.log,
          );
          if (!outcome.ok) {
            const logLine = outcome.reason === "unavailable" ? ctx.log.warn : ctx.log.info;
            logLine.call(
              ctx.log,
              { reason: outcome.reason },
              `authenticating ${JSON.stringify(req.username)}: ${outcome.detail}`,
            );
            return {
              resp: {
                op: "authenticate-resp",
                method: "password",
                result: result(FAILURE_RESULT[outcome.reason]),
              },
            };
          }
          signed = { user: outcome.user, domain: outcome.domain, groups: outcome.groups };
          const identity: Identity = { user: outcome.user, domain: outcome.domain };
          return {
            resp: {
              op: "authenticate-resp",
              method: "password",
              result: result("AUTH_SUCCESSFUL_AND_COMPLETE"),
            },
            identity,
          };
        },
        async getResourceList(): Promise<GetResourceListResp> {
          const list = signed ? entitled(signed) : [];
          if (list.length === 0) {
            return {
              op: "get-resource-list-resp",
              result: result("LIST_FAILED_NO_ENTITLEMENT"),
              resources: [],
            };
          }
          return {
            op: "get-resource-list-resp",
            result: result("LIST_SUCCESSFUL"),
            resources: list.map(toResource),
          };
        },
        async allocateResource(req): Promise<Allocation> {
          const d = signed ? entitled(signed).find((x) => x.id === req.resourceId) : undefined;
          if (!d) {
            ctx.log.info(
              { resourceId: req.resourceId },
              `allocating ${JSON.stringify(req.resourceId)}: no such desktop entitled to this user`,
            );
            return {
              kind: "refused",
              resp: {
                op: "allocate-resource-resp",
                result: result("ALLOC_FAILED_RESOURCE_NOT_AVAILABLE"),
              },
            };
          }
          const agent: AgentAddress = {
            host: d.agentHost,
            port: d.agentPort ?? DEFAULT_AGENT_PORT,
            hostname: d.hostname || d.agentHost,
          };
          return { kind: "launch", resourceId: d.id, agent };
        },
        async bye() {
          signed = undefined;
          return { op: "bye-resp" };
        },
        async close() {
          signed = undefined;
        },
      };
    },
    async close() {
      await Promise.all(options.authenticators.map((a) => a.close?.().catch(() => undefined)));
    },
  };
}

interface Signed extends Identity {
  readonly groups: readonly string[];
}

const FAILURE_RESULT = {
  bad_credentials: "AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD",
  unknown_user: "AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD",
  expired_password: "AUTH_FAILED_EXPIRED_PASSWORD",
  access_denied: "AUTH_FAILED_ACCESS_DENIED",
  unavailable: "AUTH_FAILED_BROKER_ERROR",
} as const;

function toResource(d: BuiltinDesktop): Resource {
  return {
    resourceName: d.name || d.id,
    resourceId: d.id,
    resourceType: "DESKTOP",
    sessionType: "VDI",
    resourceState: "UNKNOWN",
    protocols: [{ name: "PCOIP", isDefault: true }],
  };
}

/** Lower case, no blanks around `,` and `=` ("CN=CAD Users, OU=Groups" → "cn=cad users,ou=groups"). */
function normaliseDn(s: string): string {
  return s
    .trim()
    .toLowerCase()
    .replace(/\s*([,=])\s*/g, "$1");
}

/** A configured group against one of the user's groups: the whole DN, or the DN's first CN (any case). */
export function groupMatches(configured: string, userGroup: string): boolean {
  const want = normaliseDn(configured);
  const g = normaliseDn(userGroup);
  if (g === want) return true;
  const cn = /^cn=((?:\\.|[^,])*)/.exec(g)?.[1];
  return cn !== undefined && cn.replace(/\\(.)/g, "$1") === want;
}
