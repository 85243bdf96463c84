/**
 * The relays the SG is compared with, started in the foreground on loopback from generated configs and stopped
 * with the rest of the bench's processes: nginx `stream` (TCP and UDP), haproxy `mode tcp`, socat. Each peer gets
 * one worker / one thread, like the SG's single event loop, so the figures compare relays, not core counts.
 */
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePort, LOOPBACK, waitBound } from "./net.ts";
import type { Child, ProcessSet } from "./processes.ts";
import { workDir } from "./tools.ts";

export interface Peer {
  readonly name: string;
  readonly port: number;
  readonly pid: number;
  readonly child: Child;
}

const NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so";

export interface NginxStreamOptions {
  readonly name: string;
  readonly proto: "tcp" | "udp";
  readonly upstreamPort: number;
  /** Extra directives inside `server { }`, e.g. "proxy_buffer_size 128k;" or "proxy_responses 1;". */
  readonly directives?: readonly string[];
  /** worker_connections (default 4096); also sets worker_rlimit_nofile to twice it. */
  readonly workerConnections?: number;
}

/** nginx with one worker and a `stream { server { … } }` relaying to 127.0.0.1:upstreamPort. */
export async function startNginxStream(procs: ProcessSet, o: NginxStreamOptions): Promise<Peer> {
  const dir = workDir(`nginx-${o.name.replace(/\W+/g, "-")}`);
  const port = await freePort(o.proto);
  const conf = [
    "daemon off;",
    "master_process on;",
    "worker_processes 1;",
    ...(process.getuid?.() === 0 ? ["user nobody nogroup;"] : []),
    `pid ${join(dir, "nginx.pid")};`,
    "error_log stderr warn;",
    ...(existsSync(NGINX_STREAM_MODULE) ? [`load_module ${NGINX_STREAM_MODULE};`] : []),
    ...(o.workerConnections ? [`worker_rlimit_nofile ${o.workerConnections * 2};`] : []),
    `events { worker_connections ${o.workerConnections ?? 4096}; }`,
    "stream {",
    "  server {",
    `    listen ${LOOPBACK}:${port}${o.proto === "udp" ? " udp" : ""};`,
    `    proxy_pass ${LOOPBACK}:${o.upstreamPort};`,
    ...(o.directives ?? []).map((d) => `    ${d}`),
    "  }",
    "}",
  ].join("\n");
  const file = join(dir, "nginx.conf");
  writeFileSync(file, `${conf}\n`);
  const child = procs.spawn(o.name, ["nginx", "-e", "stderr", "-p", dir, "-c", file]);
  await waitBound(o.proto, port, child.exited, o.name);
  return { name: o.name, port, pid: child.pid, child };
}

export interface HaproxyOptions {
  readonly name: string;
  readonly upstreamPort: number;
  /** tune.bufsize; omitted = haproxy's default (16384). */
  readonly bufsize?: number;
}

/** haproxy `mode tcp`, one thread, foreground. */
export async function startHaproxyTcp(procs: ProcessSet, o: HaproxyOptions): Promise<Peer> {
  const dir = workDir(`haproxy-${o.name.replace(/\W+/g, "-")}`);
  const port = await freePort("tcp");
  const conf = [
    "global",
    "  nbthread 1",
    "  maxconn 1000",
    ...(o.bufsize ? [`  tune.bufsize ${o.bufsize}`] : []),
    "defaults",
    "  mode tcp",
    "  timeout connect 5s",
    "  timeout client 120s",
    "  timeout server 120s",
    "frontend fe",
    `  bind ${LOOPBACK}:${port}`,
    "  default_backend be",
    "backend be",
    `  server agent ${LOOPBACK}:${o.upstreamPort}`,
  ].join("\n");
  const file = join(dir, "haproxy.cfg");
  writeFileSync(file, `${conf}\n`);
  const child = procs.spawn(o.name, ["haproxy", "-db", "-f", file]);
  await waitBound("tcp", port, child.exited, o.name);
  return { name: o.name, port, pid: child.pid, child };
}

/** socat with its defaults (8 KiB buffer), one forked process per connection (reaped: counted by cpu.ts). */
export async function startSocat(procs: ProcessSet, name: string, upstreamPort: number): Promise<Peer> {
  const port = await freePort("tcp");
  const child = procs.spawn(name, [
    "socat",
    `TCP-LISTEN:${port},bind=${LOOPBACK},reuseaddr,fork`,
    `TCP:${LOOPBACK}:${upstreamPort}`,
  ]);
  await waitBound("tcp", port, child.exited, name);
  return { name, port, pid: child.pid, child };
}
