/**
 * A fake PCoIP agent's broker-facing API (PROTOCOL.md §5): HTTPS `POST /pcoip-agent/xml` answering
 * `launch-session` the way a real agent does — `session-info` with the agent's address, an `sni`, port 4172 (or
 * the session endpoint's port), a `session-id` of 2305843009213693957 + n and a `session-tag` of `SCS1` + 100
 * base64 characters — or failing in one of the ways real agents fail. The mode can be switched at run time.
 * Every launch-session received is recorded (parsed) so tests can assert what the CM sent.
 *
 * With `endpoint: true` it also starts the agent's session endpoint (agent-endpoint.ts: TLS on TCP P + UDP echo on
 * P) and points session-info at it, so a client can go on through the SG.
 *
 * Demo: `bun test/peers/fake-agent.ts --port 60443 [--host 127.0.0.1] [--mode success] [--endpoint [--endpoint-port P]] [--cert F --key F]` prints one
 * JSON line per launch-session (user, domain, client ip, session-log-id; never the password).
 */
import { readFileSync } from "node:fs";
import type { Server } from "bun";
import { type AgentTargetRules, compileAgentTargets } from "../../src/cm/agent-targets.ts";
import { buildLaunchSessionResp, parseLaunchSession } from "../../src/protocol/agent.ts";
import type { LaunchSession } from "../../src/protocol/types.ts";
import { type AgentEndpoint, startAgentEndpoint } from "./agent-endpoint.ts";
import { testPki } from "./test-certs.ts";

export type FakeAgentMode =
  /** SUCCESSFUL with session-info. */
  | "success"
  /** FAILED_USER_AUTH (the Windows logon refused the password). */
  | "user_auth"
  /** FAILED_ANOTHER_SESSION_STARTED (another user's session is running). */
  | "another_session"
  /** Answers after `slowMs` (the CM should time out first). */
  | "slow"
  /** Not listening at all: connections are refused. */
  | "down"
  /** 200 with a body that is not XML. */
  | "bad_xml"
  /** HTTP 500 with an HTML body. */
  | "http_500";

export interface FakeAgentOptions {
  /** Default 127.0.0.1 ("::1" for IPv6 tests). */
  readonly hostname?: string;
  /** Default 0 (ephemeral). */
  readonly port?: number;
  readonly mode?: FakeAgentMode;
  /** Delay of "slow" mode. Default 30 s. */
  readonly slowMs?: number;
  /** session-info/sni. Default "desktop-1.test". */
  readonly sni?: string;
  /** Certificate (default: a test-PKI leaf for localhost, 127.0.0.1, ::1 and `sni`). */
  readonly cert?: string;
  readonly key?: string;
  /** Also start the session endpoint (TCP+UDP) and point session-info at it. */
  readonly endpoint?: boolean;
  /** The session endpoint's port (default 0: ephemeral). */
  readonly endpointPort?: number;
  /** Called for each launch-session received (the demo prints it). */
  readonly onLaunch?: (ls: LaunchSession) => void;
}

export interface FakeAgent {
  readonly hostname: string;
  readonly port: number;
  /** The CA that issued the agent's certificate (for agentCertCheck tests). */
  readonly caCert: string;
  /** Every launch-session received, parsed, in order. */
  readonly requests: readonly LaunchSession[];
  /** Raw request bodies, in order. */
  readonly rawRequests: readonly string[];
  readonly mode: FakeAgentMode;
  setMode(mode: FakeAgentMode): Promise<void>;
  /** The session endpoint when `endpoint` was asked for. */
  readonly endpoint: AgentEndpoint | undefined;
  /** session-info the last successful launch returned. */
  readonly lastSessionInfo:
    | { sessionId: string; sessionTag: string; port: number; ipAddress: string }
    | undefined;
  close(): Promise<void>;
}

const SESSION_ID_BASE = 2305843009213693957n;

/** sg.agentNetworks for loopback test setups (never in the defaults). */
export const LOOPBACK_NETWORKS: readonly string[] = ["127.0.0.0/8", "::1/128"];

/** The SG's trust rules for an in-process CM whose agents are on loopback, with their session ports. */
export function loopbackAgentTargets(ports: readonly number[]): AgentTargetRules {
  return compileAgentTargets({ networks: LOOPBACK_NETWORKS, ports });
}

