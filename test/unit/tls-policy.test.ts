/**
 * TLS policy of SPEC §5 on real handshakes over loopback: only TLS 1.2 and 1.3, the vendor's TLS 1.2 suites in the
 * server's order (narrowable), the chain served leaf first, ECDSA certificates served through the ECDSA twins; a
 * configured suite the library (BoringSSL) lacks is refused up front, and the check agrees with the library.
 * Handshakes are driven by `openssl s_client` (an independent TLS stack) and by Bun's fetch.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createSecureContext } from "node:tls";
import type { TCPSocketListener } from "bun";
import { loadCertificatePair } from "../../src/tls/certs.ts";
import {
  clientTls,
  librarySuites,
  SG_SUITES_NOTE,
  serverTls,
  suitesForKey,
  tls13Note,
  VENDOR_TLS12_SUITES,
  validateCipherList,
} from "../../src/tls/policy.ts";
import { openssl, testPki } from "../peers/test-certs.ts";

const dir = mkdtempSync(join(tmpdir(), "pcoip-cmsg-tls-policy-"));
const listeners: TCPSocketListener<unknown>[] = [];
const servers: { stop(force?: boolean): unknown }[] = [];
afterAll(() => {
  for (const l of listeners) l.stop(true);
  for (const s of servers) s.stop(true);
  rmSync(dir, { recursive: true, force: true });
});

/** A TLS listener on 127.0.0.1:0 with the given options; the handshake is all these tests need. */
function listen(tls: ReturnType<typeof serverTls>): number {
  const l = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    tls,
    socket: { data() {}, error() {} },
  });
  listeners.push(l);
  return l.port;
}

interface Handshake {
  readonly ok: boolean;
  readonly protocol?: string;
  readonly cipher?: string;
  /** Subjects of the certificates the server sent, in order. */
  readonly chain: string[];
  readonly verify?: string;
}

/** One `openssl s_client` handshake (async: the server lives in this process's event loop). */
async function sClient(port: number, args: readonly string[]): Promise<Handshake> {
  const proc = Bun.spawn(["openssl", "s_client", "-connect", `127.0.0.1:${port}`, "-showcerts", ...args], {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
  });
  const timer = setTimeout(() => proc.kill(), 10_000);
  try {
    proc.stdin.write("Q\n");
    proc.stdin.end();
    const out = await new Response(proc.stdout).text();
    await proc.exited;
    const m = /New, (\S+), Cipher is (\S+)/.exec(out);
    // "New, X" names the cipher's version for TLS 1.2 suites, the protocol for TLS 1.3.
    const protocol = /^\s*Protocol\s*:\s*(\S+)/m.exec(out)?.[1] ?? m?.[1];
    const chain = [...out.matchAll(/^\s*\d+ s:(.*)$/gm)].map((x) => x[1]!.trim());
    const verify = /Verify return code: (.*)$/m.exec(out)?.[1];
    const ok = m !== null && m[2] !== "(NONE)";
    return { ok, ...(ok ? { protocol, cipher: m![2] } : {}), chain, ...(verify ? { verify } : {}) };
  } finally {
    clearTimeout(timer);
  }
}

const pki = testPki();
const rsaLeaf = pki.leaf(["localhost", "127.0.0.1"]);
const rsaPair = (() => {
  const r = loadCertificatePair({
    certFile: rsaLeaf.certFile,
    keyFile: rsaLeaf.keyFile,
    caFile: pki.ca.certFile,
  });
  if (!r.ok) throw new Error(r.error.cause);
  return r.pair;
})();

function rsaServer(suites: readonly string[] = VENDOR_TLS12_SUITES): number {
  return listen(serverTls({ chainPem: rsaPair.chainPem, key: rsaPair.key, suites }));
}

