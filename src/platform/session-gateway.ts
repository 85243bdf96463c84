/**
 * The CM's way into the SG (cm/establish.ts `SessionGateway`) over the SG's admission table in this process. The
 * calls are asynchronous so that admissions can later live elsewhere (a Worker, another node) without the CM
 * changing again.
 */
import type { GatewayAdmission, SessionGateway } from "../cm/server.ts";
import type { Admissions } from "../sg/admissions.ts";

export interface GatewayOptions {
  readonly admissions: Admissions;
  /** The SG address for a client (externalPcoipIp of its family and the SG port). */
  readonly externalAddressFor: (clientIp: string) => { ip: string; port: number } | undefined;
}

/** @example const gateway = createSessionGateway({ admissions, externalAddressFor: () => ({ ip, port }) }); */
export function createSessionGateway(o: GatewayOptions): SessionGateway {
  const { admissions } = o;
  return {
    async admit(rec: GatewayAdmission) {
      const r = admissions.admit(rec);
      return r.ok ? { ok: true } : { ok: false, reason: r.reason };
    },
    async externalAddressFor(clientIp) {
      return o.externalAddressFor(clientIp);
    },
    async isLive(sessionId) {
      return admissions.get(sessionId) !== undefined;
    },
  };
}
