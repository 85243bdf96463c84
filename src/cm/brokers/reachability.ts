/**
 * Whether the upstream broker answers, for readiness (SPEC §2): a probe hello every few seconds in the
 * background, the last answer cached. /readyz and the load balancer's `GET /pcoip-broker/xml` read the cache, so
 * a load balancer polling every second never turns into a broker request per poll, and a broker that went down
 * takes this node out of rotation within one interval. Changes are logged once each way, not on every probe.
 */
import type { Logger } from "../../observability/log.ts";
import type { Broker } from "./broker.ts";

export interface BrokerReachability {
  /** The last probe's answer; waits for the first probe when none finished yet. */
  check(): Promise<{ readonly ok: boolean; readonly detail: string }>;
  /** False only after a probe failed (true while the first one runs: no flapping at start-up). */
  readonly reachable: boolean;
  stop(): void;
}

export interface ReachabilityOptions {
  readonly intervalMs?: number;
  /** Called when reachability changes (the CM's GET health answer follows it). */
  readonly onChange?: (reachable: boolean) => void;
}

/** Brokers without `checkReachable` (the built-in one) are always reachable; no timer runs for them. */
export function watchBroker(
  broker: Broker,
  log: Logger,
  options: ReachabilityOptions = {},
): BrokerReachability {
  const probe = broker.checkReachable?.bind(broker);
  if (!probe) {
    return {
      check: async () => ({ ok: true, detail: broker.description }),
      reachable: true,
      stop: () => undefined,
    };
  }
  const intervalMs = options.intervalMs ?? 5_000;
  let last: { ok: boolean; detail: string } | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;

  const run = (): Promise<void> => {
    running ??= (async () => {
      const r = await probe(log).catch((e: unknown) => ({ ok: false as const, reason: String(e) }));
      if (stopped) return;
      const next = r.ok
        ? { ok: true, detail: broker.description }
        : { ok: false, detail: `${r.reason} (probed every ${intervalMs / 1000} s)` };
      const changed = last === undefined ? !next.ok : last.ok !== next.ok;
      last = next;
      if (changed) {
        if (next.ok) log.info({ broker: broker.description }, "broker reachable again: ready");
        else log.warn({ cause: r.ok ? "" : r.reason }, `broker unreachable: not ready: ${next.detail}`);
        options.onChange?.(next.ok);
      }
    })().finally(() => {
      running = undefined;
    });
    return running;
  };
  void run();
  const timer = setInterval(() => void run(), intervalMs);
  timer.unref?.();

  return {
    async check() {
      if (!last) await run();
      return last ?? { ok: false, detail: "broker not probed yet" };
    },
    get reachable() {
      return last?.ok ?? true;
    },
    stop() {
      stopped = true;
      clearInterval(timer);
    },
  };
}