describe("validateCipherList", () => {
  test("the vendor's list passes, order kept", () => {
    expect(validateCipherList(VENDOR_TLS12_SUITES)).toEqual({
      ok: true,
      suites: [...VENDOR_TLS12_SUITES],
      warnings: [],
    });
  });

  test("narrowing is allowed", () => {
    expect(validateCipherList(["aes128-gcm-sha256"])).toEqual({
      ok: true,
      suites: ["AES128-GCM-SHA256"],
      warnings: [],
    });
  });

  test("a suite the library lacks is refused by name (and the library really lacks it)", () => {
    const r = validateCipherList([...VENDOR_TLS12_SUITES, "DHE-RSA-AES256-GCM-SHA384"]);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.error.cause).toContain("DHE-RSA-AES256-GCM-SHA384");
      expect(r.error.cause).toMatch(/BoringSSL.*lacks this suite/);
      expect(r.error.fix).toContain("ECDHE-RSA-AES256-GCM-SHA384");
    }
    expect(() => createSecureContext({ ciphers: "DHE-RSA-AES256-GCM-SHA384" })).toThrow();
  });

  test("the check's list agrees with the library: every suite it knows is accepted by a TLS context", () => {
    const known = librarySuites();
    expect(known).toEqual(expect.arrayContaining([...VENDOR_TLS12_SUITES]));
    for (const s of known) expect(() => createSecureContext({ ciphers: s })).not.toThrow();
  });

  test("cipher-string syntax, TLS 1.3 names, PSK, 3DES, duplicates and an empty list are refused", () => {
    const cause = (list: string[]) => {
      const r = validateCipherList(list);
      return r.ok ? "accepted" : r.error.cause;
    };
    expect(cause(["HIGH:!aNULL"])).toMatch(/not a suite name/);
    expect(cause(["ECDHE-RSA-AES256-GCM-SHA384:AES128-GCM-SHA256"])).toMatch(/not a suite name/);
    expect(cause(["TLS_AES_128_GCM_SHA256"])).toMatch(/TLS 1\.3 suite.*cannot narrow or reorder/);
    expect(cause(["PSK-AES128-CBC-SHA"])).toMatch(/pre-shared keys/);
    expect(cause(["DES-CBC3-SHA"])).toMatch(/3DES/);
    expect(cause(["AES128-GCM-SHA256", "aes128-gcm-sha256"])).toMatch(/listed twice/);
    expect(cause([])).toMatch(/empty/);
  });

  test("CBC suites are accepted with a warning", () => {
    const r = validateCipherList(["ECDHE-RSA-AES128-SHA"]);
    expect(r.ok && r.warnings).toEqual([
      'TLS 1.2 suite "ECDHE-RSA-AES128-SHA" uses CBC mode; the vendor\'s list has only AES-GCM suites',
    ]);
  });

  test("the sentences config check and diagnose print", () => {
    expect(tls13Note()).toMatch(
      /^TLS 1\.3 suites are the TLS library's own \(TLS_AES_128_GCM_SHA256, .*BoringSSL/,
    );
    expect(SG_SUITES_NOTE).toMatch(/no effect here: port 4172 carries the agent's own TLS end to end/);
  });
});

describe("suitesForKey", () => {
  test("RSA: the list as configured, ECDSA suites skipped", () => {
    const r = suitesForKey([...VENDOR_TLS12_SUITES, "ECDHE-ECDSA-AES128-GCM-SHA256"], "rsa");
    expect(r.ok && r.suites).toEqual([...VENDOR_TLS12_SUITES]);
  });

  test("EC: the ECDHE-RSA suites become their ECDSA twins, static-RSA ones are dropped", () => {
    const r = suitesForKey(VENDOR_TLS12_SUITES, "ec");
    expect(r.ok && r.suites).toEqual(["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256"]);
    const none = suitesForKey(["AES128-GCM-SHA256"], "ec");
    expect(none.ok).toBe(false);
    if (!none.ok) expect(none.error.cause).toMatch(/none of AES128-GCM-SHA256 can be served with an EC/);
  });
});

