/**
 * The CM's upstreams for the establishment benchmark, in their own process (their CPU is not the CM's): a slow
 * upstream broker and a fake agent, each answering every request after BENCH_CM_UPSTREAM_MS (50 ms).
 *
 * - The broker is stateless and minimal (hello, authenticate, get-resource-list, allocate-resource, bye answered
 *   by op, no cookie needed), built from src/protocol so every answer is a valid pcoip-client document. It
 *   listens twice: on `cmBrokerPort` its allocate names only the desktop host (the CM then launches the session
 *   on the agent itself, the work a CM does), on `directBrokerPort` it launches the session on the agent
 *   before answering (the peer: the same upstream work with no CM in between).
 * - The agent is test/peers/fake-agent.ts in "slow" mode on 127.0.0.77:60443 (the CM launches on port 60443 of
 *   the host the broker names; a loopback address of its own keeps that fixed port clear of anyone's 60443).
 *
 *   bun bench/lib/cm-upstreams.ts --role agent                → {"event":"ready","agentHost":…,"agentPort":N}
 *   bun bench/lib/cm-upstreams.ts --role broker --cert F --key F → {"event":"ready","cmBrokerPort":N,…}
 * Broker and agent run as two processes, so neither fixture's CPU caps the other on a 2-core machine. Ends
 * when stdin closes or on SIGTERM.
 */
import { parseArgs } from "node:util";
import {
  buildLaunchSession,
  parseLaunchSessionResp,
  WINDOWS_PASSWORD_LOGON,
} from "../../src/protocol/agent.ts";
import {
  buildAllocateResourceResp,
  buildAuthenticateResp,
  buildByeResp,
  buildErrorResp,
  buildGetResourceListResp,
  buildHelloResp,
  parseClientRequest,
} from "../../src/protocol/broker.ts";
import type { Target } from "../../src/protocol/types.ts";
import { startFakeAgent } from "../../test/peers/fake-agent.ts";

const { values } = parseArgs({
  options: {
    role: { type: "string" },
    cert: { type: "string" },
    key: { type: "string" },
    "agent-host": { type: "string" },
  },
});
/** `--agent-host` lets two fake agents (say, with different think times) run side by side. */
export const AGENT_HOST = values["agent-host"] ?? "127.0.0.77";
export const AGENT_PORT = 60443;
const DELAY_MS = Number(process.env.BENCH_CM_UPSTREAM_MS ?? 50);

const PRODUCT = {
  productName: "bench-broker",
  productVersion: "1.0",
  platform: "linux",
  locale: "en_US",
  ipAddress: "127.0.0.1",
  hostname: "broker.bench.test",
};
const ok = (resultId: string, resultStr: string) => ({ resultId, resultStr });
const xml = (body: string) => new Response(body, { headers: { "Content-Type": "text/xml; charset=UTF-8" } });

let served = 0;
let launchFailures = 0;

/** What the broker launched on the agent, as a complete target (direct mode). */
async function launch(user: string, password: string): Promise<Target | undefined> {
  const body = buildLaunchSession({
    sessionType: "UNSPECIFIED",
    ipAddress: AGENT_HOST,
    hostname: "desktop-1.test",
    logon: { method: WINDOWS_PASSWORD_LOGON, username: user, password, domain: "bench.test" },
    clientMac: "02:42:ac:11:00:02",
    clientIp: "127.0.0.1",
    clientName: "",
    licensePath: "",
    sessionLogId: crypto.randomUUID(),
  });
  const r = await fetch(`https://${AGENT_HOST}:${AGENT_PORT}/pcoip-agent/xml`, {
    method: "POST",
    body,
    headers: { "Content-Type": "text/xml; charset=UTF-8" },
    tls: { rejectUnauthorized: false },
  });
  const parsed = parseLaunchSessionResp(await r.text());
  const si = parsed.ok ? parsed.msg.sessionInfo : undefined;
  if (!si) return undefined;
  return {
    ipAddress: si.ipAddress,
    hostname: "desktop-1.test",
    sni: si.sni,
    port: si.port,
    sessionId: si.sessionId,
    connectTag: si.sessionTag,
  };
}

