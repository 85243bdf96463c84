/**
 * A client host for multi-node tests: one process (run inside the client's network namespace) standing for many
 * PCoIP clients, each with its own source address. It reads one JSON command per line on stdin and answers one
 * JSON line per command on stdout (same `id`):
 *
 *   { id, op: "login", ip, host, port, servername }          hello → authenticate → list → allocate from `ip`
 *       → { id, ok, step?, resultId, targetIp, targetPort, sni, agentSessionId, pcmHost }
 *   { id, op: "media", ip, targetIp, targetPort, sni, keep }  TLS control connection to the SG (TCP) and UDP to
 *       its 4172, both from `ip`, each echoed by the agent; `keep` holds them open under `ip`
 *       → { id, ok, tcp, udp, error? }
 *   { id, op: "ping", ip }                                    a round trip on the kept TCP and UDP of `ip`
 *   { id, op: "end", ip }                                     half-closes the kept control connection (the agent
 *       answers END), closes the UDP socket
 *
 * Run: `bun test/peers/lb-client-host.ts CA_FILE` (the CA of the CM/balancer and of the agent).
 */
import { readFileSync } from "node:fs";
import { type TLSSocket, connect as tlsConnect } from "node:tls";
import type { udp } from "bun";
import { pcoipClient } from "./pcoip-client.ts";

/** One client's media: what its sockets received so far (the handlers append here). */
interface Kept {
  tcp: TLSSocket;
  udp: udp.Socket<"buffer">;
  received: { text: string; udpText: string };
  targetIp: string;
  udpPort: number;
}

const kept = new Map<string, Kept>();

async function login(c: Record<string, unknown>, ca: string) {
  const client = pcoipClient({
    host: String(c.host),
    port: Number(c.port),
    ca,
    servername: String(c.servername ?? "localhost"),
    localAddress: String(c.ip),
  });
  try {
    const hello = await client.hello();
    if (hello.operation !== "hello-resp") return { ok: false, step: "hello", resultId: hello.resultId };
    const pcmHost = /<pcm-info>[\s\S]*?<hostname>([^<]*)<\/hostname>/.exec(hello.body)?.[1] ?? "";
    const auth = await client.authenticate("alice", "correct horse");
    if (auth.resultId !== "AUTH_SUCCESSFUL_AND_COMPLETE")
      return { ok: false, step: "auth", resultId: auth.resultId, cookie: client.cookie !== undefined };
    const list = await client.getResourceList();
    if (list.resultId !== "LIST_SUCCESSFUL") return { ok: false, step: "list", resultId: list.resultId };
    const alloc = await client.allocate("desktop-1");
    if (alloc.resultId !== "ALLOC_SUCCESSFUL")
      return { ok: false, step: "allocate", resultId: alloc.resultId, resultStr: alloc.resultStr };
    const tag = (name: string) => new RegExp(`<${name}>([^<]*)</${name}>`).exec(alloc.body)?.[1] ?? "";
    return {
      ok: true,
      resultId: alloc.resultId,
      targetIp: tag("ip-address"),
      targetPort: Number(tag("port")),
      sni: tag("sni"),
      agentSessionId: tag("session-id"),
      pcmHost,
    };
  } catch (e) {
    return { ok: false, step: "transport", error: String(e) };
  } finally {
    client.close();
  }
}

function waitFor(get: () => string, needle: string, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  return new Promise((resolve) => {
    const tick = () => {
      if (get().includes(needle)) resolve(true);
      else if (Date.now() > end) resolve(false);
      else setTimeout(tick, 10);
    };
    tick();
  });
}

