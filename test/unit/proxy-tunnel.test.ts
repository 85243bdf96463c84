// Claim: openTunnel gets a CONNECT tunnel through a real tinyproxy with basic auth, and turns every way a proxy
// can say no (407 without or with wrong credentials, NTLM/Negotiate only, port not allowed, broker unreachable,
// silence, not HTTP, nothing listening) into a value naming the cause and the fix.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createServer, type Server, type Socket } from "node:net";
import { openTunnel } from "../../src/net/https-proxy.ts";
import type { ProxySettings } from "../../src/net/proxy-env.ts";
import { startTinyproxy, type TinyproxyPeer, tinyproxyMissing } from "../peers/tinyproxy.ts";

const missing = tinyproxyMissing();
if (missing) console.warn(`skipping tinyproxy cases: ${missing}`);

function settings(port: number, creds?: { username: string; password: string }): ProxySettings {
  return { host: "127.0.0.1", port, noProxy: [], source: "HTTPS_PROXY", ...(creds ?? {}) };
}

/** A TCP echo server standing in for the broker behind the proxy. */
async function echoServer(): Promise<Server> {
  const srv = createServer((s) => s.pipe(s));
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  return srv;
}
const portOf = (srv: Server) => (srv.address() as { port: number }).port;

describe.skipIf(missing !== undefined)("through a real tinyproxy with basic auth", () => {
  let proxy: TinyproxyPeer;
  let echo: Server;
  let closedPort: number;
  beforeAll(async () => {
    echo = await echoServer();
    const gone = await echoServer();
    closedPort = portOf(gone);
    await new Promise<void>((r) => gone.close(() => r()));
    proxy = await startTinyproxy({
      connectPorts: [portOf(echo), closedPort],
      username: "cm",
      password: "s3cret",
    });
  });
  afterAll(async () => {
    await proxy?.stop();
    echo?.close();
  });

  test("the right credentials open a tunnel that carries bytes both ways", async () => {
    const r = await openTunnel({
      proxy: settings(proxy.port, { username: "cm", password: "s3cret" }),
      host: "127.0.0.1",
      port: portOf(echo),
      timeoutMs: 3000,
    });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    const back = new Promise<string>((res) => r.socket.once("data", (d) => res(d.toString())));
    r.socket.write("ping through the tunnel");
    expect(await back).toBe("ping through the tunnel");
    r.socket.destroy();
    expect(proxy.connects()).toContain(`127.0.0.1:${portOf(echo)}`);
  });

  test("no credentials: 407 reported, fix names the two variables", async () => {
    const r = await openTunnel({
      proxy: settings(proxy.port),
      host: "127.0.0.1",
      port: portOf(echo),
      timeoutMs: 3000,
    });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.failure.kind).toBe("proxy_auth");
    expect(r.failure.status).toBe(407);
    expect(r.failure.cause).toContain("HTTP 407");
    expect(r.failure.fix).toContain("HTTPS_PROXY_USERNAME");
  });

  test("a wrong password is reported as refused credentials, without the password", async () => {
    const r = await openTunnel({
      proxy: settings(proxy.port, { username: "cm", password: "wrong-pw" }),
      host: "127.0.0.1",
      port: portOf(echo),
      timeoutMs: 3000,
    });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.failure.kind).toBe("proxy_auth");
    expect(r.failure.cause).toContain("refused the credentials");
    expect(JSON.stringify(r.failure)).not.toContain("wrong-pw");
  });

  test("a port the proxy does not allow: 403, fix names ConnectPort", async () => {
    const r = await openTunnel({
      proxy: settings(proxy.port, { username: "cm", password: "s3cret" }),
      host: "127.0.0.1",
      port: 1,
      timeoutMs: 3000,
    });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.failure.kind).toBe("proxy_denied");
    expect(r.failure.status).toBe(403);
    expect(r.failure.fix).toContain("ConnectPort");
  });

  test("a broker the proxy cannot reach: reported as the proxy's failure to reach it", async () => {
    const r = await openTunnel({
      proxy: settings(proxy.port, { username: "cm", password: "s3cret" }),
      host: "127.0.0.1",
      port: closedPort,
      timeoutMs: 3000,
    });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.failure.kind).toBe("proxy_upstream");
    expect(r.failure.cause).toContain(`could not reach 127.0.0.1:${closedPort}`);
  });
});

