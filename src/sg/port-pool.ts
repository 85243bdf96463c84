/**
 * The UDP source ports of the SG toward agents (`sg.udpSourcePorts`, default 55000–59999): one per session, so
 * firewall rules can name the range and the agent's replies come back to a socket that belongs to one session.
 * Handed out round-robin, so a port just released is the last to be reused (a late datagram from the agent for
 * an old session should not reach a new one).
 */

export interface PortRange {
  readonly from: number;
  readonly to: number;
}

export interface PortPool {
  /** A free port, or undefined when every port is taken. */
  take(): number | undefined;
  /** Returns a port taken from this pool; ports outside the range or not taken are ignored. */
  release(port: number): void;
  readonly size: number;
  readonly free: number;
}

/** The default source range (Horizon's PSG uses 55000 as its source port; SPEC §2). */
export const DEFAULT_UDP_SOURCE_PORTS: PortRange = { from: 55000, to: 59999 };

/**
 * @throws TypeError for a range that is not 1..65535 with from ≤ to (a config bug, refused at config check).
 * @example const pool = createPortPool({ from: 55000, to: 59999 }); const port = pool.take();
 */
export function createPortPool(range: PortRange): PortPool {
  const { from, to } = range;
  if (!Number.isInteger(from) || !Number.isInteger(to) || from < 1 || to > 65535 || from > to) {
    throw new TypeError(`udp source ports ${from}-${to}: expected 1..65535 with from <= to`);
  }
  const size = to - from + 1;
  const taken = new Uint8Array(size);
  let free = size;
  let cursor = 0;
  return {
    take() {
      if (free === 0) return undefined;
      for (let i = 0; i < size; i++) {
        const idx = (cursor + i) % size;
        if (taken[idx] === 0) {
          taken[idx] = 1;
          free--;
          cursor = (idx + 1) % size;
          return from + idx;
        }
      }
      return undefined;
    },
    release(port) {
      const idx = port - from;
      if (idx < 0 || idx >= size || taken[idx] === 0) return;
      taken[idx] = 0;
      free++;
    },
    size,
    get free() {
      return free;
    },
  };
}
