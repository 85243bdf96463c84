/**
 * Cost ratios for the linearity claims of the hostile suite (a parser a stranger can feed must stay linear in its
 * input). Times are the smallest per call over several rounds, because the neighbours on a shared machine only
 * ever add time; and a ratio over the limit is measured again (up to three times) before it counts, because one
 * unlucky round on a loaded 2-core box can still land in every sample. A re-measurement cannot hide a real
 * defect: 16× the input costs 256× in a quadratic parser, eight times any limit used here, every time.
 */
import { expect } from "bun:test";

/** Smallest time per call, in µs, over `rounds` rounds of `perRound` calls. */
export function minMicros(fn: () => unknown, rounds: number, perRound: number): number {
  let best = Number.POSITIVE_INFINITY;
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    for (let i = 0; i < perRound; i++) fn();
    best = Math.min(best, ((performance.now() - t0) * 1000) / perRound);
  }
  return best;
}

export interface RatioTiming {
  /** Rounds per measurement (default 7). */
  readonly rounds?: number;
  /** Calls per round of the small and the large input (default 16 and 1). */
  readonly perRoundSmall?: number;
  readonly perRoundLarge?: number;
}

/** The best of up to three measurements of cost(large) / cost(small): stops at the first one within `limit`. */
export function costRatio(
  small: () => unknown,
  large: () => unknown,
  limit: number,
  t: RatioTiming = {},
): number {
  const rounds = t.rounds ?? 7;
  let best = Number.POSITIVE_INFINITY;
  for (let attempt = 0; attempt < 3 && best > limit; attempt++) {
    const tSmall = minMicros(small, rounds, t.perRoundSmall ?? 16);
    const tLarge = minMicros(large, rounds, t.perRoundLarge ?? 1);
    best = Math.min(best, tLarge / tSmall);
  }
  return best;
}

/** Expects cost(large) ≤ limit × cost(small), printing the figures when it is not. */
export function expectRatioAtMost(
  small: () => unknown,
  large: () => unknown,
  limit: number,
  t: RatioTiming = {},
): void {
  const ratio = costRatio(small, large, limit, t);
  if (ratio > limit) console.log(`cost ratio ${ratio.toFixed(1)} > ${limit}`);
  expect(ratio).toBeLessThanOrEqual(limit);
}
