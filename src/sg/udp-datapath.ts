/**
 * The UDP relay's two data paths behind one small interface. The flow table (flow-table.ts) decides which client
 * endpoint belongs to which session; a data path moves the datagrams:
 * - userspace: the relay's own sockets carry every datagram (this object has nothing to do);
 * - kernel (kernel/fastpath.ts): after the first datagrams, nftables carries the flow both ways and the relay
 *   sees nothing more of it; bytes and packets come back from the kernel's counters on each sweep.
 */
import type { Flow, FlowEvents } from "./flow-table.ts";

export type UdpPathKind = "userspace" | "kernel";

export interface UdpDataPath extends FlowEvents {
  readonly kind: UdpPathKind;
  /** Flows the kernel carries now (always 0 on the userspace path). */
  readonly carriedFlows: number;
  /** The relay forwarded an agent datagram of this flow itself (the kernel path may take the answers over now). */
  sawReply(flow: Flow): void;
  /** Reports the traffic carried since the last call (kernel counters); called on the relay's sweep. */
  collect(force?: boolean): void;
  stop(): Promise<void>;
}

/** The userspace path: the relay's sockets are the data path. */
export function userspacePath(): UdpDataPath {
  return {
    kind: "userspace",
    carriedFlows: 0,
    carry(_flow: Flow) {},
    release(_flow: Flow) {},
    sawReply(_flow: Flow) {},
    collect() {},
    async stop() {},
  };
}
