/**
 * Control connections for the UDP benchmarks. A UDP flow binds only to an ACTIVE session (one with a TCP control
 * connection through the SG), so before any media each admitted session gets its control connection: a TCP
 * connection to the SG's TCP relay that starts with a ClientHello carrying that session's SNI. The SG is
 * pass-through, so the "agent" end is a plain TCP listener here that accepts and holds the connections: no TLS
 * is needed to prove admission, and none burdens the measurement.
 */
import type { Socket, TCPSocketListener } from "bun";
import { clientHello, LOOPBACK } from "./net.ts";

export interface ControlAgent {
  readonly port: number;
  /** Connections the SG dialled to this agent so far. */
  readonly accepted: number;
  close(): void;
}

/** A TCP listener that plays the agent's TCP 4172 for control connections: accepts, discards, holds. */
export function startControlAgent(): ControlAgent {
  let accepted = 0;
  const open = new Set<Socket<undefined>>();
  const listener: TCPSocketListener<undefined> = Bun.listen({
    hostname: LOOPBACK,
    port: 0,
    socket: {
      open(s) {
        accepted++;
        open.add(s);
      },
      data() {},
      close(s) {
        open.delete(s);
      },
      error() {},
    },
  });
  return {
    port: listener.port,
    get accepted() {
      return accepted;
    },
    close() {
      listener.stop(true);
      for (const s of open) s.terminate();
    },
  };
}

export interface ControlConnections {
  readonly open: number;
  closeAll(): void;
}

/**
 * Opens one control connection per SNI through the SG's TCP relay (in batches, to keep the accept queue short)
 * and resolves once the agent has accepted every one of them (so every session is ACTIVE).
 */
export async function openControlConnections(
  sgTcpPort: number,
  snis: readonly string[],
  agent: ControlAgent,
  batch = 100,
): Promise<ControlConnections> {
  const sockets = new Set<Socket<undefined>>();
  const target = agent.accepted + snis.length;
  for (let i = 0; i < snis.length; i += batch) {
    await Promise.all(
      snis.slice(i, i + batch).map((sni) =>
        Bun.connect({
          hostname: LOOPBACK,
          port: sgTcpPort,
          socket: {
            open(s) {
              sockets.add(s);
              s.write(clientHello(sni));
            },
            data() {},
            close(s) {
              sockets.delete(s);
            },
            error() {},
          },
        }),
      ),
    );
  }
  const deadline = Date.now() + 15_000;
  while (agent.accepted < target) {
    if (Date.now() > deadline) {
      throw new Error(
        `opening control connections: the agent accepted ${agent.accepted - (target - snis.length)} of ${snis.length} through the SG`,
      );
    }
    await Bun.sleep(10);
  }
  return {
    get open() {
      return sockets.size;
    },
    closeAll() {
      for (const s of sockets) s.terminate();
    },
  };
}
