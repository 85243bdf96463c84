// Claim: a node with the built-in broker and no [[desktops]] stays ready (a balancer taking it out fixes nothing),
// but /readyz's detail names what to add (--broker-url, or [[desktops]] and how users sign in); with a desktop
// configured the line is absent.
import { afterEach, describe, expect, test } from "bun:test";
import { type ApplianceProcess, startApplianceProcess } from "../peers/appliance-process.ts";

let app: ApplianceProcess | undefined;
afterEach(async () => {
  await app?.kill();
  app?.cleanup();
  app = undefined;
});

describe("/readyz detail for a configuration that can serve nobody", () => {
  test("no broker URL and no desktops: 200 with a desktops warning naming what to add", async () => {
    app = await startApplianceProcess({});
    const r = await app.adminGet("/readyz");
    const body = await r.text();
    expect(r.status).toBe(200);
    expect(body).toMatch(/^ok {3}desktops: warning: no --broker-url and no \[\[desktops\]\]/m);
    expect(body).toContain("pcoip-cmsg user add NAME");
  }, 30_000);

  test("with a desktop: no such line", async () => {
    app = await startApplianceProcess({ agent: "127.0.0.1:60443" });
    const body = await (await app.adminGet("/readyz")).text();
    expect(body).not.toContain("desktops:");
  }, 30_000);
});
