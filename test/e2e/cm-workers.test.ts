// Claim: with cm.workers = 2 the CM's HTTPS listeners run on two worker threads while every piece of CM state
// stays in the main thread (platform/front-door-workers.ts): logins whose five requests each arrive on a new TLS
// connection — so on either worker — sign in and allocate; the per-IP connection cap holds across both workers
// (cm.maxConnectionsPerIp = 3: eight connections at once, exactly three stay); a reload's new certificate is
// served by every worker; once stopped, nothing answers on the CM's port and the worker threads are gone; and a
// worker thread that ends unasked is logged, /readyz's cm-workers check fails until it is started again on the
// same port, and then it serves again.
import { describe, expect, test } from "bun:test";
import { X509Certificate } from "node:crypto";
import { readdirSync } from "node:fs";
import { connect as tlsConnect } from "node:tls";
import { loadConfig } from "../../src/config/load.ts";
import { createConnectionGuard } from "../../src/net/connection-guard.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { FrontDoorWorkers } from "../../src/platform/front-door-workers.ts";
import { startFakeAgent } from "../peers/fake-agent.ts";
import { type InProcessAppliance, startInProcessAppliance } from "../peers/in-process-appliance.ts";
import { tcpAccepts } from "../peers/raw-http.ts";
import { testPki } from "../peers/test-certs.ts";

const WORKERS = { PCOIP_CMSG_CM_WORKERS: "2" };

const hostPort = (addr: string) => {
  const i = addr.lastIndexOf(":");
  return { host: addr.slice(0, i), port: Number(addr.slice(i + 1)) };
};

/** `pcoip_cm_worker_connections_total` by worker index. */
function acceptedByWorker(node: InProcessAppliance): number[] {
  const out: number[] = [];
  for (const m of node.appliance.metrics
    .render()
    .matchAll(/^pcoip_cm_worker_connections_total\{worker="(\d+)"\} (\d+)$/gm))
    out[Number(m[1])] = Number(m[2]);
  return out;
}

/** A TLS connection to the CM, resolved once the handshake is done; `closed` resolves when the server ends it. */
function openTls(node: InProcessAppliance) {
  const { host, port } = hostPort(node.appliance.bound.cm[0]!);
  return new Promise<{ fingerprint: string; closed: Promise<void>; end(): void }>((resolve, reject) => {
    const s = tlsConnect({ host, port, ca: testPki().ca.cert, servername: "localhost" });
    const closed = new Promise<void>((r) => s.once("close", () => r()));
    s.once("secureConnect", () =>
      resolve({ fingerprint: s.getPeerCertificate().fingerprint256, closed, end: () => s.destroy() }),
    );
    s.once("error", reject);
    s.on("error", () => {});
  });
}

