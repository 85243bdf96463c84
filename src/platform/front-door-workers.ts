/**
 * The CM's HTTPS listeners on every core (issue 21; docs/DESIGN.md "Both cores for the CM"): `cm.workers` Bun
 * Workers each run the front door (net/front-door-worker.ts) on every cm.listen address with SO_REUSEPORT, so the
 * kernel spreads new connections — and their TLS handshakes, the RSA signature that is most of a login's CPU —
 * over the cores. All CM state stays in this (the main) thread: a worker posts each request as plain data, the CM
 * handler answers it here, the answer goes back. A login whose requests arrive on different connections (and so
 * on different workers) finds its conversation, throttle and admission where they always were.
 *
 * The connection guards stay global: every accepted connection is told to this thread, which judges it against
 * the per-IP cap (the ConnectionGuard the port-80 listeners use too), cm.maxConnections (per cm.listen entry, all
 * workers together) and the CM's descriptor budget, and cuts it if it may not stay. The worker does not wait for
 * the verdict (the handshake goes on); requests come after their connection's `conn` message on the same ordered
 * channel, so a refused connection's requests are never handled.
 *
 * A worker that dies is logged, its connections' slots are given back, and it is started again on the same
 * ports; until it is back, readiness says so (the node is unready, never silently half-listening).
 */
import type { ConnectionGuard } from "../net/connection-guard.ts";
import type { FromWorker, ListenerSpec, ToWorker } from "../net/front-door-messages.ts";
import type { ConnInfo, Http1Tls, RelayedRequest } from "../net/http1-options.ts";
import { requestFrom } from "../net/http1-request.ts";
import type { ReadinessCheck } from "../observability/health.ts";
import type { Logger } from "../observability/log.ts";

/**
 * The worker's module. In a compiled executable, entry points live in Bun's virtual file system by their path
 * relative to the common folder of all entry points (src/): scripts/build.ts lists `src/${WORKER_ENTRY}`.
 */
export const WORKER_ENTRY = "net/front-door-worker.ts";

/** A worker must say it is ready within this, and answer each listener command within it. */
const COMMAND_TIMEOUT_MS = 15_000;
/** First wait before starting a dead worker again; doubles per death in a row, up to the maximum. */
const RESTART_FIRST_MS = 500;
const RESTART_MAX_MS = 30_000;

export interface FrontDoorWorkersDeps {
  readonly count: number;
  readonly log: Logger;
  /** The CM's handler (hono app): runs here, for every worker. */
  readonly fetch: (req: Request, info: ConnInfo) => Response | Promise<Response>;
  readonly guard: ConnectionGuard;
  readonly descriptors: { tryTake(fds: number): boolean; give(fds: number): void };
  /** cm.maxConnections, per cm.listen entry across all workers (read per connection: a reload applies). */
  readonly maxConnections: () => number;
  readonly onProxyRefused: (reason: string, info: ConnInfo) => void;
}

/** What this thread holds for one open worker connection. */
interface ConnSlot {
  readonly key: string;
  /** The per-IP slot held (the peer, or the client its PROXY header named); undefined once given back. */
  guardIp: string | undefined;
  holdsFd: boolean;
  /** Refused: its requests are dropped and it is being closed. */
  cut: boolean;
}

/** One worker thread: its connections as this thread accounts them, and commands awaiting their answer. */
class WorkerSlot {
  readonly conns = new Map<number, ConnSlot>();
  readonly waiting = new Map<number, (m: { port?: number; error?: string }) => void>();
  up = false;
  /** Started again after a death and not yet listening on every cm.listen entry (readiness waits for it). */
  reopening = false;
  /** Its end was handled (the close event comes once, but a failed restart may also end it). */
  ended = false;
  constructor(
    readonly index: number,
    readonly worker: Worker,
  ) {}
}

/** One cm.listen entry as the workers serve it (the same port on each). */
export interface WorkerListener {
  readonly hostname: string;
  readonly port: number;
}