async function media(c: Record<string, unknown>, ca: string) {
  const ip = String(c.ip);
  const targetIp = String(c.targetIp);
  const port = Number(c.targetPort);
  const k = { text: "", udpText: "" };
  const tcp = await new Promise<TLSSocket | string>((resolve) => {
    const s = tlsConnect({ host: targetIp, port, servername: String(c.sni), ca, ...{ localAddress: ip } });
    const t = setTimeout(() => {
      s.destroy();
      resolve("tls timeout");
    }, 8000);
    s.once("secureConnect", () => {
      clearTimeout(t);
      resolve(s);
    });
    s.once("error", (e) => {
      clearTimeout(t);
      resolve(`tls: ${e.message}`);
    });
  });
  if (typeof tcp === "string") return { ok: false, tcp: false, udp: false, error: tcp };
  tcp.on("data", (d: Buffer) => {
    k.text += d.toString("latin1");
  });
  tcp.on("error", () => undefined);
  tcp.write(`<tcp ${ip}>`);
  const tcpOk = await waitFor(() => k.text, `<tcp ${ip}>`, 5000);
  const sock = await Bun.udpSocket({
    hostname: ip,
    socket: {
      data(_s, d) {
        k.udpText += Buffer.from(d).toString("latin1");
      },
      error() {},
    },
  });
  let udpOk = false;
  const udpStarted = performance.now();
  let udpTries = 0;
  for (let i = 0; i < 5 && !udpOk; i++) {
    udpTries++;
    sock.send(`<udp ${ip} ${i}>`, port, targetIp);
    udpOk = await waitFor(() => k.udpText, `<udp ${ip} ${i}>`, 400);
  }
  const udpMs = Math.round(performance.now() - udpStarted);
  if (c.keep && tcpOk && udpOk) {
    kept.set(ip, { tcp, udp: sock, received: k, targetIp, udpPort: port });
  } else {
    tcp.end();
    sock.close();
  }
  return { ok: tcpOk && udpOk, tcp: tcpOk, udp: udpOk, udpTries, udpMs };
}

async function ping(c: Record<string, unknown>) {
  const k = kept.get(String(c.ip));
  if (!k) return { ok: false, error: "nothing kept for this address" };
  const r = k.received;
  const tagT = `<ping-tcp ${Date.now()}>`;
  k.tcp.write(tagT);
  const tcpOk = await waitFor(() => r.text, tagT, 5000);
  let udpOk = false;
  for (let i = 0; i < 5 && !udpOk; i++) {
    const tagU = `<ping-udp ${Date.now()} ${i}>`;
    k.udp.send(tagU, k.udpPort, k.targetIp);
    udpOk = await waitFor(() => r.udpText, tagU, 400);
  }
  return { ok: tcpOk && udpOk, tcp: tcpOk, udp: udpOk };
}

async function end(c: Record<string, unknown>) {
  const k = kept.get(String(c.ip));
  if (!k) return { ok: false, error: "nothing kept for this address" };
  kept.delete(String(c.ip));
  k.tcp.end();
  const ended = await waitFor(() => k.received.text, "END ", 5000);
  k.tcp.destroy();
  k.udp.close();
  return { ok: ended };
}

async function main() {
  const ca = readFileSync(process.argv[2]!, "utf8");
  const decoder = new TextDecoder();
  let buf = "";
  const handle = async (line: string) => {
    const c = JSON.parse(line) as Record<string, unknown>;
    let out: Record<string, unknown>;
    try {
      out =
        c.op === "login"
          ? await login(c, ca)
          : c.op === "media"
            ? await media(c, ca)
            : c.op === "ping"
              ? await ping(c)
              : c.op === "end"
                ? await end(c)
                : { ok: false, error: `unknown op ${String(c.op)}` };
    } catch (e) {
      out = { ok: false, error: String(e) };
    }
    process.stdout.write(`${JSON.stringify({ id: c.id, ...out })}\n`);
  };
  console.log(JSON.stringify({ ready: true }));
  for await (const chunk of Bun.stdin.stream()) {
    buf += decoder.decode(chunk, { stream: true });
    let nl = buf.indexOf("\n");
    while (nl >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.trim()) void handle(line);
      nl = buf.indexOf("\n");
    }
  }
  for (const k of kept.values()) {
    k.tcp.destroy();
    k.udp.close();
  }
  process.exit(0);
}

if (import.meta.main) void main();
