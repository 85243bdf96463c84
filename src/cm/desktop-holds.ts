/**
 * Who holds which desktop when collaboration is off (`enableCollaboration = false`): a desktop allocated to one
 * user is refused to another while the first user's session lives. One table per process (platform/node-state.ts),
 * handed to every reload generation, so `systemctl reload` never frees a desktop somebody is using.
 *
 * A hold is `pending` from the allocation's start until the pipeline ends (cm/establish.ts): a pending hold always
 * counts, so two users racing for one desktop cannot both launch on it. Once the allocation succeeded the hold
 * lives as long as the SG still has the session (`isLive`), or — without the SG (LAN mode), where nothing tells
 * when the user leaves — for `holdMs` after the allocation.
 */

export interface DesktopHold {
  readonly user: string;
  readonly sessionId: string;
  /** LAN mode: the hold ends at this time. */
  readonly until: number;
  /** The allocation that took it is still under way. */
  pending: boolean;
}

/** The claim an allocation holds until its pipeline ends: `end(true)` keeps the hold, `end(false)` frees it. */
export interface HoldClaim {
  end(succeeded: boolean): void;
}

export type ClaimResult =
  | { readonly ok: true; readonly claim: HoldClaim }
  | { readonly ok: false; readonly holder: string };

export class DesktopHolds {
  readonly #holds = new Map<string, DesktopHold>();
  readonly #isLive: ((sessionId: string) => Promise<boolean>) | undefined;

  /** @param isLive whether the SG still has the session (absent in LAN mode: holds last `holdMs`). */
  constructor(isLive?: (sessionId: string) => Promise<boolean>) {
    this.#isLive = isLive;
  }

  get size(): number {
    return this.#holds.size;
  }

  /**
   * Takes `resourceId` for (`user`, `sessionId`), unless another user's hold on it is live. The same user (any
   * session) and the same session may always take it again.
   */
  async claim(
    resourceId: string,
    user: string,
    sessionId: string,
    now: number,
    holdMs: number,
  ): Promise<ClaimResult> {
    for (;;) {
      const h = this.#holds.get(resourceId);
      if (h && h.user.toLowerCase() !== user.toLowerCase() && h.sessionId !== sessionId) {
        const live = await this.#live(h, now);
        // The table may have changed while the SG answered: look again rather than overwrite a newer claim.
        if (this.#holds.get(resourceId) !== h) continue;
        if (live) return { ok: false, holder: h.user };
      }
      const mine: DesktopHold = { user, sessionId, until: now + holdMs, pending: true };
      this.#holds.set(resourceId, mine);
      return {
        ok: true,
        claim: {
          end: (succeeded) => {
            if (this.#holds.get(resourceId) !== mine) return;
            if (succeeded) mine.pending = false;
            else this.#holds.delete(resourceId);
          },
        },
      };
    }
  }

  /** Forgets holds whose session is over. */
  async sweep(now: number): Promise<void> {
    for (const [id, h] of [...this.#holds]) {
      const live = await this.#live(h, now);
      if (!live && this.#holds.get(id) === h) this.#holds.delete(id);
    }
  }

  clear(): void {
    this.#holds.clear();
  }

  async #live(h: DesktopHold, now: number): Promise<boolean> {
    if (h.pending) return true;
    return this.#isLive ? this.#isLive(h.sessionId) : now < h.until;
  }
}