export async function startFakeAgent(options: FakeAgentOptions = {}): Promise<FakeAgent> {
  const hostname = options.hostname ?? "127.0.0.1";
  const sni = options.sni ?? "desktop-1.test";
  const pki = testPki();
  const leaf =
    options.cert && options.key
      ? { cert: options.cert, key: options.key }
      : pki.leaf(["localhost", "127.0.0.1", "::1", sni]);
  const requests: LaunchSession[] = [];
  const rawRequests: string[] = [];
  let mode: FakeAgentMode = options.mode ?? "success";
  let counter = 0n;
  let lastSessionInfo: FakeAgent["lastSessionInfo"];
  const timers = new Set<ReturnType<typeof setTimeout>>();
  const endpoint = options.endpoint
    ? await startAgentEndpoint({ hostname, port: options.endpointPort ?? 0, cert: leaf.cert, key: leaf.key })
    : undefined;

  const answer = async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    if (req.method !== "POST" || url.pathname !== "/pcoip-agent/xml") {
      return new Response("not found", { status: 404 });
    }
    const body = await req.text();
    rawRequests.push(body);
    const parsed = parseLaunchSession(body);
    if (parsed.ok) {
      requests.push(parsed.msg);
      options.onLaunch?.(parsed.msg);
    }
    switch (mode) {
      case "slow":
        await new Promise<void>((r) => {
          const t = setTimeout(() => {
            timers.delete(t);
            r();
          }, options.slowMs ?? 30_000);
          timers.add(t);
        });
        return success();
      case "bad_xml":
        return new Response("this is not <xml", { headers: { "Content-Type": "application/xml" } });
      case "http_500":
        return new Response("<html><body>Internal Server Error</body></html>", {
          status: 500,
          headers: { "Content-Type": "text/html" },
        });
      case "user_auth":
        return xml({
          resultId: "FAILED_USER_AUTH",
          failReason: "Session start failed because user authentication failed",
        });
      case "another_session":
        return xml({
          resultId: "FAILED_ANOTHER_SESSION_STARTED",
          failReason: "Session start failed because a session of another user is running",
        });
      default:
        return parsed.ok ? success() : new Response("bad request", { status: 400 });
    }
  };

  const success = (): Response => {
    const n = counter++;
    const tag = `SCS1${Buffer.from(crypto.getRandomValues(new Uint8Array(75))).toString("base64")}`;
    const info = {
      ipAddress: endpoint?.hostname ?? hostname,
      sni,
      port: endpoint?.port ?? 4172,
      sessionId: (SESSION_ID_BASE + n).toString(),
      sessionTag: tag,
    };
    lastSessionInfo = info;
    return xml({ resultId: "SUCCESSFUL", failReason: "", sessionInfo: info });
  };

  const xml = (r: Parameters<typeof buildLaunchSessionResp>[0]) =>
    new Response(buildLaunchSessionResp(r), {
      headers: { "Content-Type": "application/xml; charset=UTF-8" },
    });

  let port = options.port ?? 0;
  let server: Server<unknown> | undefined;
  const listen = () => {
    server = Bun.serve({
      hostname,
      port,
      tls: { cert: leaf.cert, key: leaf.key },
      fetch: (req) => answer(req),
    });
    port = server.port ?? port;
  };
  if (mode !== "down") listen();
  else {
    // Reserve a port number for later, then free it so connections are refused.
    listen();
    await server?.stop(true);
    server = undefined;
  }

  return {
    hostname,
    get port() {
      return port;
    },
    caCert: pki.ca.cert,
    requests,
    rawRequests,
    get mode() {
      return mode;
    },
    endpoint,
    get lastSessionInfo() {
      return lastSessionInfo;
    },
    async setMode(next) {
      if (next === "down" && server) {
        await server.stop(true);
        server = undefined;
      } else if (next !== "down" && !server) {
        listen();
      }
      mode = next;
    },
    async close() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      await server?.stop(true);
      server = undefined;
      await endpoint?.close();
    },
  };
}

if (import.meta.main) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : undefined;
  };
  const agent = await startFakeAgent({
    hostname: arg("host") ?? "127.0.0.1",
    port: Number(arg("port") ?? 60443),
    mode: (arg("mode") as FakeAgentMode | undefined) ?? "success",
    endpoint: process.argv.includes("--endpoint"),
    endpointPort: Number(arg("endpoint-port") ?? 0),
    // --cert/--key FILE: a certificate of the caller's PKI (a test in another process trusts its own CA).
    ...(arg("cert") && arg("key")
      ? { cert: readFileSync(arg("cert")!, "utf8"), key: readFileSync(arg("key")!, "utf8") }
      : {}),
    onLaunch: (ls) =>
      console.log(
        JSON.stringify({
          event: "launch-session",
          user: ls.logon.username,
          domain: ls.logon.domain,
          clientIp: ls.clientIp,
          clientName: ls.clientName,
          sessionLogId: ls.sessionLogId,
          licensePath: ls.licensePath,
        }),
      ),
  });
  console.log(
    JSON.stringify({
      event: "listening",
      url: `https://${agent.hostname.includes(":") ? `[${agent.hostname}]` : agent.hostname}:${agent.port}/pcoip-agent/xml`,
      mode: agent.mode,
      ...(agent.endpoint ? { endpoint: `${agent.endpoint.hostname}:${agent.endpoint.port}` } : {}),
    }),
  );
  const stop = async () => {
    await agent.close();
    process.exit(0);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}
