/**
 * What the appliance operations tests do to a running appliance process (appliance-process.ts): sign a PCoIP
 * client in and allocate through the CM, open the TLS control connection and a UDP flow through the SG to the fake
 * agent's echo endpoint, keep bytes flowing on both while something happens (SIGHUP, SIGTERM), scrape /metrics,
 * fetch over the CM's TLS, and receive sd_notify datagrams.
 *
 * const s = await signIn(app);                       // hello → authenticate → list → allocate, s.sessionId
 * const relay = await openControl(app);              // TLS to the agent through sg-tcp
 * const udp = await udpPeer(app);                    // datagrams through sg-udp, echoed by the agent
 * const flow = keepFlowing(relay, udp);              // … signal the process …
 * await flow.stopAndCheck();                         // every byte sent came back
 */
import { connect as tlsConnect } from "node:tls";
import type { udp } from "bun";
import { type ControlClient, connectControl } from "./agent-endpoint.ts";
import type { ApplianceProcess, LogLine } from "./appliance-process.ts";
import type { FakeAgent } from "./fake-agent.ts";
import { type Answer, type PcoipClient, pcoipClient } from "./pcoip-client.ts";
import { testPki } from "./test-certs.ts";

export function hostPort(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(":");
  return { host: addr.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(addr.slice(i + 1)) };
}

/** Polls `cond` every 20 ms until it holds; throws naming `what` after `ms`. */
export async function until(
  cond: () => boolean | Promise<boolean>,
  what: string,
  ms = 10_000,
): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`not within ${ms} ms: ${what}`);
    await Bun.sleep(20);
  }
}

/** Something a test opened and must close, whatever happened. */
export type Closer = () => void | Promise<void>;

/** Ends what a test started, last first: its closers, then the appliance process (killed, folder removed), the agent. */
export async function endTest(
  closers: Closer[],
  app: ApplianceProcess | undefined,
  agent: FakeAgent | undefined,
): Promise<void> {
  for (const c of closers.splice(0).reverse()) await c();
  await app?.kill();
  app?.cleanup();
  await agent?.close();
}

/**
 * Environment for an appliance whose SG takes its UDP source ports from a random 100-port range below the kernel's
 * ephemeral range, instead of the default 55000–59999 that other appliances and benches on the machine may hold.
 */
export function sgEnv(): Record<string, string> {
  const from = 20_000 + Math.floor(Math.random() * 100) * 100;
  return { PCOIP_CMSG_SG_UDPSOURCEPORTS: `${from}-${from + 99}` };
}

// ---- metrics ---------------------------------------------------------------------------------------------

/** Samples of one scrape keyed by `name{labels}` exactly as exposed (labels in exposition order). */
export type Scrape = ReadonlyMap<string, number>;

export function parseMetrics(text: string): Scrape {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const sp = line.lastIndexOf(" ");
    out.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return out;
}

export async function scrape(app: ApplianceProcess): Promise<Scrape> {
  const r = await app.adminGet("/metrics");
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
  return parseMetrics(await r.text());
}

/** The sample `name{k="v",…}`; 0 when absent (a labelled counter not created yet). */
export function sample(m: Scrape, name: string, labels: Readonly<Record<string, string>> = {}): number {
  const l = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .join(",");
  return m.get(l ? `${name}{${l}}` : name) ?? 0;
}

/** How much a sample moved between two scrapes. */
export function moved(
  before: Scrape,
  after: Scrape,
  name: string,
  labels: Readonly<Record<string, string>> = {},
): number {
  return sample(after, name, labels) - sample(before, name, labels);
}

// ---- the CM ----------------------------------------------------------------------------------------------

export interface SignedIn {
  readonly client: PcoipClient;
  readonly alloc: Answer;
  /** The 36-character session-log-id every line of this session carries. */
  readonly sessionId: string;
  /** target/port of the allocation (the SG's TCP port when the SG is on). */
  readonly targetPort: number;
  readonly targetIp: string;
}

export function cmClient(app: ApplianceProcess): PcoipClient {
  const { host, port } = hostPort(app.cm);
  return pcoipClient({ host, port, ca: app.ca, servername: "localhost" });
}

