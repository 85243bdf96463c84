/**
 * Upstream broker mode (SPEC §3, `--broker-url`), behind the one broker interface (broker.ts): each client
 * conversation is relayed to a third-party broker with its own upstream conversation and cookie jar
 * (upstream-conversation.ts), over the CM's own HTTP/1.1 and TLS (upstream-exchange.ts, upstream-transport.ts),
 * through the outbound proxy when HTTPS_PROXY says so — broker traffic only: agents on the LAN are never reached
 * through it.
 *
 * Answers: the broker's own `*-resp`, parsed with its unknown elements kept, so result ids, texts and vendor
 * extensions reach the client intact; `hello-resp` gets this CM's `pcm-info` (the client tells a CM from a direct
 * agent by it). A broker that cannot be reached, or answers anything but HTTP 200 with a pcoip-client document,
 * becomes the operation's failure result with "Error occurred while communicating with broker" or "Timeout
 * occurred while communicating with broker", and one log line naming the cause and the fix.
 *
 * allocate-resource: a resource id that was not in the list relayed to this client is answered
 * ALLOC_FAILED_RESOURCE_NOT_AVAILABLE without asking the broker (the CM knows the list; a broker asked about an
 * unknown id answers a misleading "Error occurred while communicating with broker"). A complete `target` means
 * the broker launched the session (used as is); a target naming only the desktop host means the CM launches it
 * on that host's agent (`agentPort`, default 60443). A missing target is a failure whatever the result id.
 *
 * Result ids: the broker's pass through when clients know them; others (agent codes a broker passes on, ids of
 * its own) are mapped by upstream-results.ts (the table in PROTOCOL.md §2.5) and the original is logged.
 *
 * Transport choice: Bun's fetch was rejected for the broker leg. It sends every HTTPS request through
 * HTTPS_PROXY when that is set (agents included), hides keep-alive reuse and retries, does not expose the
 * broker's certificate chain (needed to name the subject and detect TLS inspection), and cannot show a proxy's
 * 407 challenge schemes (needed to say "NTLM not supported"). node:net + node:tls with our own CONNECT and
 * HTTP/1.1 give each of those exactly, and every one is tested on real sockets.
 */
import { describeProxy } from "../../net/proxy-env.ts";
import type { Logger } from "../../observability/log.ts";
import { isCompleteTarget, PROBE_PRODUCT_NAME, parseClientRequest } from "../../protocol/broker.ts";
import { result, VENDOR_TEXT } from "../../protocol/results.ts";
import type { AllocateResourceResp, Hello, HelloResp, ProductInfo, Result } from "../../protocol/types.ts";
import {
  type Allocation,
  type Broker,
  type BrokerConversation,
  type ConversationContext,
  type Identity,
  PASSWORD_METHOD,
} from "./broker.ts";
import {
  type ConversationSettings,
  createUpstreamConversation,
  relayProbe,
} from "./upstream-conversation.ts";
import type { ClientFacts } from "./upstream-exchange.ts";
import { brokerFailureResult, describeBrokerFailure } from "./upstream-failures.ts";
import { inClientVocabulary } from "./upstream-results.ts";
import { resolveUpstreamOptions, type SettingsError, type UpstreamOptions } from "./upstream-settings.ts";

export type { BrokerFailure } from "./upstream-failures.ts";
export type { UpstreamOptions } from "./upstream-settings.ts";

export interface UpstreamBroker extends Broker {
  readonly kind: "upstream";
}

/**
 * Builds the upstream broker; a configuration mistake (bad URL, bad proxy variables, bad CA PEM) is a value
 * naming what, why and the fix.
 * @example
 * const up = createUpstreamBroker({ brokerUrl: "https://broker.corp.example", pcmInfo, caCertPem, env: process.env });
 * if (!up.ok) throw new Error(`${up.error.what}: ${up.error.cause}; fix: ${up.error.fix}`);
 * const conv = up.broker.openConversation({ sessionLogId, clientIp, clientLogId, log });
 */
