/**
 * Readiness of an upstream broker (cm/brokers/reachability.ts): a real fake broker over TLS, probed with a probe
 * hello; stopping it turns the answer into a failure naming the broker and the cause, and starting it again
 * clears it. The built-in broker needs no probe.
 */
import { afterEach, expect, test } from "bun:test";
import { watchBroker } from "../../src/cm/brokers/reachability.ts";
import { createUpstreamBroker } from "../../src/cm/brokers/upstream.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import { type FakeBroker, startFakeBroker } from "../peers/fake-broker.ts";
import { until } from "../peers/sg-fixture.ts";

const PCM = {
  productName: "pcoip-cmsg",
  productVersion: "0.1.0",
  platform: "linux",
  locale: "en_US",
  ipAddress: "127.0.0.1",
  hostname: "cm.test",
};

let broker: FakeBroker | undefined;
let stop: (() => void) | undefined;
afterEach(async () => {
  stop?.();
  await broker?.close();
});

test("an answering broker is ready; a stopped one is not, with its URL and cause; the change is logged once", async () => {
  broker = await startFakeBroker();
  const made = createUpstreamBroker({
    brokerUrl: broker.url,
    caCertPem: broker.caCert,
    systemCa: false,
    env: {},
    pcmInfo: PCM,
    timeoutMs: 2_000,
  });
  if (!made.ok) throw new Error(made.error.cause);
  const logs = memoryDestination();
  const log = createLogger({ level: "info", destination: logs });
  const changes: boolean[] = [];
  const watch = watchBroker(made.broker, log, { intervalMs: 100, onChange: (up) => changes.push(up) });
  stop = () => watch.stop();

  const first = await watch.check();
  expect(first.ok).toBe(true);
  expect(watch.reachable).toBe(true);
  const hellos = broker.requests.filter((r) => r.body.includes("QueryBrokerClient")).length;
  expect(hellos).toBeGreaterThanOrEqual(1);

  broker.stopListening();
  await until(() => !watch.reachable, 5_000);
  const down = await watch.check();
  expect(down.ok).toBe(false);
  expect(down.detail).toContain(`127.0.0.1:${broker.port}`);
  expect(down.detail).toMatch(/refused|fix/i);
  expect(changes).toEqual([false]);
  await Bun.sleep(400); // several more failing probes
  const warnings = logs.lines().filter((l) => l.includes('"msg":"broker unreachable'));
  expect(warnings.length).toBe(1);
});

test("the built-in broker (no checkReachable) is always ready and starts no timer", async () => {
  const log = createLogger({ level: "error", destination: memoryDestination() });
  const watch = watchBroker({ kind: "builtin", description: "built-in" } as never, log);
  expect(await watch.check()).toEqual({ ok: true, detail: "built-in" });
  watch.stop();
});
