/**
 * The SG under test, alone in its own process so its CPU time is measured like a peer's (/proc/<pid>/stat):
 * admissions + TCP relay + UDP relay from src/sg, on 127.0.0.1 with ephemeral listener ports, driven by JSON
 * lines on stdin and answering with JSON lines on stdout. The relays run exactly as the appliance runs them;
 * only admissions come from the bench instead of the CM.
 *
 *   bun bench/lib/sg-server.ts [--udp-source-ports 30000-31999] [--max-sessions 5000] [--log FILE] [--log-level info]
 *   → {"event":"ready","pid":N,"tcpPort":N,"udpPort":N}
 *
 * Commands ({"id":N,"cmd":…} → {"id":N,"ok":true,…} or {"id":N,"ok":false,"error":"…"}):
 *   admit     {count, clientIp, agentHost, agentTcpPort, agentUdpPort, sniPrefix} → {snis: [...]}
 *   end-all   ends every session (its control connections and UDP flows close) → {ended}
 *   counters  → {tcp, udp, admissions: {size, active}}
 *   cm-start  {cert, key} → {port}: a CM-like HTTPS front door in THIS process (our HTTP/1.1 server, TLS,
 *             XML parse and build per request), so load on it shares the SG's event loop the way the CM does in
 *             the appliance. The bench drives logins against it (bench/lib/cm-load.ts).
 *             {cert, key, brokerUrl, ca, agentPort} → {port}: the real CM instead (src/cm/server.ts in upstream
 *             broker mode, wired to this process's admissions as the appliance wires it), for real logins
 *             (bench/lib/logins.ts) against brokers and agents elsewhere (bench/lib/cm-upstreams.ts).
 *   stop      stops the relays and exits; stdin closing does the same (the bench died).
 *
 * A replacement server speaking the same lines (BENCH_SG_SERVER=path) can run the assembled appliance instead,
 * where `cm-start` starts the real CM plane: that is the hook for "SG UDP during 200 logins/s on the CM".
 */
import pino from "pino";
import { startHttp1Server } from "../../src/net/http1.ts";
import { createLogger } from "../../src/observability/log.ts";
import { buildGetResourceListResp, parseClientRequest } from "../../src/protocol/broker.ts";
import type { GetResourceListResp } from "../../src/protocol/types.ts";
import { createAdmissions } from "../../src/sg/admissions.ts";
import { createRelayLimits } from "../../src/sg/limits.ts";
import { startTcpRelay } from "../../src/sg/tcp-relay.ts";
import { startUdpRelay } from "../../src/sg/udp-relay.ts";
import { startRealCm } from "./real-cm.ts";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? (process.argv[i + 1] ?? fallback) : fallback;
}

const [fromText, toText] = arg("udp-source-ports", "30000-31999").split("-");
const sourcePorts = { from: Number(fromText), to: Number(toText) };
const logFile = arg("log", "/dev/null");
const level = arg("log-level", "info") as "info";
const log = createLogger({ level, destination: pino.destination({ dest: logFile, sync: true }) });

const admissions = createAdmissions({
  maxSessions: Number(arg("max-sessions", "5000")),
  pendingTtlMs: 600_000,
});
const limits = createRelayLimits({ log });
const listen = [{ hostname: "127.0.0.1", port: 0 }];
const tcpStart = await startTcpRelay({ listen, admissions, log, limits });
if (!tcpStart.ok) throw new Error(`starting the tcp relay: ${tcpStart.error.cause}`);
const udpStart = await startUdpRelay({ listen, admissions, log, limits, sourcePorts });
if (!udpStart.ok) throw new Error(`starting the udp relay: ${udpStart.error.cause}`);
const tcp = tcpStart.relay;
const udp = udpStart.relay;
let admitted = 0;
let cm: { stop(opts?: { closeActive?: boolean }): void } | undefined;

const reply = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);

/** The resource list a CM returns after authentication (three desktops): a realistic XML build per request. */
const RESOURCE_LIST: GetResourceListResp = {
  op: "get-resource-list-resp",
  result: { resultId: "LIST_SUCCESSFUL", resultStr: "Successfully retrieved the list of resources" },
  resources: Array.from({ length: 3 }, (_, i) => ({
    resourceName: `CAD workstation ${i}`,
    resourceId: `ws-000${i}`,
    resourceType: "DESKTOP",
    sessionType: "VDI",
    resourceState: "UNKNOWN",
    protocols: [{ name: "PCOIP", isDefault: true }],
  })),
};