/** Whether `p` settles within `ms`. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  return Promise.race([p.then(() => true), Bun.sleep(ms).then(() => false)]);
}

describe("CM front door on two worker threads", () => {
  test("logins with a new TLS connection per request (either worker) sign in and allocate", async () => {
    const agent = await startFakeAgent();
    const node = await startInProcessAppliance({ agent, env: WORKERS });
    try {
      expect(node.logs.lines().some((l) => l.includes('"workers":2'))).toBe(true);
      for (let i = 0; i < 4; i++) {
        const c = node.client({ keepAlive: false });
        try {
          expect((await c.hello()).operation).toBe("hello-resp");
          expect((await c.authenticate("alice", "correct horse")).resultId).toBe(
            "AUTH_SUCCESSFUL_AND_COMPLETE",
          );
          expect((await c.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
          const alloc = await c.allocate("desktop-1");
          expect(alloc.resultId).toBe("ALLOC_SUCCESSFUL");
          // The cookie line is spelled exactly as real clients need it, through the worker.
          expect(alloc.head).not.toContain("set-cookie:");
        } finally {
          c.close();
        }
      }
      // 16 connections: both workers served some (else this test would not show the state is shared).
      const per = acceptedByWorker(node);
      expect(per.length).toBe(2);
      expect(Math.min(...per)).toBeGreaterThan(0);
      expect(per[0]! + per[1]!).toBeGreaterThanOrEqual(16);
    } finally {
      await node.stop();
      await agent.close();
    }
  }, 30_000);

  test("the per-IP connection cap counts both workers' connections: 8 at once, cap 3, exactly 3 stay", async () => {
    const node = await startInProcessAppliance({
      env: { ...WORKERS, PCOIP_CMSG_CM_MAXCONNECTIONSPERIP: "3" },
    });
    const conns: Awaited<ReturnType<typeof openTls>>[] = [];
    try {
      const opened = await Promise.allSettled(Array.from({ length: 8 }, () => openTls(node)));
      for (const o of opened) if (o.status === "fulfilled") conns.push(o.value);
      // A refused connection is cut once the main thread's verdict arrives (the handshake may finish first).
      await Bun.sleep(500);
      const stayed = [];
      for (const c of conns) if (!(await settlesWithin(c.closed, 0))) stayed.push(c);
      expect(stayed.length).toBe(3);
      expect(node.appliance.metrics.render()).toMatch(
        /^pcoip_cm_connection_refusals_total\{reason="per_ip"\} 5$/m,
      );
      const per = acceptedByWorker(node);
      expect(per.length).toBe(2);
      // Closing one gives its slot back: a new connection stays.
      stayed[0]!.end();
      await stayed[0]!.closed;
      await Bun.sleep(100);
      const again = await openTls(node);
      conns.push(again);
      expect(await settlesWithin(again.closed, 500)).toBe(false);
    } finally {
      for (const c of conns) c.end();
      await node.stop();
    }
  }, 30_000);

  test("a reload's new certificate is served by every worker", async () => {
    // The same UDP source ports at start and on reload (a change there needs a restart).
    const from = 21_000 + Math.floor(Math.random() * 100) * 100;
    const sgUdpSourcePorts = `${from}-${from + 99}`;
    const node = await startInProcessAppliance({ env: WORKERS, sgUdpSourcePorts });
    try {
      const oldLeaf = testPki().leaf(["localhost", "127.0.0.1", "::1", "cm.test"]);
      const newLeaf = testPki().leaf(["localhost", "127.0.0.1", "::1", "cm.test", "rotated.cm.test"]);
      const oldFp = new X509Certificate(oldLeaf.cert).fingerprint256;
      const newFp = new X509Certificate(newLeaf.cert).fingerprint256;
      expect(newFp).not.toBe(oldFp);
      const before = acceptedByWorker(node);
      const file = `${node.dir}/pcoip-cmsg.toml`;
      const text = (await Bun.file(file).text())
        .replace(`cert = "${oldLeaf.certFile}"`, `cert = "${newLeaf.certFile}"`)
        .replace(`key = "${oldLeaf.keyFile}"`, `key = "${newLeaf.keyFile}"`);
      await Bun.write(file, text);
      const env = { ...WORKERS, PCOIP_CMSG_SG_UDPSOURCEPORTS: sgUdpSourcePorts };
      const next = loadConfig({ file, env, flags: [], strict: false });
      if (!next.ok) throw new Error(JSON.stringify(next));
      expect(await node.appliance.reload(next.config)).toMatchObject({ ok: true });
      const seen: string[] = [];
      for (let i = 0; i < 16; i++) {
        const c = await openTls(node);
        seen.push(c.fingerprint);
        c.end();
      }
      expect(seen.filter((fp) => fp !== newFp)).toEqual([]);
      const after = acceptedByWorker(node);
      // Both workers took some of the 16 (a worker left on the old certificate would have shown it).
      expect(after[0]! - (before[0] ?? 0)).toBeGreaterThan(0);
      expect(after[1]! - (before[1] ?? 0)).toBeGreaterThan(0);
    } finally {
      await node.stop();
    }
  }, 30_000);

  test("stop: nothing listens on the CM's port afterwards, and the worker threads have ended", async () => {
    const threads = () => readdirSync("/proc/self/task").length;
    const node = await startInProcessAppliance({ env: WORKERS });
    const { host, port } = hostPort(node.appliance.bound.cm[0]!);
    const during = threads();
    (await openTls(node)).end();
    await node.stop();
    let answered = 0;
    for (let i = 0; i < 10; i++) {
      const ok = await tcpAccepts(host, port);
      if (ok) answered++;
    }
    expect(answered).toBe(0);
    // Two worker threads fewer than while it ran (Bun's own thread pool may differ by a thread or so).
    const deadline = Date.now() + 5000;
    while (threads() > during - 2 && Date.now() < deadline) await Bun.sleep(50);
    expect(threads()).toBeLessThanOrEqual(during - 2);
  }, 30_000);

  test("a worker that ends unasked is logged, unready until started again on the same port, then serves", async () => {
    const logs = memoryDestination();
    const leaf = testPki().leaf(["localhost", "127.0.0.1"]);
    const workers = new FrontDoorWorkers({
      count: 2,
      log: createLogger({ level: "info", destination: logs }),
      fetch: () => new Response("ok\n"),
      guard: createConnectionGuard({ maxPerIp: () => 1000, exempt: () => false }),
      descriptors: { tryTake: () => true, give: () => {} },
      maxConnections: () => 1000,
      onProxyRefused: () => {},
    });
    try {
      await workers.start();
      const l = await workers.open({
        key: "127.0.0.1:0",
        hostname: "127.0.0.1",
        port: 0,
        tls: { cert: leaf.cert, key: leaf.key },
        limits: {},
        proxyProtocolFrom: [],
      });
      // One request on a new TLS connection (the kernel picks the worker per connection).
      const get = () =>
        new Promise<string>((resolve, reject) => {
          const sock = tlsConnect({
            host: "127.0.0.1",
            port: l.port,
            ca: testPki().ca.cert,
            servername: "localhost",
          });
          let text = "";
          sock.on("secureConnect", () =>
            sock.write("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
          );
          sock.on("data", (d: Buffer) => {
            text += d.toString("latin1");
          });
          sock.on("close", () =>
            resolve(`${text.slice(9, 12)} ${text.includes("\r\n\r\n3\r\nok\n") ? "ok" : text}`),
          );
          sock.on("error", reject);
        });
      expect(await get()).toBe("200 ok");
      expect(workers.readiness().ok).toBe(true);
      const before = workers.acceptedByWorker()["0"] ?? 0;
      workers.threads[0]!.terminate();
      const deadline = Date.now() + 2000;
      while (workers.readiness().ok && Date.now() < deadline) await Bun.sleep(10);
      expect(workers.readiness()).toMatchObject({ name: "cm-workers", ok: false });
      expect(logs.text()).toContain("front-door worker exited");
      // Meanwhile the other worker serves alone.
      expect(await get()).toBe("200 ok");
      const back = Date.now() + 10_000;
      while (!logs.text().includes("front-door worker started again") && Date.now() < back)
        await Bun.sleep(20);
      expect(workers.readiness().ok).toBe(true);
      // The new thread listens on the same port: over 16 new connections, it takes some.
      for (let i = 0; i < 16; i++) expect(await get()).toBe("200 ok");
      expect(workers.acceptedByWorker()["0"]!).toBeGreaterThan(before);
    } finally {
      await workers.stop();
    }
  }, 30_000);
});
