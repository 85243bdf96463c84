/**
 * Figure: CM client connections. BENCH_CM_CONNECTIONS (10,000) TLS connections to the appliance's HTTPS front
 * door (src/net/http1.ts), each making one keep-alive request and then idling, all held open together for
 * BENCH_CM_HOLD_SECONDS (5; under the CM's 60 s idle timeout). Counted: connections still open at the end (both
 * ends agree), and the CM's RSS growth per connection. Peer: nginx terminating TLS (one worker, keepalive 120 s)
 * with the same certificate, holding the same connections. Target: ≥10,000.
 *
 * The certificate is RSA-2048 here (the RSA-3072 one costs 1.5 ms per handshake and only slows the opening, not
 * what a held connection costs). Every process here (this one holds the client ends) runs with its soft
 * descriptor limit raised to the hard one, as the appliance's LimitNOFILE does.
 *
 * Run: npx bun bench/cm-connections.ts
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Socket } from "bun";
import { testPki } from "../test/peers/test-certs.ts";
import { rssBytes, startApplianceRun } from "./lib/appliance.ts";
import { machineNote } from "./lib/machine.ts";
import { freePort, waitBound } from "./lib/net.ts";
import { createProcessSet, type ProcessSet } from "./lib/processes.ts";
import { detail, envNumber, figureLine, fmt, print, verdictLine } from "./lib/report.ts";
import { ensurePeers, workDir } from "./lib/tools.ts";

const N = envNumber("BENCH_CM_CONNECTIONS", 10_000);
const HOLD_S = envNumber("BENCH_CM_HOLD_SECONDS", 5);
/** Descriptors per process: the hard limit (20,000 on the bench machine; raising it needs CAP_SYS_RESOURCE). */
const NOFILE = Number(Bun.spawnSync(["bash", "-c", "ulimit -Hn"]).stdout.toString().trim()) || 1024;

interface Held {
  open: number;
  answered: number;
  failed: number;
  sockets: Set<Socket<{ text: string }>>;
}

/** Opens `n` TLS connections to 127.0.0.1:port in batches, one GET each; resolves when all answered or failed. */
async function openIdle(port: number, ca: string, n: number): Promise<Held> {
  const held: Held = { open: 0, answered: 0, failed: 0, sockets: new Set() };
  const req = `GET /pcoip-broker/xml HTTP/1.1\r\nHost: localhost\r\nConnection: Keep-Alive\r\n\r\n`;
  const BATCH = 250;
  for (let i = 0; i < n; i += BATCH) {
    const batch = Math.min(BATCH, n - i);
    await new Promise<void>((resolve) => {
      let left = batch;
      const settle = () => {
        if (--left === 0) resolve();
      };
      for (let j = 0; j < batch; j++) {
        let settled = false;
        const once = (ok: boolean) => {
          if (settled) return;
          settled = true;
          if (ok) held.answered++;
          else held.failed++;
          settle();
        };
        Bun.connect<{ text: string }>({
          hostname: "127.0.0.1",
          port,
          data: { text: "" },
          tls: { ca, serverName: "localhost" },
          socket: {
            handshake(s, ok) {
              if (!ok) return once(false);
              held.open++;
              held.sockets.add(s);
              s.write(req);
            },
            data(s, d) {
              s.data.text += d.toString("latin1");
              if (s.data.text.includes("\r\n\r\n")) once(true);
            },
            close(s) {
              if (held.sockets.delete(s)) held.open--;
              once(false);
            },
            error() {},
            connectError() {
              once(false);
            },
          },
        }).catch(() => once(false));
      }
    });
  }
  return held;
}

/** Connections ESTABLISHED to `port` on the server side (/proc/net/tcp, local port = port). */
function establishedTo(port: number): number {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  let n = 0;
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = "";
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n")) {
      const c = line.trim().split(/\s+/);
      if (c[1]?.endsWith(hex) && c[3] === "01") n++;
    }
  }
  return n;
}

