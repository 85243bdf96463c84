// Claim: while the CM's front door is under each of these attacks, a legitimate client's whole login (hello →
// authenticate → get-resource-list → allocate-resource → bye) still completes within a deadline, and the attack
// itself is answered (or closed) as the limits say: bursts of XXE / billion-laughs documents, 1 MiB and endless
// chunked bodies, 10,000 tiny headers, slowloris heads, TLS handshakes stopped half-way, HTTP/0.9 and garbage,
// and 2,000 probe hellos over a few keep-alive connections (no session created for any of them).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { type Http1Server, startHttp1Server } from "../../src/net/http1.ts";
import { type Harness, startHarness } from "../e2e/cm-harness.ts";
import { type RawConnection, rawConnect } from "../peers/raw-http.ts";
import { testPki } from "../peers/test-certs.ts";

let h: Harness;
/** A second front door on the same CM with short timeouts, for the slow-client cases. */
let quick: Http1Server;
const pki = testPki();

beforeAll(async () => {
  h = await startHarness();
  const leaf = pki.leaf(["localhost", "127.0.0.1"]);
  quick = startHttp1Server({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: leaf.cert, key: leaf.key },
    fetch: h.cm.fetch,
    limits: { headerTimeoutMs: 2000, bodyTimeoutMs: 2000, idleTimeoutMs: 2000 },
  });
});
afterAll(async () => {
  quick?.stop({ closeActive: true });
  await h?.close();
});

/** A legitimate client's full login on `port`; resolves with its duration, rejects past `deadlineMs`. */
async function legitLogin(port = h.server.port, deadlineMs = 5000): Promise<number> {
  const t0 = Date.now();
  const c = h.client({ port });
  const run = (async () => {
    await c.hello();
    expect((await c.authenticate("alice", "correct horse")).resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
    expect((await c.getResourceList()).resultId).toBe("LIST_SUCCESSFUL");
    expect((await c.allocate("ws-1")).resultId).toBe("ALLOC_SUCCESSFUL");
    expect((await c.bye()).operation).toBe("bye-resp");
  })();
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      run,
      new Promise((_, rej) => {
        timer = setTimeout(
          () => rej(new Error(`legitimate login not done within ${deadlineMs} ms`)),
          deadlineMs,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
    c.close();
  }
  return Date.now() - t0;
}

/** Opens `n` raw connections (TLS unless said otherwise), a few at a time. */
async function openMany(n: number, opts: { tls?: boolean; port?: number } = {}): Promise<RawConnection[]> {
  const out: RawConnection[] = [];
  for (let i = 0; i < n; i += 25) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(25, n - i) }, () =>
        rawConnect({
          port: opts.port ?? h.server.port,
          ca: pki.ca.cert,
          ...(opts.tls === false ? { tls: false } : {}),
        }),
      ),
    );
    out.push(...batch);
  }
  return out;
}

const sessionsNow = () => h.cm.sessions.size;