/** hello → authenticate → get-resource-list → allocate-resource; throws unless every step succeeded. */
export async function signIn(
  app: ApplianceProcess,
  opts: { user?: string; password?: string; resource?: string } = {},
): Promise<SignedIn> {
  const client = cmClient(app);
  const expectResult = (a: Answer, want: string) => {
    if (a.resultId !== want)
      throw new Error(`${a.operation}: ${a.resultId} (${a.resultStr}), wanted ${want}`);
  };
  const hello = await client.hello();
  if (hello.operation !== "hello-resp") throw new Error(`hello: ${hello.operation} ${hello.resultId}`);
  expectResult(
    await client.authenticate(opts.user ?? "alice", opts.password ?? "correct horse"),
    "AUTH_SUCCESSFUL_AND_COMPLETE",
  );
  expectResult(await client.getResourceList(), "LIST_SUCCESSFUL");
  const alloc = await client.allocate(opts.resource ?? "desktop-1");
  expectResult(alloc, "ALLOC_SUCCESSFUL");
  const agentSessionId = /<session-id>([^<]*)<\/session-id>/.exec(alloc.body)?.[1];
  const line = await app.waitForLog(
    (l) => l.audit === true && l.event === "allocation" && l.agentSessionId === agentSessionId,
    5000,
  );
  return {
    client,
    alloc,
    sessionId: String(line.sessionId),
    targetPort: Number(/<port>(\d+)<\/port>/.exec(alloc.body)?.[1]),
    targetIp: /<ip-address>([^<]*)<\/ip-address>/.exec(alloc.body)?.[1] ?? "",
  };
}

/** A GET on the CM's HTTPS listener (trusting the test CA). */
export async function cmGet(app: ApplianceProcess, path: string): Promise<{ status: number; body: string }> {
  const r = await fetch(`https://${app.cm}${path}`, { tls: { ca: app.ca } } as RequestInit);
  return { status: r.status, body: await r.text() };
}

/** The SHA-256 fingerprint of the certificate a new TLS connection to the CM is shown. */
export function cmCertificateFingerprint(app: ApplianceProcess): Promise<string> {
  const { host, port } = hostPort(app.cm);
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host, port, ca: app.ca, servername: "localhost" });
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error("no TLS handshake with the CM within 5 s"));
    }, 5000);
    s.once("secureConnect", () => {
      clearTimeout(t);
      const fp = s.getPeerCertificate().fingerprint256;
      s.end();
      resolve(fp);
    });
    s.once("error", (e) => {
      clearTimeout(t);
      reject(e);
    });
  });
}

// ---- the SG ----------------------------------------------------------------------------------------------

/** The TLS control connection through sg-tcp (SNI = the desktop's, trust = the agent's CA). */
export async function openControl(
  app: ApplianceProcess,
  serverName = "desktop-1.test",
): Promise<ControlClient> {
  const { host, port } = hostPort(app.sgTcp);
  const r = await connectControl({
    hostname: host,
    port,
    serverName,
    ca: testPki().ca.cert,
    timeoutMs: 8000,
  });
  if (!r.ok) throw new Error(`control connection through the SG refused: ${r.error}`);
  return r.client;
}

/** Writes `tag` and waits for its echo (the agent echoes every byte). */
export async function tcpRoundTrip(c: ControlClient, tag: string, ms = 5000): Promise<void> {
  c.write(tag);
  await c.waitFor(tag, ms);
}

export interface UdpPeer {
  /** Replies received, as text, in order, with where they came from. */
  readonly replies: readonly { text: string; from: string }[];
  send(text: string): void;
  /** Sends `tag` and waits for it to come back. */
  roundTrip(tag: string, ms?: number): Promise<void>;
  close(): void;
}

/** A PCoIP client's UDP socket sending to sg-udp. */
export async function udpPeer(app: ApplianceProcess): Promise<UdpPeer> {
  const { host, port } = hostPort(app.sgUdp);
  const replies: { text: string; from: string }[] = [];
  const sock: udp.Socket<"buffer"> = await Bun.udpSocket({
    hostname: "127.0.0.1",
    socket: {
      data(_s, buf, p, a) {
        replies.push({ text: buf.toString(), from: `${a}:${p}` });
      },
      error() {},
    },
  });
  let closed = false;
  const send = (text: string) => {
    if (!closed) sock.send(text, port, host);
  };
  return {
    replies,
    send,
    async roundTrip(tag, ms = 5000) {
      // A datagram may be lost while a flow is being set up; send again until the echo comes.
      const end = Date.now() + ms;
      for (;;) {
        send(tag);
        const resendAt = Date.now() + 500;
        while (Date.now() < resendAt) {
          if (replies.some((r) => r.text === tag)) return;
          await Bun.sleep(10);
        }
        if (Date.now() > end) throw new Error(`udp: no echo of ${tag} within ${ms} ms`);
      }
    },
    close: () => {
      closed = true;
      sock.close();
    },
  };
}

export interface Flow {
  /** Ticks sent so far on each plane. */
  readonly sent: number;
  /** Stops ticking (idempotent; for cleanup after a failure). */
  stop(): void;
  /** Stops ticking, then waits until every tick came back on both planes; resolves with the tick count. */
  stopAndCheck(ms?: number): Promise<number>;
}

