/**
 * The soak's fake agent in a process of its own: test/peers/fake-agent.ts with its session endpoint, serving the
 * certificate files named by SOAK_AGENT_CERT / SOAK_AGENT_KEY (a leaf of the soak process's test CA, so the
 * relayed control connections can verify it). Prints one line, `{"port":N,"sessionPort":M}`, once listening;
 * stops on SIGTERM.
 */
import { readFileSync } from "node:fs";
import { startFakeAgent } from "../peers/fake-agent.ts";

const agent = await startFakeAgent({
  endpoint: true,
  cert: readFileSync(process.env.SOAK_AGENT_CERT ?? "", "utf8"),
  key: readFileSync(process.env.SOAK_AGENT_KEY ?? "", "utf8"),
});
process.stdout.write(`${JSON.stringify({ port: agent.port, sessionPort: agent.endpoint?.port })}\n`);
process.on("SIGTERM", () => {
  void agent.close().then(() => process.exit(0));
});
