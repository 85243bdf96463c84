// Claim: the directory authenticator keeps its connection for the next login (one TCP connection for many logins)
// only where every login starts with a bind of its own, so no login ever runs under the identity the previous one
// left: a wrong password after a good login is still refused, a search after a login still runs as the service
// account; search-then-bind with anonymous search opens a connection per login; a kept connection the server
// dropped is replaced without failing the login; and closing the authenticator closes what it kept.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect, createServer, type Server, type Socket } from "node:net";
import type { Authenticator } from "../../src/cm/auth/authenticator.ts";
import { createLdapAuthenticator, type LdapOptions } from "../../src/cm/auth/ldap.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { FIXTURE, PEOPLE_DN, type SlapdPeer, slapdMissing, startSlapd } from "../peers/slapd.ts";

const missing = slapdMissing();
const log = createLogger({ level: "debug", destination: memoryDestination() });
let slapd: SlapdPeer;

/** A TCP forwarder in front of slapd that counts connections and can cut every open one. */
interface Forwarder {
  readonly url: string;
  readonly accepted: () => number;
  readonly open: () => number;
  cutAll(): void;
  close(): Promise<void>;
}

async function forwarder(target: string): Promise<Forwarder> {
  const { hostname, port } = new URL(target);
  let accepted = 0;
  const pairs = new Set<[Socket, Socket]>();
  const server: Server = createServer((client) => {
    accepted++;
    const upstream = connect(Number(port), hostname);
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const address = server.address();
  const p = typeof address === "object" && address ? address.port : 0;
  return {
    url: `ldap://127.0.0.1:${p}`,
    accepted: () => accepted,
    open: () => pairs.size,
    cutAll() {
      for (const [a, b] of [...pairs]) {
        a.destroy();
        b.destroy();
      }
    },
    close: () =>
      new Promise<void>((r) => {
        for (const [a, b] of [...pairs]) {
          a.destroy();
          b.destroy();
        }
        server.close(() => r());
      }),
  };
}

const cleanups: (() => Promise<void> | void)[] = [];
beforeAll(async () => {
  if (!missing) slapd = await startSlapd();
});
afterAll(async () => {
  try {
    for (const c of cleanups.reverse()) await c();
  } finally {
    await slapd?.stop();
  }
});

/** Plain ldap:// through the forwarder (StartTLS would work the same; plain keeps the counting simple). */
async function setUp(extra: Partial<LdapOptions>): Promise<{ fwd: Forwarder; auth: Authenticator }> {
  const fwd = await forwarder(slapd.url);
  const auth = createLdapAuthenticator({
    urls: [fwd.url],
    startTls: false,
    allowInsecure: true,
    timeoutMs: 2000,
    ...extra,
  });
  cleanups.push(
    () => fwd.close(),
    () => auth.close?.(),
  );
  return { fwd, auth };
}

const TEMPLATE = { bindDn: `uid={user},${PEOPLE_DN}` };
const creds = (username: string, password: string) => ({ username, password, domain: "" });
const alice = () => creds("alice", FIXTURE.alice.password);

describe.skipIf(missing !== undefined)("kept-alive directory connections", () => {
  test("template bind: ten logins, one connection", async () => {
    const { fwd, auth } = await setUp(TEMPLATE);
    for (let i = 0; i < 10; i++) expect((await auth.authenticate(alice(), log)).ok).toBe(true);
    expect(fwd.accepted()).toBe(1);
  });

  test("a wrong password after a good login on the same connection is refused", async () => {
    const { fwd, auth } = await setUp(TEMPLATE);
    expect((await auth.authenticate(alice(), log)).ok).toBe(true);
    const wrong = await auth.authenticate(creds("alice", "not-her-password"), log);
    expect(wrong.ok).toBe(false);
    if (!wrong.ok) expect(wrong.reason).toBe("bad_credentials");
    const bob = await auth.authenticate(creds("bob", "wrong"), log);
    expect(bob.ok).toBe(false);
    expect(fwd.accepted()).toBe(1);
  });

  test("search-then-bind with a service account: kept; each login searches as the service again", async () => {
    const { fwd, auth } = await setUp({
      searchBase: PEOPLE_DN,
      searchFilter: "(uid={user})",
      serviceBindDn: FIXTURE.service.dn,
      serviceBindPassword: FIXTURE.service.password,
    });
    expect((await auth.authenticate(alice(), log)).ok).toBe(true);
    // The connection is now bound as alice; the next login must search as the service account, and finds bob.
    expect((await auth.authenticate(creds("bob", FIXTURE.bob.password), log)).ok).toBe(true);
    const nobody = await auth.authenticate(creds("nobody", "x"), log);
    expect(!nobody.ok && nobody.reason).toBe("unknown_user");
    expect(fwd.accepted()).toBe(1);
  });

  test("search-then-bind with anonymous search: a new connection per login (never under the last user)", async () => {
    const { fwd, auth } = await setUp({ searchBase: PEOPLE_DN, searchFilter: "(uid={user})" });
    const a = await auth.authenticate(alice(), log);
    const b = await auth.authenticate(alice(), log);
    expect(a.ok).toBe(b.ok);
    expect(fwd.accepted()).toBe(2);
  });

  test("a kept connection the server dropped is replaced; the login does not fail", async () => {
    const { fwd, auth } = await setUp(TEMPLATE);
    expect((await auth.authenticate(alice(), log)).ok).toBe(true);
    fwd.cutAll();
    await Bun.sleep(50);
    expect((await auth.authenticate(alice(), log)).ok).toBe(true);
    expect(fwd.accepted()).toBe(2);
  });

  test("closing the authenticator closes its kept connection", async () => {
    const { fwd, auth } = await setUp(TEMPLATE);
    expect((await auth.authenticate(alice(), log)).ok).toBe(true);
    expect(fwd.open()).toBe(1);
    await auth.close?.();
    for (let i = 0; i < 50 && fwd.open() > 0; i++) await Bun.sleep(20);
    expect(fwd.open()).toBe(0);
  });
});