async function handle(msg: Record<string, unknown>): Promise<Record<string, unknown>> {
  switch (msg.cmd) {
    case "admit": {
      const count = Number(msg.count ?? 1);
      const snis: string[] = [];
      for (let i = 0; i < count; i++) {
        admitted++;
        const sni = `${String(msg.sniPrefix ?? "agent-")}${admitted}.bench.test`;
        const r = admissions.admit({
          sessionLogId: `00000000-0000-4000-8000-${String(admitted).padStart(12, "0")}`,
          agentSessionId: `bench-${admitted}`,
          clientIp: String(msg.clientIp ?? "127.0.0.1"),
          agentHost: String(msg.agentHost ?? "127.0.0.1"),
          agentTcpPort: Number(msg.agentTcpPort),
          agentUdpPort: Number(msg.agentUdpPort ?? msg.agentTcpPort),
          sni,
        });
        if (!r.ok) return { ok: false, error: `admitting session ${admitted}: ${r.reason}` };
        snis.push(sni);
      }
      return { ok: true, snis };
    }
    case "end-all": {
      let ended = 0;
      for (const a of admissions.list()) if (admissions.end(a.sessionLogId)) ended++;
      return { ok: true, ended };
    }
    case "counters": {
      const list = admissions.list();
      return {
        ok: true,
        tcp: tcp.counters,
        udp: udp.counters,
        admissions: { size: list.length, active: list.filter((a) => a.state === "active").length },
      };
    }
    case "cm-start": {
      if (msg.brokerUrl) return startCm(msg);
      const server = startHttp1Server({
        hostname: "127.0.0.1",
        port: 0,
        tls: { cert: await Bun.file(String(msg.cert)).text(), key: await Bun.file(String(msg.key)).text() },
        async fetch(req) {
          const parsed = parseClientRequest(await req.text());
          if (!parsed.ok) return new Response("bad request", { status: 400 });
          return new Response(buildGetResourceListResp(RESOURCE_LIST), {
            headers: { "Content-Type": "text/xml; charset=UTF-8" },
          });
        },
      });
      cm = server;
      return { ok: true, port: server.port };
    }
    case "stop":
      await shutdown(0);
      return { ok: true };
    default:
      return { ok: false, error: `unknown command ${JSON.stringify(msg.cmd)}` };
  }
}

/** The real CM in this event loop, as src/platform/cm-plane.ts builds it for an upstream broker. */
async function startCm(msg: Record<string, unknown>): Promise<Record<string, unknown>> {
  const r = await startRealCm({
    log,
    admissions,
    external: { ip: "127.0.0.1", port: tcp.ports[0] ?? 4172 },
    cert: String(msg.cert),
    key: String(msg.key),
    ca: String(msg.ca),
    brokerUrl: String(msg.brokerUrl),
    agentPort: Number(msg.agentPort ?? 60443),
  });
  if (!r.ok) return r;
  cm = r.cm;
  return { ok: true, port: r.cm.port };
}

let stopping = false;
async function shutdown(code: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  cm?.stop({ closeActive: true });
  await tcp.stop();
  await udp.stop();
  admissions.close();
  // process.exit (not a natural end) so `bun --cpu-prof` writes its profile before the process goes.
  process.exit(code);
}
process.on("SIGTERM", () => void shutdown(0));
process.on("SIGINT", () => void shutdown(0));

reply({ event: "ready", pid: process.pid, tcpPort: tcp.ports[0], udpPort: udp.ports[0] });

for await (const line of console) {
  if (!line.trim()) continue;
  let msg: Record<string, unknown>;
  try {
    msg = JSON.parse(line) as Record<string, unknown>;
  } catch {
    reply({ ok: false, error: `not JSON: ${line.slice(0, 80)}` });
    continue;
  }
  try {
    reply({ id: msg.id, ...(await handle(msg)) });
  } catch (e) {
    reply({ id: msg.id, ok: false, error: e instanceof Error ? e.message : String(e) });
  }
}
await shutdown(0);
