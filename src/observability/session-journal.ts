/**
 * Session verdicts and the session-end audit line (SPEC §8). One record per session id follows the session
 * across the CM and the SG — hello, auth, list, allocate, agent launch, SG TCP, first UDP from the client, first
 * UDP from the agent — and when the session ends, or stalls at one stage, ONE line names the last stage reached
 * and the likely cause, in the words an administrator would use to fix it. The SG's end also writes the audit
 * line with duration and bytes. Records are dropped at the end, so memory follows the live sessions.
 *
 * The CM and the SG only report facts (`reached`, `failed`, `traffic`, `ended`); the wording lives here.
 */
import type { Logger } from "./log.ts";

export const STAGES = [
  "hello",
  "auth",
  "list",
  "allocate",
  "agent-launch",
  "sg-tcp",
  "udp-from-client",
  "udp-from-agent",
] as const;
export type Stage = (typeof STAGES)[number];
const SG_STAGES: ReadonlySet<Stage> = new Set<Stage>(["sg-tcp", "udp-from-client", "udp-from-agent"]);

export interface Traffic {
  readonly bytesFromClient: number;
  readonly bytesToClient: number;
  readonly packetsFromClient?: number;
  readonly packetsToClient?: number;
}

export interface SessionJournal {
  /** The session got past `stage` (stages only move forward; an earlier one is ignored). */
  reached(sessionId: string, stage: Stage): void;
  /** The session failed at `stage` (what it tried next), with the cause as the log already words it. */
  failed(sessionId: string, stage: Stage, cause: string): void;
  /** The session was handed to the SG: its end is the SG's, not the CM pre-session's. */
  viaGateway(sessionId: string): void;
  /** Bytes relayed for the session (added up over its TCP connections and UDP flows). */
  traffic(sessionId: string, t: Traffic): void;
  /** The CM forgot the pre-session (bye, expiry, eviction). Ends the record unless the SG carries the session. */
  cmEnded(sessionId: string, reason: string): void;
  /** The SG removed the session (expired, closed after grace, revoked). Ends the record. */
  sgEnded(sessionId: string, reason: string): void;
  /** Live records (tests, metrics). */
  readonly size: number;
  /** Verdict lines written so far, by the stage they name ("done" or the last stage reached): fleet metrics. */
  readonly verdicts: Readonly<Record<string, number>>;
  stop(): void;
}

export interface JournalOptions {
  readonly log: Logger;
  /** A session with the SG that has not advanced for this long gets a stall verdict (once). Default 30 s. */
  readonly stallMs?: number;
  /** Seconds the SG waits for a first control connection (for the wording). */
  readonly pendingTtlSeconds?: number;
  readonly now?: () => number;
  /** How long after an SG end the lines wait for the relays' last byte counts (closes run on later ticks). */
  readonly settleMs?: number;
}

interface Entry {
  readonly id: string;
  readonly startedAt: number;
  stage: Stage | undefined;
  advancedAt: number;
  failure: { stage: Stage; cause: string } | undefined;
  viaGateway: boolean;
  stalled: boolean;
  ending: boolean;
  bytesFromClient: number;
  bytesToClient: number;
  packetsFromClient: number;
  packetsToClient: number;
}

const rank = (s: Stage | undefined) => (s === undefined ? -1 : STAGES.indexOf(s));

