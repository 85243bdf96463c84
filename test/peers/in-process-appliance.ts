/**
 * The appliance started in the test's own process (platform/appliance.ts `startAppliance`) from the same generated
 * configuration as appliance-process.ts, on real sockets: for tests that look at the appliance's objects (its node
 * state, its admission table) while driving it over the wire. Logs go to memory. `stop()` ends it and removes its
 * folder; tests call it in `finally`.
 *
 * const node = await startInProcessAppliance({ agent: "127.0.0.1:60443" });
 * node.appliance.node.setDraining(true);
 * (await node.allocate()).resultId;     // hello → authenticate → list → allocate as alice
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hashPassword, writeUsersFile } from "../../src/cm/auth/local-users.ts";
import { loadConfig } from "../../src/config/load.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { type Appliance, startAppliance } from "../../src/platform/appliance.ts";
import { type ApplianceProcessOptions, applianceToml } from "./appliance-process.ts";
import { type Answer, type PcoipClient, type PcoipClientOptions, pcoipClient } from "./pcoip-client.ts";
import { testPki } from "./test-certs.ts";

export interface InProcessAppliance {
  readonly appliance: Appliance;
  readonly logs: ReturnType<typeof memoryDestination>;
  readonly dir: string;
  /** A PCoIP client of the CM (trusting the test CA). */
  client(o?: Partial<PcoipClientOptions>): PcoipClient;
  /** GET on the CM's HTTPS listener. */
  cmGet(path: string): Promise<{ status: number; body: string }>;
  /** hello → authenticate → list → allocate on a new client; resolves with the allocate answer. */
  allocate(o?: {
    user?: string;
    password?: string;
    domain?: string;
    resource?: string;
    clientLogId?: string;
  }): Promise<Answer>;
  stop(): Promise<void>;
}

const hostPort = (addr: string) => {
  const i = addr.lastIndexOf(":");
  return { host: addr.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(addr.slice(i + 1)) };
};

export async function startInProcessAppliance(
  o: ApplianceProcessOptions & { readonly sgUdpSourcePorts?: string } = {},
): Promise<InProcessAppliance> {
  const dir = mkdtempSync(join(tmpdir(), "appliance-inproc-"));
  const configFile = join(dir, "pcoip-cmsg.toml");
  const from = 20_000 + Math.floor(Math.random() * 100) * 100;
  writeFileSync(configFile, applianceToml(dir, o));
  const users = o.users ?? { alice: "correct horse" };
  await writeUsersFile(
    join(dir, "users"),
    await Promise.all(
      Object.entries(users).map(async ([name, pw]) => ({ name, hash: await hashPassword(pw) })),
    ),
  );
  const loaded = loadConfig({
    file: configFile,
    env: { PCOIP_CMSG_SG_UDPSOURCEPORTS: o.sgUdpSourcePorts ?? `${from}-${from + 99}`, ...o.env },
    flags: [],
    strict: false,
  });
  if (!loaded.ok) throw new Error(`config: ${JSON.stringify(loaded)}`);
  const logs = memoryDestination();
  const log = createLogger({ level: "debug", destination: logs });
  const started = await startAppliance(loaded.config, { log });
  if (!started.ok) throw new Error(`appliance: ${JSON.stringify(started.error)}`);
  const appliance = started.appliance;
  const cm = hostPort(appliance.bound.cm[0]!);
  const ca = testPki().ca.cert;
  const client = (co: Partial<PcoipClientOptions> = {}) =>
    pcoipClient({ host: cm.host, port: cm.port, ca, servername: "localhost", ...co });
  return {
    appliance,
    logs,
    dir,
    client,
    async cmGet(path) {
      const r = await fetch(`https://${appliance.bound.cm[0]}${path}`, { tls: { ca } } as RequestInit);
      return { status: r.status, body: await r.text() };
    },
    async allocate(ao = {}) {
      const c = client(ao.clientLogId ? { clientLogId: ao.clientLogId } : {});
      try {
        await c.hello();
        const auth = await c.authenticate(ao.user ?? "alice", ao.password ?? "correct horse", ao.domain);
        if (auth.resultId !== "AUTH_SUCCESSFUL_AND_COMPLETE") return auth;
        const list = await c.getResourceList();
        if (list.resultId !== "LIST_SUCCESSFUL") return list;
        return await c.allocate(ao.resource ?? "desktop-1");
      } finally {
        c.close();
      }
    },
    async stop() {
      await appliance.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