function broker(launches: boolean, tls: { cert: string; key: string }) {
  return Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    tls,
    idleTimeout: 120,
    async fetch(req) {
      const msg = parseClientRequest(await req.text());
      await Bun.sleep(DELAY_MS);
      served++;
      if (!msg.ok) return xml(buildErrorResp(ok("FAILED_INVALID_REQUEST", "bad request")));
      const m = msg.msg;
      switch (m.op) {
        case "hello":
          return xml(
            buildHelloResp({
              op: "hello-resp",
              brokers: [PRODUCT],
              authenticationMethods: ["AUTHENTICATE_VIA_PASSWORD"],
              domains: ["bench.test"],
            }),
          );
        case "authenticate":
          return xml(
            buildAuthenticateResp({
              op: "authenticate-resp",
              method: "password",
              result: ok("AUTH_SUCCESSFUL_AND_COMPLETE", "User authentication successful"),
            }),
          );
        case "get-resource-list":
          return xml(
            buildGetResourceListResp({
              op: "get-resource-list-resp",
              result: ok("LIST_SUCCESSFUL", "Successfully retrieved the list of resources"),
              resources: [
                {
                  resourceName: "Desktop 1",
                  resourceId: "0",
                  resourceType: "DESKTOP",
                  sessionType: "VDI",
                  resourceState: "UNKNOWN",
                  protocols: [{ name: "PCOIP", isDefault: true }],
                },
              ],
            }),
          );
        case "allocate-resource": {
          const target = launches
            ? await launch("bench", "bench")
            : // Only the host: the CM launches the session on AGENT_HOST:60443 itself.
              {
                ipAddress: AGENT_HOST,
                hostname: "desktop-1.test",
                sni: "",
                port: 0,
                sessionId: "",
                connectTag: "",
              };
          if (!target) launchFailures++;
          return xml(
            buildAllocateResourceResp({
              op: "allocate-resource-resp",
              result: target
                ? ok("ALLOC_SUCCESSFUL", "Successfully allocated remote workstation")
                : ok("FAILED_ALLOC", "launch failed"),
              ...(target ? { target } : {}),
              resourceId: m.resourceId,
              protocol: "PCOIP",
            }),
          );
        }
        default:
          return xml(buildByeResp());
      }
    },
  });
}

let stop: () => Promise<void>;
let counters: () => Record<string, number>;
if (values.role === "agent") {
  const agent = await startFakeAgent({
    hostname: AGENT_HOST,
    port: AGENT_PORT,
    mode: "slow",
    slowMs: DELAY_MS,
  });
  stop = () => agent.close();
  counters = () => ({ launches: agent.requests.length });
  ready({ agentHost: AGENT_HOST, agentPort: AGENT_PORT });
} else {
  const tls = {
    cert: await Bun.file(String(values.cert)).text(),
    key: await Bun.file(String(values.key)).text(),
  };
  const forCm = broker(false, tls);
  const direct = broker(true, tls);
  stop = async () => {
    forCm.stop(true);
    direct.stop(true);
  };
  counters = () => ({ served, launchFailures });
  ready({ cmBrokerPort: forCm.port, directBrokerPort: direct.port });
}

function ready(fields: Record<string, unknown>): void {
  process.stdout.write(
    `${JSON.stringify({ event: "ready", pid: process.pid, delayMs: DELAY_MS, ...fields })}\n`,
  );
}

async function shutdown(): Promise<void> {
  await stop();
  process.exit(0);
}
process.on("SIGTERM", () => void shutdown());
process.on("SIGINT", () => void shutdown());
for await (const line of console) {
  if (line.trim() === "counters")
    process.stdout.write(`${JSON.stringify({ event: "counters", ...counters() })}\n`);
}
await shutdown();