export function createUpstreamBroker(
  options: UpstreamOptions,
): { ok: true; broker: UpstreamBroker } | { ok: false; error: SettingsError } {
  const resolved = resolveUpstreamOptions(options);
  if (!resolved.ok) return resolved;
  const { proxy, agentPort } = resolved.value;
  const base = resolved.value.conversation;
  const url = base.connect.endpoint.url;
  const pcmInfo = options.pcmInfo;
  // A TLS-inspection warning is said once per process (per distinct message), not once per connection.
  const warned = new Set<string>();
  const settingsFor = (log: Logger): ConversationSettings => ({
    ...base,
    connect: {
      ...base.connect,
      onWarning: (message, fix) => {
        if (warned.has(message)) return;
        warned.add(message);
        log.warn({ broker: url, fix }, `broker connection: ${message}`);
      },
    },
  });
  const factsOf = (ctx: ConversationContext): ClientFacts => ({
    clientIp: ctx.clientIp,
    // The client's own header, unchanged; without one, the session id, so the broker's log still correlates.
    clientLogId: ctx.clientLogId || ctx.sessionLogId,
  });
  const withPcm = (resp: HelloResp): HelloResp => ({ ...resp, pcm: pcmInfo });
  const unreachableHello = (): HelloResp => failedHello(pcmInfo, base.connect.endpoint.host);

  const classify = (resourceId: string, resp: AllocateResourceResp, log: Logger): Allocation => {
    const ok = resp.result.resultId === "ALLOC_SUCCESSFUL";
    const t = resp.target;
    if (ok && isCompleteTarget(t)) return { kind: "target", resourceId, resp: { ...resp, target: t } };
    const host = t?.ipAddress || t?.hostname || "";
    if (ok && t && host !== "") {
      return {
        kind: "launch",
        resourceId,
        agent: { host, port: agentPort, hostname: t.hostname || host },
        resp,
      };
    }
    if (ok) {
      log.warn(
        { broker: url, failure: "unexpected_answer" },
        `relaying allocate-resource to the broker ${url}: it answered ALLOC_SUCCESSFUL without a target; fix: see the broker's log`,
      );
      return {
        kind: "refused",
        resp: failedAllocation(result("ALLOC_FAILED_TO_ALLOCATE_BROKER", VENDOR_TEXT.brokerError)),
      };
    }
    return { kind: "refused", resp };
  };

  const broker: UpstreamBroker = {
    kind: "upstream",
    description: `upstream broker ${url} (dialect ${base.dialect}${proxy ? `, through ${describeProxy(proxy)}` : ", no proxy"}; agents launched on port ${agentPort} when the broker names only a host)`,

    async checkReachable(log) {
      const hello = readinessProbe();
      const r = await relayProbe(settingsFor(log), hello, { clientIp: "", clientLogId: "" }, silent(log));
      return r.ok ? { ok: true } : { ok: false, reason: describeBrokerFailure(r.failure) };
    },

    async probe(req, ctx) {
      const r = await relayProbe(settingsFor(ctx.log), req, factsOf(ctx), ctx.log);
      return r.ok ? withPcm(r.resp) : unreachableHello();
    },

    openConversation(ctx): BrokerConversation {
      const facts = factsOf(ctx);
      const conv = createUpstreamConversation(settingsFor(ctx.log), ctx.log);
      /** Who the password step named; a dialog step that completes the sign-in carries no user name. */
      let claimed: Identity | undefined;
      let closed = false;
      return {
        async hello(req) {
          claimed = undefined;
          const r = await conv.hello(req, facts);
          return r.ok ? withPcm(r.resp) : unreachableHello();
        },
        async authenticate(req) {
          if (req.username !== "") claimed = { user: req.username, domain: req.domain };
          const r = await conv.authenticate(req, facts);
          if (!r.ok) {
            return {
              resp: {
                op: "authenticate-resp",
                ...(req.method !== "" ? { method: req.method } : {}),
                result: brokerFailureResult("authenticate", r.failure),
              },
            };
          }
          const resp = inClientVocabulary(r.resp, ctx.log, url);
          if (resp.result.resultId !== "AUTH_SUCCESSFUL_AND_COMPLETE") return { resp };
          // A sign-in completed by a step that names no user (a relayed method this CM does not model) has none.
          return { resp, identity: claimed ?? { user: "", domain: "" } };
        },
        async getResourceList(req) {
          const r = await conv.getResourceList(req, facts);
          return r.ok
            ? inClientVocabulary(r.resp, ctx.log, url)
            : {
                op: "get-resource-list-resp",
                result: brokerFailureResult("get-resource-list", r.failure),
                resources: [],
              };
        },
        async allocateResource(req) {
          if (!conv.listed(req.resourceId)) {
            ctx.log.info(
              { broker: url, resourceId: req.resourceId.slice(0, 200) },
              "allocating: the resource id is not in the list relayed to this client; refused without asking the broker",
            );
            return { kind: "refused", resp: failedAllocation(result("ALLOC_FAILED_RESOURCE_NOT_AVAILABLE")) };
          }
          const r = await conv.allocateResource(req, facts);
          if (!r.ok)
            return {
              kind: "refused",
              resp: failedAllocation(brokerFailureResult("allocate-resource", r.failure)),
            };
          return classify(req.resourceId, inClientVocabulary(r.resp, ctx.log, url), ctx.log);
        },
        async bye(req) {
          const r = await conv.bye(req, facts);
          return r.ok ? r.resp : { op: "bye-resp" };
        },
        async close() {
          if (closed) return;
          closed = true;
          try {
            await conv.close(facts);
          } catch (e) {
            ctx.log.debug({ broker: url, err: (e as Error).message }, "closing the broker conversation");
          }
        },
      };
    },
  };
  return { ok: true, broker };
}