export class FrontDoorWorkers {
  readonly #d: FrontDoorWorkersDeps;
  readonly #slots: WorkerSlot[] = [];
  /** The listeners every worker must have, with the port bound and the certificate now in force. */
  readonly #specs = new Map<string, ListenerSpec>();
  /** Open connections per cm.listen entry, all workers together (cm.maxConnections). */
  readonly #openByKey = new Map<string, number>();
  /** Connections each worker (by index) accepted and this thread let stay, since the start. */
  readonly #accepted: number[] = [];
  #seq = 1;
  #stopping = false;
  /** Set once every worker started: from then on, a worker that ends is started again. */
  #started = false;
  #deathsInARow = 0;

  constructor(deps: FrontDoorWorkersDeps) {
    this.#d = deps;
  }

  /** Starts the workers; rejects (naming the cause) when one cannot start. */
  async start(): Promise<void> {
    const started = await Promise.allSettled(Array.from({ length: this.#d.count }, (_, i) => this.#spawn(i)));
    const failed = started.find((r) => r.status === "rejected");
    if (failed) {
      await this.stop();
      throw (failed as PromiseRejectedResult).reason;
    }
    this.#started = true;
  }

  /** The worker threads by index (tests end one to see it started again). */
  get threads(): readonly Worker[] {
    return this.#slots.map((s) => s.worker);
  }

  /** Connections let stay per worker since the start (the kernel spreads them: a skew shows here). */
  acceptedByWorker(): Record<string, number> {
    return Object.fromEntries(this.#slots.map((s) => [String(s.index), this.#accepted[s.index] ?? 0]));
  }

  /** The readiness check: every worker up (a dead one is being started again). */
  readiness(): ReadinessCheck {
    const down = this.#slots.filter((s) => !s.up || s.reopening).map((s) => s.index);
    return down.length === 0
      ? { name: "cm-workers", ok: true, detail: `${this.#slots.length} front-door workers` }
      : {
          name: "cm-workers",
          ok: false,
          detail: `front-door worker ${down.join(", ")} of ${this.#slots.length} is down (being restarted; see the log)`,
        };
  }

  /** Opens `spec` on every worker (the first binds port 0 to a real port; the others bind that one). */
  async open(spec: ListenerSpec): Promise<WorkerListener> {
    let bound = spec;
    const opened: WorkerSlot[] = [];
    // A worker being started again opens every entry in #specs once it is up; it is not waited for here.
    const live = this.#slots.filter((s) => s.up);
    if (live.length === 0) throw new Error("no front-door worker thread is running (see the log)");
    try {
      for (const slot of live) {
        const port = await this.#command(slot, (seq) => ({ t: "open", seq, spec: bound }));
        opened.push(slot);
        if (port !== undefined && bound.port === 0) bound = { ...bound, port };
      }
    } catch (e) {
      for (const slot of opened)
        await this.#command(slot, (seq) => ({ t: "close", seq, key: spec.key })).catch(() => 0);
      throw e;
    }
    this.#specs.set(spec.key, bound);
    return { hostname: bound.hostname, port: bound.port };
  }

  /** New connections on `key` get `tls`, on every worker, before this resolves. */
  async reloadTls(key: string, tls: Http1Tls): Promise<void> {
    const spec = this.#specs.get(key);
    if (!spec) return;
    this.#specs.set(key, { ...spec, tls });
    await Promise.all(
      this.#slots.filter((s) => s.up).map((s) => this.#command(s, (seq) => ({ t: "tls", seq, key, tls }))),
    );
  }

  /** Stops accepting on `key` (its connections stay until they end). */
  async close(key: string): Promise<void> {
    this.#specs.delete(key);
    await Promise.all(
      this.#slots.filter((s) => s.up).map((s) => this.#command(s, (seq) => ({ t: "close", seq, key }))),
    );
  }

  /** Closes every listener and connection, then ends the threads: nothing of the CM listens afterwards. */
  async stop(): Promise<void> {
    this.#stopping = true;
    await Promise.all(
      this.#slots
        .filter((s) => s.up)
        .map((s) => this.#command(s, (seq) => ({ t: "stop", seq })).catch(() => undefined)),
    );
    for (const s of this.#slots) {
      s.up = false;
      s.worker.terminate();
      this.#release(s);
    }
  }

  // ---- workers ----

  #spawn(index: number): Promise<WorkerSlot> {
    const worker = new Worker(workerUrl());
    const slot = new WorkerSlot(index, worker);
    this.#slots[index] = slot;
    const ready = Promise.withResolvers<WorkerSlot>();
    const timer = setTimeout(
      () =>
        ready.reject(new Error(`front-door worker ${index} did not start within ${COMMAND_TIMEOUT_MS} ms`)),
      COMMAND_TIMEOUT_MS,
    );
    worker.addEventListener("message", (e: MessageEvent<FromWorker>) => {
      const m = e.data;
      if (m.t === "ready") {
        clearTimeout(timer);
        slot.up = true;
        ready.resolve(slot);
        return;
      }
      this.#onMessage(slot, m);
    });
    worker.addEventListener("error", (e: ErrorEvent) => {
      clearTimeout(timer);
      const cause = e.message || String(e.error ?? "unknown error");
      ready.reject(new Error(`front-door worker ${index} failed: ${cause}`));
      if (!this.#stopping) this.#d.log.error({ worker: index, cause }, "front-door worker: uncaught error");
    });
    worker.addEventListener("close", (e: Event) => {
      clearTimeout(timer);
      ready.reject(new Error(`front-door worker ${index} exited before it was ready`));
      if (this.#slots[index] === slot) this.#died(slot, (e as CloseEvent).code);
    });
    return ready.promise;
  }

  /** A worker ended without being asked to: its slots are given back, and it is started again. */
  #died(slot: WorkerSlot, code: number): void {
    if (slot.ended) return;
    slot.ended = true;
    slot.up = false;
    this.#release(slot);
    for (const w of slot.waiting.values()) w({ error: "the worker exited" });
    slot.waiting.clear();
    if (this.#stopping || !this.#started) return;
    this.#deathsInARow++;
    const wait = Math.min(RESTART_MAX_MS, RESTART_FIRST_MS * 2 ** (this.#deathsInARow - 1));
    this.#d.log.error(
      { worker: slot.index, exitCode: code, restartInMs: wait },
      "front-door worker exited: its connections are lost; starting it again (the node is unready until then)",
    );
    setTimeout(() => void this.#restart(slot.index), wait).unref?.();
  }

  async #restart(index: number): Promise<void> {
    if (this.#stopping) return;
    try {
      const slot = await this.#spawn(index);
      slot.reopening = true;
      for (const spec of this.#specs.values()) await this.#command(slot, (seq) => ({ t: "open", seq, spec }));
      slot.reopening = false;
      this.#deathsInARow = 0;
      this.#d.log.info({ worker: index }, "front-door worker started again and listening");
    } catch (e) {
      this.#d.log.error(
        { worker: index, cause: e instanceof Error ? e.message : String(e) },
        "front-door worker could not be started again; the node stays unready",
      );
      // Its close event (or the one it already had) schedules the next attempt.
      const slot = this.#slots[index];
      if (slot && !slot.ended) {
        slot.up = false;
        slot.worker.terminate();
      }
    }
  }

  /** Sends a listener command and waits for its answer: the port bound, or throws the worker's error. */
  #command(slot: WorkerSlot, make: (seq: number) => ToWorker): Promise<number | undefined> {
    const seq = this.#seq++;
    const answered = new Promise<number | undefined>((resolve, reject) => {
      const timer = setTimeout(() => {
        slot.waiting.delete(seq);
        reject(new Error(`front-door worker ${slot.index} did not answer within ${COMMAND_TIMEOUT_MS} ms`));
      }, COMMAND_TIMEOUT_MS);
      slot.waiting.set(seq, (m) => {
        clearTimeout(timer);
        if (m.error !== undefined) reject(new Error(m.error));
        else resolve(m.port);
      });
    });
    slot.worker.postMessage(make(seq));
    return answered;
  }

  // ---- what workers post ----

  #onMessage(slot: WorkerSlot, m: FromWorker): void {
    switch (m.t) {
      case "req":
        this.#request(slot, m.rid, m.id, m.req, m.info);
        return;
      case "conn":
        slot.worker.postMessage({ t: "verdict", id: m.id, ok: this.#judge(slot, m.id, m.key, m.peer) });
        return;
      case "closed":
        this.#closed(slot, m.id);
        return;
      case "addr":
        this.#addressed(slot, m.id, m.client);
        return;
      case "busy":
        this.#d.guard.refuse("descriptors", m.peer);
        return;
      case "refused":
        this.#d.onProxyRefused(m.reason, m.info);
        return;
      case "log":
        this.#d.log[m.level]({ ...m.fields, worker: slot.index }, m.msg);
        return;
      case "done": {
        const w = slot.waiting.get(m.seq);
        slot.waiting.delete(m.seq);
        w?.(m);
        return;
      }
      case "ready":
        return;
    }
  }

  /** Whether a new connection may stay open: the checks http1.ts makes in the single-threaded front door. */
  #judge(slot: WorkerSlot, id: number, key: string, peer: string): boolean {
    const { guard, descriptors } = this.#d;
    const open = this.#openByKey.get(key) ?? 0;
    const refused = (): false => {
      slot.conns.set(id, { key, guardIp: undefined, holdsFd: false, cut: true });
      return false;
    };
    if (open >= this.#d.maxConnections()) {
      guard.refuse("max_connections", peer);
      return refused();
    }
    if (guard.open(peer) !== undefined) return refused();
    if (!descriptors.tryTake(1)) {
      guard.close(peer);
      guard.refuse("descriptors", peer);
      return refused();
    }
    this.#openByKey.set(key, open + 1);
    this.#accepted[slot.index] = (this.#accepted[slot.index] ?? 0) + 1;
    slot.conns.set(id, { key, guardIp: peer, holdsFd: true, cut: false });
    return true;
  }

  /** The per-IP slot moves to the client a PROXY header named; over its cap, the connection is cut. */
  #addressed(slot: WorkerSlot, id: number, client: string): void {
    const c = slot.conns.get(id);
    if (!c || c.cut) return;
    const guard = this.#d.guard;
    if (c.guardIp !== undefined) guard.close(c.guardIp);
    c.guardIp = undefined;
    if (guard.open(client) !== undefined) {
      c.cut = true;
      slot.worker.postMessage({ t: "cut", id });
      return;
    }
    c.guardIp = client;
  }

  #closed(slot: WorkerSlot, id: number): void {
    const c = slot.conns.get(id);
    if (!c) return;
    slot.conns.delete(id);
    this.#giveBack(c);
  }

  #giveBack(c: ConnSlot): void {
    if (c.guardIp !== undefined) this.#d.guard.close(c.guardIp);
    c.guardIp = undefined;
    if (c.holdsFd) {
      this.#d.descriptors.give(1);
      const n = (this.#openByKey.get(c.key) ?? 1) - 1;
      if (n > 0) this.#openByKey.set(c.key, n);
      else this.#openByKey.delete(c.key);
    }
    c.holdsFd = false;
  }

  /** Gives back everything a worker's connections held (it ended: its sockets are gone with it). */
  #release(slot: WorkerSlot): void {
    for (const c of slot.conns.values()) this.#giveBack(c);
    slot.conns.clear();
  }

  /** Runs the CM for a relayed request and posts the answer back (its body moved, not copied). */
  #request(slot: WorkerSlot, rid: number, id: number, plain: RelayedRequest, info: ConnInfo): void {
    const c = slot.conns.get(id);
    if (!c || c.cut) {
      slot.worker.postMessage({ t: "drop", rid });
      return;
    }
    Promise.resolve()
      .then(() => this.#d.fetch(requestFrom(plain, info.tls), info))
      .then(async (res) => {
        const headers: string[] = [];
        for (const [name, value] of res.headers) if (name !== "set-cookie") headers.push(name, value);
        const body = res.body === null ? undefined : await res.arrayBuffer();
        if (!slot.up) return;
        slot.worker.postMessage(
          {
            t: "res",
            rid,
            status: res.status,
            statusText: res.statusText,
            headers,
            cookies: res.headers.getSetCookie(),
            body,
          } satisfies ToWorker,
          body ? [body] : [],
        );
      })
      .catch((err: unknown) => {
        if (slot.up)
          slot.worker.postMessage({
            t: "fail",
            rid,
            error: err instanceof Error ? err.message : String(err),
          });
      });
  }
}

/** Where the worker's module is: in Bun's virtual file system when compiled, else next to this source. */
function workerUrl(): string {
  if (Bun.main.startsWith("/$bunfs/")) return `./${WORKER_ENTRY}`;
  return new URL(`../${WORKER_ENTRY}`, import.meta.url).href;
}
