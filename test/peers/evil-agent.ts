/**
 * An agent that lies: HTTPS `POST /pcoip-agent/xml` answering every launch-session with SUCCESSFUL and whatever
 * session-info it is told — an ip-address and port of an unrelated service, the SG's own listener, a public
 * address — the way a compromised agent or a man in the middle on the LAN (agentCertCheck = false) would. The
 * answer can be changed between launches. Every launch-session received is recorded (parsed).
 *
 * const evil = await startEvilAgent({ ipAddress: "127.0.0.1", port: 9900 });
 * evil.tell({ ipAddress: "198.51.100.9", port: 4172 });
 */
import type { Server } from "bun";
import { buildLaunchSessionResp, parseLaunchSession } from "../../src/protocol/agent.ts";
import type { LaunchSession } from "../../src/protocol/types.ts";
import { testPki } from "./test-certs.ts";

export interface EvilSessionInfo {
  /** session-info/ip-address ("" = none: the CM falls back to the agent's own host). */
  readonly ipAddress: string;
  readonly port: number;
  /** session-info/sni. Default "desktop-1.test". */
  readonly sni?: string;
}

export interface EvilAgent {
  readonly hostname: string;
  readonly port: number;
  /** Every launch-session received, parsed, in order. */
  readonly requests: readonly LaunchSession[];
  /** What the next launches answer. */
  tell(info: EvilSessionInfo): void;
  close(): Promise<void>;
}

let sessions = 0n;

export async function startEvilAgent(
  info: EvilSessionInfo,
  o: { hostname?: string } = {},
): Promise<EvilAgent> {
  const hostname = o.hostname ?? "127.0.0.1";
  let told = info;
  const requests: LaunchSession[] = [];
  const leaf = testPki().leaf(["localhost", "127.0.0.1", "::1", info.sni ?? "desktop-1.test"]);
  const server: Server<unknown> = Bun.serve({
    hostname,
    port: 0,
    tls: { cert: leaf.cert, key: leaf.key },
    async fetch(req) {
      if (req.method !== "POST" || new URL(req.url).pathname !== "/pcoip-agent/xml")
        return new Response("not found", { status: 404 });
      const parsed = parseLaunchSession(await req.text());
      if (parsed.ok) requests.push(parsed.msg);
      sessions++;
      const body = buildLaunchSessionResp({
        resultId: "SUCCESSFUL",
        failReason: "",
        sessionInfo: {
          ipAddress: told.ipAddress,
          sni: told.sni ?? "desktop-1.test",
          port: told.port,
          sessionId: (4611686018427387904n + sessions).toString(),
          sessionTag: `SCS1${Buffer.from(crypto.getRandomValues(new Uint8Array(75))).toString("base64")}`,
        },
      });
      return new Response(body, { headers: { "Content-Type": "application/xml; charset=UTF-8" } });
    },
  });
  return {
    hostname,
    port: server.port ?? 0,
    requests,
    tell(next) {
      told = next;
    },
    async close() {
      await server.stop(true);
    },
  };
}