/**
 * Keeps bytes flowing: every `everyMs` a unique tick on the control connection and one datagram, so a pause of
 * the relay shows as missing echoes.
 */
export function keepFlowing(c: ControlClient, u: UdpPeer, everyMs = 25, prefix = "tick"): Flow {
  let n = 0;
  let sentText = "";
  const sentUdp: string[] = [];
  const timer = setInterval(() => {
    const t = `<${prefix}-${n}>`;
    n++;
    sentText += t;
    c.write(t);
    sentUdp.push(t);
    u.send(t);
  }, everyMs);
  return {
    get sent() {
      return n;
    },
    stop: () => clearInterval(timer),
    async stopAndCheck(ms = 8000) {
      clearInterval(timer);
      await until(
        () => c.text().includes(sentText),
        `all ${n} ticks echoed on the control connection (got ${c.text().length} bytes)`,
        ms,
      );
      const got = new Set(u.replies.map((r) => r.text));
      const missing = sentUdp.filter((t) => !got.has(t));
      if (missing.length > 0) {
        // Give late datagrams a moment, then name what is missing.
        await until(
          () => {
            const g = new Set(u.replies.map((r) => r.text));
            return sentUdp.every((t) => g.has(t));
          },
          `all ${sentUdp.length} datagrams echoed; missing ${missing.slice(0, 5).join(" ")}…`,
          ms,
        );
      }
      return n;
    },
  };
}

// ---- logs ------------------------------------------------------------------------------------------------

export function linesOf(app: ApplianceProcess, sessionId: string): LogLine[] {
  return app.logs.filter((l) => l.sessionId === sessionId);
}

/** The config file as written, with `from` replaced by `to` (throws when `from` is not in it). */
export async function editedConfig(
  app: ApplianceProcess,
  from: string | RegExp,
  to: string,
): Promise<string> {
  const text = await Bun.file(app.configFile).text();
  const next = text.replace(from, to);
  if (next === text) throw new Error(`config edit: ${String(from)} not found in ${app.configFile}`);
  return next;
}

// ---- sd_notify -------------------------------------------------------------------------------------------

const NOTIFY_RECEIVER = `
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind(sys.argv[1])
print(json.dumps({"listening": True}), flush=True)
while True:
    msg, anc, flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(12))
    pid = None
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", data[:12])[0]
    print(json.dumps({"pid": pid, "msg": msg.decode()}), flush=True)
`;

export interface Datagram {
  readonly pid: number | null;
  /** The assignments, e.g. { READY: "1", STATUS: "serving" }. */
  readonly fields: Readonly<Record<string, string>>;
  readonly raw: string;
  readonly at: number;
}

export interface NotifyReceiver {
  readonly path: string;
  readonly datagrams: readonly Datagram[];
  /** The first datagram at index ≥ `from` that matches. */
  waitFor(pred: (d: Datagram) => boolean, from?: number, ms?: number): Promise<Datagram>;
  close(): Promise<void>;
}

/** A systemd stand-in: a python3 child bound to a unix datagram socket at `path`, one JSON line per datagram. */
export async function notifyReceiver(path: string): Promise<NotifyReceiver> {
  const proc = Bun.spawn(["python3", "-c", NOTIFY_RECEIVER, path], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const datagrams: Datagram[] = [];
  let listening = false;
  void (async () => {
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of proc.stdout) {
      buf += dec.decode(chunk, { stream: true });
      let nl = buf.indexOf("\n");
      while (nl >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        nl = buf.indexOf("\n");
        const o = JSON.parse(line) as { listening?: boolean; pid?: number | null; msg?: string };
        if (o.listening) {
          listening = true;
          continue;
        }
        const raw = o.msg ?? "";
        const fields: Record<string, string> = {};
        for (const a of raw.split("\n")) {
          const eq = a.indexOf("=");
          if (eq > 0) fields[a.slice(0, eq)] = a.slice(eq + 1);
        }
        datagrams.push({ pid: o.pid ?? null, fields, raw, at: Date.now() });
      }
    }
  })();
  try {
    await until(() => listening || proc.exitCode !== null, "the notify receiver bound its socket", 10_000);
  } catch (e) {
    proc.kill();
    throw e;
  }
  if (!listening) throw new Error(`notify receiver failed: ${await new Response(proc.stderr).text()}`);
  return {
    path,
    datagrams,
    async waitFor(pred, from = 0, ms = 10_000) {
      let hit: Datagram | undefined;
      await until(
        () => {
          hit = datagrams.slice(from).find(pred);
          return hit !== undefined;
        },
        `a matching sd_notify datagram; got ${JSON.stringify(datagrams.slice(from).map((d) => d.raw))}`,
        ms,
      );
      return hit!;
    },
    async close() {
      proc.kill();
      await proc.exited;
    },
  };
}