describe("a server with serverTls()", () => {
  test("refuses TLS 1.0 and 1.1, speaks 1.2 and 1.3", async () => {
    const port = rsaServer();
    const legacy = ["-cipher", "DEFAULT@SECLEVEL=0"];
    expect((await sClient(port, ["-tls1", ...legacy])).ok).toBe(false);
    expect((await sClient(port, ["-tls1_1", ...legacy])).ok).toBe(false);
    expect(await sClient(port, ["-tls1_2"])).toMatchObject({ ok: true, protocol: "TLSv1.2" });
    expect(await sClient(port, ["-tls1_3"])).toMatchObject({ ok: true, protocol: "TLSv1.3" });
  });

  test("TLS 1.2: only the configured suites, chosen in the server's order", async () => {
    const port = rsaServer();
    expect((await sClient(port, ["-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"])).ok).toBe(false);
    expect((await sClient(port, ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"])).ok).toBe(false);
    // The client prefers the vendor's last suite; the server's first wins.
    const pick = await sClient(port, ["-tls1_2", "-cipher", "AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"]);
    expect(pick.cipher).toBe("ECDHE-RSA-AES256-GCM-SHA384");
    // Each vendor suite on its own is served.
    for (const s of VENDOR_TLS12_SUITES) {
      expect((await sClient(port, ["-tls1_2", "-cipher", s])).cipher).toBe(s);
    }
  });

  test("a narrowed list is what the server offers", async () => {
    const port = rsaServer(["AES128-GCM-SHA256"]);
    expect((await sClient(port, ["-tls1_2"])).cipher).toBe("AES128-GCM-SHA256");
    expect((await sClient(port, ["-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"])).ok).toBe(false);
  });

  test("serves the leaf, then --ca-cert, and the chain verifies against the CA", async () => {
    const port = rsaServer();
    const h = await sClient(port, ["-tls1_2", "-CAfile", pki.ca.certFile, "-verify_return_error"]);
    expect(h.chain).toEqual(["CN = localhost", "CN = pcoip-cmsg test CA"]);
    expect(h.verify).toBe("0 (ok)");
  });

  test("an ECDSA certificate is served over TLS 1.2 through the ECDSA twins", async () => {
    const certFile = join(dir, "ec.pem");
    const keyFile = join(dir, "ec.key");
    openssl(
      ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-sha256"].concat([
        "-days",
        "30",
        "-subj",
        "/CN=localhost",
        "-keyout",
        keyFile,
        "-out",
        certFile,
      ]),
    );
    const pair = loadCertificatePair({ certFile, keyFile });
    if (!pair.ok) throw new Error(pair.error.cause);
    const suites = suitesForKey(VENDOR_TLS12_SUITES, pair.pair.keyType);
    if (!suites.ok) throw new Error(suites.error.cause);
    const port = listen(
      serverTls({ chainPem: pair.pair.chainPem, key: pair.pair.key, suites: suites.suites }),
    );
    expect((await sClient(port, ["-tls1_2"])).cipher).toBe("ECDHE-ECDSA-AES256-GCM-SHA384");
    // Without the swap, a TLS 1.2 client could not connect at all.
    const unswapped = listen(
      serverTls({ chainPem: pair.pair.chainPem, key: pair.pair.key, suites: VENDOR_TLS12_SUITES }),
    );
    expect((await sClient(unswapped, ["-tls1_2"])).ok).toBe(false);
  });
});

describe("a client with clientTls()", () => {
  function https(tls: Record<string, unknown>): string {
    const s = Bun.serve({ hostname: "127.0.0.1", port: 0, tls, fetch: () => new Response("ok") });
    servers.push(s);
    return `https://localhost:${s.port}/`;
  }
  const failure = (p: Promise<Response>) =>
    p.then(
      (r) => `answered ${r.status}`,
      (e: Error) => e.message,
    );

  test("verifies against --ca-cert when checking is on", async () => {
    const url = https({ cert: rsaPair.chainPem, key: rsaPair.key });
    const ok = await fetch(url, { tls: clientTls({ ca: rsaPair.ca, verify: true }) });
    expect(await ok.text()).toBe("ok");
    // The built-in roots do not know the test CA.
    expect(await failure(fetch(url, { tls: clientTls({ verify: true }) }))).not.toBe("answered 200");
    // Checking off (agentCertCheck = false): accepted anyway.
    expect((await fetch(url, { tls: clientTls({ verify: false }) })).status).toBe(200);
  });

  test("refuses a server that offers none of the suites", async () => {
    const url = https({
      cert: rsaPair.chainPem,
      key: rsaPair.key,
      ciphers: "ECDHE-RSA-CHACHA20-POLY1305",
      maxVersion: 0x0303,
    });
    const tls = clientTls({ ca: rsaPair.ca, verify: true });
    expect(await failure(fetch(url, { tls }))).not.toBe("answered 200");
    // The same server is fine for a client offering that suite: the refusal is the policy's.
    const plain = await fetch(url, { tls: { ca: rsaPair.ca } });
    expect(plain.status).toBe(200);
  });

  test("refuses a server stuck at TLS 1.1", async () => {
    const url = https({ cert: rsaPair.chainPem, key: rsaPair.key, minVersion: 0x0301, maxVersion: 0x0302 });
    expect(await failure(fetch(url, { tls: clientTls({ ca: rsaPair.ca, verify: true }) }))).toMatch(
      /handshake/,
    );
    // The same server answers a client that allows TLS 1.1: the refusal is the policy's.
    const legacy = await fetch(url, {
      tls: { ca: rsaPair.ca, minVersion: 0x0301 } as Record<string, unknown>,
    });
    expect(legacy.status).toBe(200);
  });

  test("offers the ECDSA twins, so a broker with an EC certificate is reachable over TLS 1.2", () => {
    expect(clientTls({ verify: true }).ciphers.split(":")).toEqual([
      "ECDHE-RSA-AES256-GCM-SHA384",
      "ECDHE-ECDSA-AES256-GCM-SHA384",
      "ECDHE-RSA-AES128-GCM-SHA256",
      "ECDHE-ECDSA-AES128-GCM-SHA256",
      "AES256-GCM-SHA384",
      "AES128-GCM-SHA256",
    ]);
  });
});
