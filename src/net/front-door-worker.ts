/**
 * A front-door worker (issue 21): one thread of the appliance's process that runs the CM's HTTPS listeners
 * (http1.ts, SO_REUSEPORT on the same cm.listen addresses as the other workers) so the kernel spreads new
 * connections, and their TLS handshakes, over the cores. It holds no CM state: each request goes as plain data to
 * the main thread (platform/front-door-workers.ts), which runs the CM and posts the answer back; each connection
 * is told to the main thread, which keeps the per-IP cap, cm.maxConnections and the descriptor budget for all
 * workers at once and may cut it.
 *
 * Loaded by `new Worker(…)` only (the compiled executable lists it as a second entry point: scripts/build.ts).
 */
import { compileTrustedProxies } from "./client-address.ts";
import type { FromWorker, ListenerSpec, RelayedAnswer, ToWorker } from "./front-door-messages.ts";
import { type Http1Server, startHttp1Server } from "./http1.ts";
import type { ConnInfo, RelayedRequest, RelayedResponse, RemoteConnectionGate } from "./http1-options.ts";

/**
 * Connections still waiting for the main thread's verdict, at most; beyond, new ones are closed at once (counted
 * as a descriptor refusal). The main thread's descriptor budget counts a connection once judged, so this bounds
 * the descriptors a worker can hold past the budget while the main thread is slow to answer.
 */
const MAX_UNJUDGED = 512;

interface Channel {
  postMessage(m: FromWorker, transfer?: ArrayBuffer[]): void;
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
}

/** The worker's listeners by cm.listen entry, the requests posted and not answered yet, and the numbering. */
class FrontDoorWorker {
  readonly #ch: Channel;
  readonly #servers = new Map<string, Http1Server>();
  /** Every server this worker opened, stopped ones too: their connections stay open and may still be cut. */
  readonly #all = new Set<Http1Server>();
  readonly #answers = new Map<number, (a: RelayedAnswer) => void>();
  #nextId = 1;
  #nextRid = 1;
  #unjudged = 0;

  constructor(ch: Channel) {
    this.#ch = ch;
  }

  handle(m: ToWorker): void {
    switch (m.t) {
      case "res":
      case "fail":
      case "drop": {
        const settle = this.#answers.get(m.rid);
        this.#answers.delete(m.rid);
        settle?.(m);
        return;
      }
      case "verdict":
        this.#unjudged--;
        if (!m.ok) this.#cut(m.id);
        return;
      case "cut":
        this.#cut(m.id);
        return;
      case "open":
        this.#done(m.seq, () => this.#open(m.spec));
        return;
      case "tls":
        this.#done(m.seq, () => {
          this.#servers.get(m.key)?.reloadTls(m.tls);
          return undefined;
        });
        return;
      case "close":
        this.#done(m.seq, () => {
          this.#servers.get(m.key)?.stop();
          this.#servers.delete(m.key);
          return undefined;
        });
        return;
      case "stop":
        this.#done(m.seq, () => {
          for (const s of this.#all) s.stop({ closeActive: true });
          this.#servers.clear();
          return undefined;
        });
        return;
    }
  }

  #done(seq: number, work: () => number | undefined): void {
    try {
      const port = work();
      this.#ch.postMessage(port === undefined ? { t: "done", seq } : { t: "done", seq, port });
    } catch (e) {
      this.#ch.postMessage({ t: "done", seq, error: e instanceof Error ? e.message : String(e) });
    }
  }

  #open(spec: ListenerSpec): number {
    const proxyFrom = compileTrustedProxies(spec.proxyProtocolFrom);
    const s = startHttp1Server({
      hostname: spec.hostname,
      port: spec.port,
      tls: spec.tls,
      limits: spec.limits,
      relay: (req, info) => this.#relay(req, info),
      gate: this.#gate(spec.key),
      ...(proxyFrom.size > 0 ? { proxyProtocolFrom: proxyFrom } : {}),
      onRefused: (reason, info) => this.#ch.postMessage({ t: "refused", reason, info }),
      onError: (err) =>
        this.#ch.postMessage({
          t: "log",
          level: "error",
          fields: { err: String(err) },
          msg: "front door: request handler failed",
        }),
    });
    this.#servers.set(spec.key, s);
    this.#all.add(s);
    return s.port;
  }

  #gate(key: string): RemoteConnectionGate {
    return {
      opened: (peer) => {
        if (this.#unjudged >= MAX_UNJUDGED) {
          this.#ch.postMessage({ t: "busy", peer });
          return undefined;
        }
        const id = this.#nextId++;
        this.#unjudged++;
        this.#ch.postMessage({ t: "conn", id, key, peer });
        return id;
      },
      addressed: (id, client) => this.#ch.postMessage({ t: "addr", id, client }),
      closed: (id) => this.#ch.postMessage({ t: "closed", id }),
    };
  }

  #cut(id: number): void {
    for (const s of this.#all) s.cut(id);
  }

  /** Posts the request (its body moved, not copied again) and resolves with the main thread's answer. */
  #relay(req: RelayedRequest, info: ConnInfo): Promise<RelayedResponse> {
    const rid = this.#nextRid++;
    // The body may be a view of the connection's read buffer: one copy into its own buffer, which is then moved.
    const body = req.body ? req.body.slice() : undefined;
    const answer = new Promise<RelayedAnswer>((resolve) => this.#answers.set(rid, resolve));
    this.#ch.postMessage(
      { t: "req", rid, id: info.id ?? 0, req: { ...req, body }, info },
      body ? [body.buffer as ArrayBuffer] : [],
    );
    return answer.then(relayedResponse);
  }
}

/** The answer as the front door writes it (no Response built: the body is whole, written with the head). */
function relayedResponse(a: RelayedAnswer): RelayedResponse {
  if (a.t === "fail") throw new Error(a.error);
  // The connection was refused: it is closed already (the verdict came first), so nothing is written.
  if (a.t === "drop") return { status: 503, statusText: "", headers: [], cookies: [], body: undefined };
  const { status, statusText, headers, cookies, body } = a;
  return { status, statusText, headers, cookies, body: body ? new Uint8Array(body) : undefined };
}

const channel = globalThis as unknown as Channel;
const worker = new FrontDoorWorker(channel);
channel.onmessage = (e) => worker.handle(e.data);
channel.postMessage({ t: "ready" });