describe("scripted proxies", () => {
  const servers: Server[] = [];
  const seen: string[] = [];
  afterAll(() => {
    for (const s of servers) s.close();
  });
  /** A proxy that answers every CONNECT with `answer` (or never, when undefined). */
  async function scripted(answer: string | undefined): Promise<number> {
    const open: Socket[] = [];
    const srv = createServer((s) => {
      open.push(s);
      s.once("data", (d) => {
        seen.push(d.toString("latin1"));
        if (answer !== undefined) s.end(answer);
      });
    });
    srv.on("close", () => {
      for (const s of open) s.destroy();
    });
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    servers.push(srv);
    return portOf(srv);
  }

  test.each([
    ["NTLM only", "proxy_ntlm", "Proxy-Authenticate: NTLM\r\n"],
    ["Negotiate and NTLM", "proxy_ntlm", "Proxy-Authenticate: Negotiate\r\nProxy-Authenticate: NTLM\r\n"],
    ["Negotiate, NTLM in one header", "proxy_ntlm", "Proxy-Authenticate: Negotiate, NTLM\r\n"],
    [
      "NTLM and Basic",
      "proxy_auth",
      'Proxy-Authenticate: NTLM\r\nProxy-Authenticate: Basic realm="corp"\r\n',
    ],
  ])("407 with %s → %s", async (_name, kind, challenge) => {
    const port = await scripted(
      `HTTP/1.1 407 Proxy Authentication Required\r\n${challenge}Content-Length: 0\r\n\r\n`,
    );
    const r = await openTunnel({ proxy: settings(port), host: "broker.example", port: 443, timeoutMs: 3000 });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.failure.kind).toBe(kind as "proxy_ntlm" | "proxy_auth");
    if (kind === "proxy_ntlm") expect(r.failure.cause).toContain("not supported");
  });

  test("the CONNECT request names the broker and carries basic credentials in Proxy-Authorization", async () => {
    const port = await scripted("HTTP/1.1 403 Forbidden\r\n\r\n");
    await openTunnel({
      proxy: settings(port, { username: "cm", password: "pä:ss" }),
      host: "broker.example",
      port: 8443,
      timeoutMs: 3000,
    });
    const req = seen.at(-1)!;
    expect(req.startsWith("CONNECT broker.example:8443 HTTP/1.1\r\nHost: broker.example:8443\r\n")).toBe(
      true,
    );
    const auth = /Proxy-Authorization: Basic (\S+)/.exec(req)?.[1];
    expect(Buffer.from(auth!, "base64").toString("utf8")).toBe("cm:pä:ss");
  });

  test("a proxy that never answers → timeout", async () => {
    const port = await scripted(undefined);
    const r = await openTunnel({ proxy: settings(port), host: "broker.example", port: 443, timeoutMs: 300 });
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.failure.kind).toBe("proxy_timeout");
      expect(r.failure.timeout).toBe(true);
    }
  });

  test("something that is not an HTTP proxy → bad response", async () => {
    const port = await scripted("SSH-2.0-OpenSSH_9.2\r\n\r\n");
    const r = await openTunnel({ proxy: settings(port), host: "broker.example", port: 443, timeoutMs: 3000 });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.failure.kind).toBe("proxy_bad_response");
  });

  test("nothing listening on the proxy port → refused", async () => {
    const port = await scripted(undefined);
    await new Promise<void>((r) => servers.pop()!.close(() => r()));
    const r = await openTunnel({ proxy: settings(port), host: "broker.example", port: 443, timeoutMs: 3000 });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.failure.kind).toBe("proxy_refused");
  });
});
