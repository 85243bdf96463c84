/**
 * One connection of the TCP relay (tcp-relay.ts): the client socket, the agent socket once dialled, the ClientHello
 * bytes read while the relay decides, and the byte pump between the two sides once it relays (both directions,
 * backpressure, half-close). Both sockets carry this object as their Bun `data`. The relay decides what happens to
 * the connection (hello, admission, dial, close and accounting); this type only holds its state and moves bytes.
 */
import type { Socket } from "bun";
import type { Logger } from "../observability/log.ts";
import type { Admission } from "./admissions.ts";
import { type HelloWalk, newHelloWalk } from "./client-hello.ts";

export type TcpConnectionPhase = "hello" | "dialing" | "relaying" | "closed";

/** "up": client → agent; "down": agent → client. */
export type PumpDirection = "up" | "down";

/** The relay's byte counters the pump adds to (TcpRelayCounters has them). */
export interface PumpCounters {
  bytesToAgent: number;
  bytesToClient: number;
  pauses: number;
}

const NO_BYTES = new Uint8Array(0);

export class TcpConnection {
  readonly clientIp: string;
  readonly clientPort: number;
  readonly openedAt = Date.now();
  agent: Socket<TcpConnection> | undefined;
  phase: TcpConnectionPhase = "hello";
  /** ClientHello bytes read so far (grown by doubling, capped near the peek limit). */
  hello: Uint8Array = NO_BYTES;
  helloLen = 0;
  /** Parse again once helloLen reaches this. */
  helloWant = 1;
  /** The ClientHello record walk so far (records already checked are not walked again). */
  readonly helloWalk: HelloWalk = newHelloWalk();
  timer: ReturnType<typeof setTimeout> | undefined;
  /** The admission the connection was matched to (undefined until its ClientHello matched one). */
  admission: Admission | undefined;
  log: Logger | undefined;
  /** Descriptors of the relay's budget this connection holds (given back once, when it finishes). */
  fds = 0;
  /**
   * The dial toward the agent: "pending" from Bun.connect until its socket opens or fails. A pending dial cannot
   * be cancelled, so a connection that finishes meanwhile keeps owing the agent's descriptor until it settles.
   */
  dial: "none" | "pending" | "settled" = "none";
  agentFdOwed = false;
  /** Bytes accepted from one side that the other side's socket did not take yet (backpressure). */
  toAgent: Uint8Array | undefined;
  toClient: Uint8Array | undefined;
  /** FIN received from that side. */
  clientFin = false;
  agentFin = false;
  clientClosed = false;
  agentClosed = false;
  bytesUp = 0;
  bytesDown = 0;
  closedBy = "";

  constructor(
    readonly client: Socket<TcpConnection>,
    clientIp: string,
  ) {
    this.clientIp = clientIp;
    this.clientPort = client.remotePort;
  }

  /** "ip:port" of the client, for log lines. */
  get clientText(): string {
    return `${this.clientIp}:${this.clientPort}`;
  }

  /** Clears the hello or dial deadline. */
  clearTimer(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Ends both sockets abruptly (refusals, revocation, stop). */
  terminateBoth(): void {
    this.client.terminate();
    this.agent?.terminate();
  }

  // ---- the ClientHello buffer ----

  /** Appends ClientHello bytes; growth stops one chunk past the peek limit. */
  appendHello(chunk: Uint8Array, maxHelloBytes: number): void {
    const needed = this.helloLen + chunk.length;
    if (needed > this.hello.length) {
      // Growth stops one chunk past the peek limit: the parser refuses anything longer anyway.
      const grown = new Uint8Array(
        Math.max(needed, Math.min(maxHelloBytes, Math.max(1024, this.hello.length * 2))),
      );
      grown.set(this.hello.subarray(0, this.helloLen));
      this.hello = grown;
    }
    this.hello.set(chunk, this.helloLen);
    this.helloLen = needed;
  }

  /** The ClientHello bytes read so far, handed over once (to be replayed to the agent); the buffer is let go. */
  takeHello(): Uint8Array {
    const hello = this.hello.subarray(0, this.helloLen);
    this.hello = NO_BYTES;
    this.helloLen = 0;
    return hello;
  }

  // ---- the byte pump of a relaying connection ----

  /** Writes a chunk toward one side; what the socket does not take waits, and the source pauses (backpressure). */
  forward(dir: PumpDirection, chunk: Uint8Array, counters: PumpCounters): void {
    if (chunk.length === 0) return;
    const to = dir === "up" ? this.agent : this.client;
    const from = dir === "up" ? this.client : this.agent;
    if (dir === "up") counters.bytesToAgent += chunk.length;
    else counters.bytesToClient += chunk.length;
    if (dir === "up") this.bytesUp += chunk.length;
    else this.bytesDown += chunk.length;
    const waiting = dir === "up" ? this.toAgent : this.toClient;
    if (!to) return;
    if (waiting !== undefined) {
      // Bun may deliver data already read after pause(); keep it behind what is waiting.
      this.#setWaiting(dir, concat(waiting, chunk));
      from?.pause();
      return;
    }
    const n = to.write(chunk);
    if (n === chunk.length) return;
    if (n < 0) {
      this.#setWaiting(dir, chunk); // the socket is closing; its close handler decides what happens
      return;
    }
    this.#setWaiting(dir, chunk.subarray(n));
    counters.pauses++;
    from?.pause();
  }

  /** The socket toward `dir` can take more: flush what waits, then resume the source or pass on a FIN. */
  drained(dir: PumpDirection): void {
    const to = dir === "up" ? this.agent : this.client;
    const from = dir === "up" ? this.client : this.agent;
    const waiting = dir === "up" ? this.toAgent : this.toClient;
    if (!to || waiting === undefined) return;
    const n = to.write(waiting);
    if (n >= 0 && n < waiting.length) {
      this.#setWaiting(dir, waiting.subarray(n));
      return;
    }
    this.#setWaiting(dir, undefined);
    const sourceFinished =
      dir === "up" ? this.clientFin || this.clientClosed : this.agentFin || this.agentClosed;
    if (sourceFinished) this.passFin(dir);
    else if (this.phase === "relaying") from?.resume();
  }

  /** The source of `dir` sent FIN (or closed): once nothing waits, shut down writing toward the other side. */
  passFin(dir: PumpDirection): void {
    if ((dir === "up" ? this.toAgent : this.toClient) !== undefined) return; // drained() calls again
    const to = dir === "up" ? this.agent : this.client;
    const toClosed = dir === "up" ? this.agentClosed : this.clientClosed;
    if (!to || toClosed) return;
    const sourceClosed = dir === "up" ? this.clientClosed : this.agentClosed;
    // A source that closed entirely cannot read our answer either: close the other side, not just half of it.
    if (sourceClosed) to.end();
    else to.shutdown();
  }

  #setWaiting(dir: PumpDirection, bytes: Uint8Array | undefined): void {
    if (dir === "up") this.toAgent = bytes;
    else this.toClient = bytes;
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