describe("CM under hostile input stays responsive", () => {
  test("200 XXE and billion-laughs documents in parallel: each refused with error-resp, nothing expanded", async () => {
    const laughs = `<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "${"a".repeat(100)}">${Array.from({ length: 8 }, (_, i) => `<!ENTITY e${i + 1} "${`&${i === 0 ? "a" : `e${i}`};`.repeat(10)}">`).join("")}]><pcoip-client version="2.1"><hello><client-info><hostname>${"&e8;".repeat(1000)}</hostname></client-info></hello></pcoip-client>`;
    const xxe = `<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd"><!ENTITY % p SYSTEM "http://127.0.0.1:9/evil.dtd">%p;]><pcoip-client version="2.1"><authenticate method="password"><username>&x;</username><password>x</password></authenticate></pcoip-client>`;
    expect(Buffer.byteLength(laughs)).toBeLessThan(65_536);
    const before = sessionsNow();
    const clients = Array.from({ length: 8 }, () => h.client());
    try {
      const attack = Promise.all(
        clients.map(async (c, i) => {
          const ids: string[] = [];
          for (let k = 0; k < 25; k++) {
            const a = await c.post(k % 2 === i % 2 ? laughs : xxe);
            expect(a.status).toBe(200);
            expect(a.body).not.toContain("root:");
            ids.push(a.resultId);
          }
          return ids;
        }),
      );
      const ms = await legitLogin();
      const ids = (await attack).flat();
      expect(ids.length).toBe(200);
      expect(new Set(ids)).toEqual(new Set(["PROTOCOL_ERROR_MALFORMED_REQUEST"]));
      expect(ms).toBeLessThan(5000);
    } finally {
      for (const c of clients) c.close();
    }
    expect(sessionsNow()).toBeLessThanOrEqual(before + 1); // only the legitimate client's
  });

  test("1 MiB bodies and endless chunked bodies: 413 at the 64 KiB limit, the reader never buffers past it", async () => {
    const conns = await openMany(20);
    try {
      const mib = "x".repeat(1 << 20);
      conns.forEach((c, i) => {
        if (i % 2 === 0) {
          c.send(`POST /pcoip-broker/xml HTTP/1.1\r\nHost: cm\r\nContent-Length: ${mib.length}\r\n\r\n`);
          c.send(mib);
        } else {
          c.send("POST /pcoip-broker/xml HTTP/1.1\r\nHost: cm\r\nTransfer-Encoding: chunked\r\n\r\n");
          for (let k = 0; k < 100; k++) c.send(`400\r\n${"y".repeat(1024)}\r\n`); // 100 KiB and still going
        }
      });
      const ms = await legitLogin();
      const answers = await Promise.all(conns.map((c) => c.waitFor((t) => t.includes("\r\n\r\n"), 5000)));
      for (const a of answers) expect(a).toStartWith("HTTP/1.1 413 ");
      expect(await Promise.all(conns.map((c) => c.closed(3000)))).toEqual(conns.map(() => true));
      expect(ms).toBeLessThan(5000);
    } finally {
      for (const c of conns) c.end();
    }
  });

  test("10,000 tiny headers on 20 connections: 431 and closed", async () => {
    const conns = await openMany(20);
    try {
      const head = `POST /pcoip-broker/xml HTTP/1.1\r\nHost: cm\r\n${"a: b\r\n".repeat(10_000)}\r\n`;
      for (const c of conns) c.send(head);
      const ms = await legitLogin();
      for (const c of conns)
        expect(await c.waitFor((t) => t.includes("\r\n\r\n"), 5000)).toStartWith("HTTP/1.1 431 ");
      expect(ms).toBeLessThan(5000);
    } finally {
      for (const c of conns) c.end();
    }
  });

  test("slowloris: 100 heads trickling a byte at a time get 408 at the header timeout and are closed", async () => {
    const conns = await openMany(100, { port: quick.port });
    const started = Date.now();
    const head = "POST /pcoip-broker/xml HTTP/1.1\r\nHost: cm\r\nX-Slow: ";
    let i = 0;
    const drip = setInterval(() => {
      for (const c of conns) c.send(head[i % head.length]!);
      i++;
    }, 250);
    try {
      // Logins during the attack, on the same front door.
      expect(await legitLogin(quick.port)).toBeLessThan(2000);
      const closed = await Promise.all(conns.map((c) => c.closed(6000)));
      expect(closed.every(Boolean)).toBe(true);
      const waited = Date.now() - started;
      expect(waited).toBeGreaterThanOrEqual(1500); // not before the 2 s header timeout…
      expect(waited).toBeLessThan(6000); // …and not long after it, however slowly bytes keep coming
      for (const c of conns) expect(c.received()).toStartWith("HTTP/1.1 408 ");
      expect(quick.connections).toBe(0);
    } finally {
      clearInterval(drip);
      for (const c of conns) c.end();
    }
  });

  /** Opens 300 connections that send the first bytes of a ClientHello and stop, and 100 that send nothing. */
  function stalledHandshakes(): { closed: Promise<void>[]; end(): void } {
    const partial = new Uint8Array([
      0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 1, 2, 3, 4,
    ]);
    const closed: Promise<void>[] = [];
    const sockets: Promise<{ end(): void } | undefined>[] = [];
    for (let k = 0; k < 400; k++) {
      const done = Promise.withResolvers<void>();
      closed.push(done.promise);
      sockets.push(
        Bun.connect({
          hostname: "127.0.0.1",
          port: quick.port,
          socket: {
            open: (sock) => {
              if (k < 300) sock.write(partial);
            },
            data() {},
            close: () => done.resolve(),
            error: () => done.resolve(),
          },
        }).catch(() => {
          done.resolve();
          return undefined;
        }),
      );
    }
    return {
      closed,
      end: () => {
        for (const s of sockets) void s.then((x) => x?.end());
      },
    };
  }

  test("300 TLS handshakes stopped half-way and 100 silent TCP connections: a legitimate login still goes through", async () => {
    const stalled = stalledHandshakes();
    try {
      await Bun.sleep(200);
      expect(await legitLogin(quick.port)).toBeLessThan(3000);
    } finally {
      stalled.end();
    }
  });

  // Half-finished handshakes hold a descriptor until the header timeout cuts them (http1.ts closes a connection
  // whose handshake never completed with terminate(): an end() would wait for the handshake forever).
  test("…and every one of them is closed by the header timeout", async () => {
    const stalled = stalledHandshakes();
    try {
      const all = await Promise.race([
        Promise.all(stalled.closed).then(() => true),
        Bun.sleep(6000).then(() => false),
      ]);
      expect(all).toBe(true);
    } finally {
      stalled.end();
    }
  });

  test("HTTP/0.9, HTTP/2 prefaces and random garbage: 400/505 at once, or 408 at the header timeout", async () => {
    const payloads = [
      "GET /\r\n",
      "GET /pcoip-broker/xml\n\n",
      "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
      "GET / HTTP/3.0\r\n\r\n",
      "\u0000\u0001\u0002\u0003\r\n\r\n",
      "SSH-2.0-OpenSSH_9.6\r\n",
      "POST /pcoip-broker/xml HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
      "POST /pcoip-broker/xml HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
      "GET http://[::1/ HTTP/1.1\r\n\r\n",
    ];
    const conns = await openMany(payloads.length * 5, { port: quick.port });
    try {
      conns.forEach((c, i) => {
        c.send(payloads[i % payloads.length]!);
        const junk = crypto.getRandomValues(new Uint8Array(64));
        if (i % 3 === 0) c.send(junk);
      });
      const ms = await legitLogin(quick.port);
      const ends = await Promise.all(conns.map((c) => c.closed(5000)));
      expect(ends.every(Boolean)).toBe(true);
      for (const c of conns) {
        const t = c.received();
        if (t !== "") expect(t).toMatch(/^HTTP\/1\.1 (400|408|413|414|431|501|505) /);
      }
      expect(ms).toBeLessThan(5000);
    } finally {
      for (const c of conns) c.end();
    }
  });

  test("2,000 probe hellos over 4 keep-alive connections: all answered, no session kept, logins unaffected", async () => {
    const before = sessionsNow();
    const probesBefore = h.cm.counters.probes;
    const clients = Array.from({ length: 4 }, () => h.client());
    let logins: number[] = [];
    try {
      const attack = Promise.all(
        clients.map(async (c) => {
          let ok = 0;
          for (let k = 0; k < 500; k++) {
            const a = await c.probe();
            if (a.status === 200 && a.operation === "hello-resp") ok++;
          }
          return ok;
        }),
      );
      logins = [];
      for (let k = 0; k < 3; k++) logins.push(await legitLogin());
      const answered = (await attack).reduce((a, b) => a + b, 0);
      expect(answered).toBe(2000);
      expect(clients.every((c) => c.connections === 1)).toBe(true); // kept alive throughout
      expect(clients.every((c) => c.cookie === undefined)).toBe(true);
    } finally {
      for (const c of clients) c.close();
    }
    expect(h.cm.counters.probes - probesBefore).toBe(2000);
    expect(sessionsNow()).toBeLessThanOrEqual(before + 3); // the three legitimate logins at most
    expect(Math.max(...logins)).toBeLessThan(5000);
  }, 30_000);
});