export function createSessionJournal(options: JournalOptions): SessionJournal {
  const { log } = options;
  const now = options.now ?? Date.now;
  const stallMs = options.stallMs ?? 30_000;
  const settleMs = options.settleMs ?? 100;
  const entries = new Map<string, Entry>();

  const entry = (id: string): Entry => {
    let e = entries.get(id);
    if (!e) {
      const t = now();
      e = {
        id,
        startedAt: t,
        stage: undefined,
        advancedAt: t,
        failure: undefined,
        viaGateway: false,
        stalled: false,
        ending: false,
        bytesFromClient: 0,
        bytesToClient: 0,
        packetsFromClient: 0,
        packetsToClient: 0,
      };
      entries.set(id, e);
    }
    return e;
  };

  const verdicts: Record<string, number> = {};
  const verdict = (e: Entry, how: "ended" | "stalled", reason: string) => {
    const stage = e.stage ?? "none";
    const cause = causeOf(e, how, {
      stallSeconds: Math.round(stallMs / 1000),
      pendingTtl: options.pendingTtlSeconds,
    });
    const done = e.stage === "udp-from-agent" || (!e.viaGateway && e.stage === "agent-launch");
    const named = done ? "done" : stage;
    verdicts[named] = (verdicts[named] ?? 0) + 1;
    // Bindings inline, not a child logger: creating a pino child costs more than the line itself.
    log[done || how === "ended" ? "info" : "warn"](
      {
        sessionId: e.id,
        verdict: true,
        stage: done ? "done" : stage,
        ...(e.failure ? { failedAt: e.failure.stage } : {}),
        outcome: how,
        reason,
        cause,
        durationMs: now() - e.startedAt,
      },
      `session verdict: ${done ? "done" : `reached ${stage}`}: ${cause}`,
    );
  };

  const end = (e: Entry, reason: string) => {
    entries.delete(e.id);
    if (!e.stalled || e.stage === "udp-from-agent") verdict(e, "ended", reason);
    if (e.viaGateway) {
      log.info(
        {
          sessionId: e.id,
          audit: true,
          event: "session_end",
          reason,
          durationMs: now() - e.startedAt,
          bytesFromClient: e.bytesFromClient,
          bytesToClient: e.bytesToClient,
          packetsFromClient: e.packetsFromClient,
          packetsToClient: e.packetsToClient,
        },
        `session end: ${reason}, ${e.bytesFromClient} bytes from the client, ${e.bytesToClient} to it`,
      );
    }
  };

  const timer = setInterval(
    () => {
      const t = now();
      for (const e of entries.values()) {
        if (!e.viaGateway || e.stalled || e.ending || e.stage === "udp-from-agent") continue;
        // The UDP relay words the "no UDP from the client" stall itself (it knows the NAT's other addresses).
        if (e.stage === "sg-tcp") continue;
        if (t - e.advancedAt >= stallMs) {
          e.stalled = true;
          verdict(e, "stalled", "no progress");
        }
      }
    },
    Math.max(50, Math.min(5_000, stallMs / 4)),
  );
  timer.unref?.();

  return {
    reached(id, stage) {
      // Only the CM opens a record (its hello comes first); an SG milestone for a session the journal does not
      // hold (already ended) must not open one that nothing would ever end.
      const e = SG_STAGES.has(stage) ? entries.get(id) : entry(id);
      if (!e) return;
      if (rank(stage) <= rank(e.stage)) return;
      e.stage = stage;
      e.advancedAt = now();
      e.failure = undefined;
      if (stage === "udp-from-client" || stage === "udp-from-agent") e.stalled = false;
    },
    failed(id, stage, cause) {
      const e = entry(id);
      e.failure = { stage, cause };
    },
    viaGateway(id) {
      entry(id).viaGateway = true;
    },
    traffic(id, t) {
      const e = entries.get(id);
      if (!e) return;
      e.bytesFromClient += t.bytesFromClient;
      e.bytesToClient += t.bytesToClient;
      e.packetsFromClient += t.packetsFromClient ?? 0;
      e.packetsToClient += t.packetsToClient ?? 0;
    },
    cmEnded(id, reason) {
      const e = entries.get(id);
      if (!e || e.viaGateway) return;
      end(e, `cm: ${reason}`);
    },
    sgEnded(id, reason) {
      const e = entries.get(id);
      if (!e || e.ending) return;
      e.ending = true;
      setTimeout(() => end(e, `sg: ${reason}`), settleMs).unref?.();
    },
    get size() {
      return entries.size;
    },
    verdicts,
    stop() {
      clearInterval(timer);
    },
  };
}

/** The likely cause for the last stage reached, worded for the administrator. */
function causeOf(
  e: Entry,
  how: "ended" | "stalled",
  o: { stallSeconds: number; pendingTtl: number | undefined },
): string {
  if (e.failure) return `${e.failure.stage} failed: ${e.failure.cause}`;
  const waited = how === "stalled" ? ` within ${o.stallSeconds} s` : "";
  switch (e.stage) {
    case undefined:
      return "no hello";
    case "hello":
      return "the client said hello but never signed in (user cancelled, or the client could not show the sign-in)";
    case "auth":
      return "signed in but never asked for the desktop list (client closed)";
    case "list":
      return "listed desktops but did not pick one (user cancelled, or no desktop entitled)";
    case "allocate":
      return "the broker picked a desktop but the agent launch did not finish";
    case "agent-launch":
      return e.viaGateway
        ? `allocated, but no TCP 4172 from the client${waited || ` within ${o.pendingTtl ?? 90} s`}: TCP 4172 blocked between client and gateway, or externalPcoipIp is not an address the client reaches`
        : "allocated; the client connects to the agent directly (no SG)";
    case "sg-tcp":
      return `no UDP from the client${waited}: UDP 4172 blocked between client and gateway`;
    case "udp-from-client":
      return `UDP from the client but none from the agent${waited}: UDP from the gateway's source ports (sg.udpSourcePorts) to the agent's 4172 blocked, or the agent is not answering`;
    case "udp-from-agent":
      return "media flowed both ways";
  }
}