function failedAllocation(r: Result): AllocateResourceResp {
  return { op: "allocate-resource-resp", result: r };
}

/**
 * The hello-resp while the broker cannot be reached: the documented shape (PROTOCOL.md §2.2 — brokers-info,
 * this CM's pcm-info, next-authentication offering the password method), with no `result`, which hello-resp
 * does not have. The client goes on to its password step as always; that step retries the broker, and while it
 * is still down answers AUTH_FAILED_BROKER_ERROR with the vendor sentence — an authenticate-resp failure, which
 * every client shows. The log line of the failed hello names the cause.
 */
function failedHello(pcmInfo: ProductInfo, brokerHost: string): HelloResp {
  return {
    op: "hello-resp",
    brokers: [
      {
        productName: "upstream broker (not reachable)",
        productVersion: "",
        platform: "",
        locale: pcmInfo.locale ?? "en_US",
        ipAddress: "N/A",
        hostname: brokerHost,
      },
    ],
    pcm: pcmInfo,
    authenticationMethods: [PASSWORD_METHOD],
    domains: [],
  };
}

/** The probe hello readiness sends: what a client's QueryBrokerClient sends, parsed once. */
let probeHello: Hello | undefined;
function readinessProbe(): Hello {
  if (probeHello) return probeHello;
  const r = parseClientRequest(
    `<?xml version="1.0" encoding="UTF-8"?><pcoip-client version="2.1"><hello><client-info><product-name>${PROBE_PRODUCT_NAME}</product-name><product-version>readiness</product-version><platform>pcoip-cmsg</platform><locale>en_US</locale><hostname>pcoip-cmsg-readiness</hostname></client-info><caps></caps><server-address><ip-address></ip-address><hostname></hostname></server-address></hello></pcoip-client>`,
  );
  if (!r.ok || r.msg.op !== "hello") throw new Error("readiness probe hello does not parse");
  probeHello = r.msg;
  return probeHello;
}

/** Readiness reports the failure itself; a down broker polled every few seconds must not flood the log. */
function silent(log: Logger): Logger {
  return log.child({}, { level: "error" });
}