async function hold(label: string, port: number, pid: () => number, ca: string) {
  const rss0 = pid() ? rssBytes(pid()) : 0;
  const t0 = performance.now();
  const held = await openIdle(port, ca, N);
  const openS = (performance.now() - t0) / 1000;
  await Bun.sleep(HOLD_S * 1000);
  const serverSide = establishedTo(port);
  const rss1 = rssBytes(pid());
  const perConnKb = (rss1 - rss0) / 1024 / Math.max(1, held.open);
  detail(
    `${label}: ${held.open} of ${N} open after ${HOLD_S} s idle (server side ESTABLISHED ${serverSide}), ` +
      `${held.answered} answered, ${held.failed} failed; opened in ${fmt(openS)} s; RSS ${fmt(rss0 / 2 ** 20)} → ` +
      `${fmt(rss1 / 2 ** 20)} MB = ${fmt(perConnKb)} KB per connection`,
  );
  const open = Math.min(held.open, serverSide);
  for (const s of held.sockets) s.terminate();
  return { open, perConnKb };
}

async function startNginxTls(procs: ProcessSet, cert: { certFile: string; keyFile: string }) {
  const dir = workDir("nginx-tls-idle");
  const port = await freePort("tcp");
  const conf = [
    "daemon off;",
    "worker_processes 1;",
    `worker_rlimit_nofile ${NOFILE};`,
    ...(process.getuid?.() === 0 ? ["user nobody nogroup;"] : []),
    `pid ${join(dir, "nginx.pid")};`,
    "error_log stderr error;",
    `events { worker_connections ${N + 1000}; }`,
    "http { access_log off; keepalive_timeout 120s; keepalive_requests 100000;",
    `  server { listen 127.0.0.1:${port} ssl; ssl_certificate ${cert.certFile}; ssl_certificate_key ${cert.keyFile};`,
    "    location / { return 200 ok; } } }",
  ].join("\n");
  const file = join(dir, "nginx.conf");
  writeFileSync(file, `${conf}\n`);
  const child = procs.spawn("nginx-tls", ["nginx", "-e", "stderr", "-p", dir, "-c", file]);
  await waitBound("tcp", port, child.exited, "nginx-tls");
  return { port, child };
}

/** The nginx worker's pid (the master's only child). */
function childOf(pid: number): number {
  const r = Bun.spawnSync(["pgrep", "-P", String(pid)]);
  return Number(r.stdout.toString().trim().split("\n")[0] ?? 0);
}

async function main(): Promise<void> {
  ensurePeers();
  // This process holds the client ends: soft limit up to the hard one (no privilege needed).
  Bun.spawnSync(["prlimit", `--pid=${process.pid}`, `--nofile=${NOFILE}:${NOFILE}`]);
  const procs = createProcessSet();
  try {
    detail(await machineNote());
    const pki = testPki();
    const cert = pki.leaf(["localhost", "127.0.0.1"], { bits: 2048 });
    const cm = await startApplianceRun(procs, {
      name: "cm-connections",
      certFile: cert.certFile,
      keyFile: cert.keyFile,
      caCertFile: pki.ca.certFile,
      wrap: ["prlimit", `--nofile=${NOFILE}:${NOFILE}`, "--"],
    });
    // prlimit execs the appliance: the pid is the appliance's own.
    const ours = await hold("CM (src/net/http1.ts)", cm.cmPort, () => cm.pid, pki.ca.cert);
    await cm.child.stop();

    const nginx = await startNginxTls(procs, cert);
    const worker = childOf(nginx.child.pid);
    const peer = await hold("nginx https, 1 worker", nginx.port, () => worker, pki.ca.cert);
    await nginx.child.stop();

    print(
      figureLine({
        name: "CM idle keep-alive TLS connections held",
        value: ours.open,
        unit: "connections",
        peer: "nginx TLS termination",
        peerValue: peer.open,
      }),
    );
    print(
      figureLine({
        name: "CM memory per idle TLS connection",
        value: ours.perConnKb,
        unit: "KB",
        peer: "nginx TLS termination",
        peerValue: peer.perConnKb,
      }),
    );
    print(verdictLine("≥10,000 connections", ours.open >= 10_000, `${10_000 - ours.open} connections`));
  } finally {
    await procs.stopAll();
  }
}

await main();
