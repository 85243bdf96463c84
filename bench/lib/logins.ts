/**
 * PCoIP logins as a client makes them, for the CM establishment benchmark: one TLS connection (kept alive)
 * carrying hello → authenticate → get-resource-list → allocate-resource → bye, with the real client's request
 * headers and its cookie rule (only an exactly spelled `Set-Cookie: JSESSIONID=…` is kept), as in
 * test/peers/pcoip-client.ts. That client runs on node:tls and parses every answer; this one uses Bun's native
 * TLS and only looks for the result, so the load generator does not starve the CM of the cores it shares with it.
 * Driven open loop (a fixed arrival rate, what "N logins/s" means) or closed loop (N clients each starting the
 * next login when the last ends, what "N in flight" means).
 */
import type { Socket } from "bun";

export interface LoginTarget {
  readonly port: number;
  readonly ca: string;
  /** Who signs in (default bench / bench in domain bench.test) and which desktop is allocated (default "0"). */
  readonly user?: string;
  readonly password?: string;
  readonly resourceId?: string;
}

const doc = (inner: string) =>
  `<?xml version='1.0' encoding='UTF-8'?><pcoip-client version='2.1'>${inner}</pcoip-client>`;
const CLIENT_INFO =
  "<client-info><product-name>Teradici PCoIP Desktop Client</product-name><product-version>23.01.2</product-version><platform>Ubuntu 22.04 linux x86_64</platform><locale>en_US</locale><hostname>laptop-17</hostname><serial-number>02:42:ac:11:00:02</serial-number><device-name>laptop-17</device-name><pcoip-unique-id>02:42:ac:11:00:02</pcoip-unique-id></client-info>";
/** The hello a Teradici client sends (PROTOCOL.md §2); also the request of the CM-like load (cm-load.ts). */
export const HELLO_DOCUMENT = doc(
  `<hello>${CLIENT_INFO}<caps><cap>CAP_NO_AUTHENTICATION</cap></caps><server-address><ip-address>127.0.0.1</ip-address><hostname>localhost</hostname></server-address></hello>`,
);
/** [step, body, what the answer must contain]. */
type Step = readonly [string, string, string];

const stepsCache = new Map<string, readonly Step[]>();

/** The five requests of a login of `t`'s user on `t`'s desktop (built once per user and desktop). */
function stepsFor(t: LoginTarget): readonly Step[] {
  const user = t.user ?? "bench";
  const password = t.password ?? "bench";
  const resourceId = t.resourceId ?? "0";
  const key = `${user}\n${password}\n${resourceId}`;
  const hit = stepsCache.get(key);
  if (hit) return hit;
  const steps: readonly Step[] = [
    ["hello", HELLO_DOCUMENT, "<hello-resp"],
    [
      "authenticate",
      doc(
        `<authenticate method='password'><username>${user}</username><password>${password}</password><domain>bench.test</domain></authenticate>`,
      ),
      "<result-id>AUTH_SUCCESSFUL",
    ],
    [
      "get-resource-list",
      doc(
        "<get-resource-list><protocols><protocol>PCOIP</protocol></protocols><resource-types><resource-type>DESKTOP</resource-type></resource-types></get-resource-list>",
      ),
      "<result-id>LIST_SUCCESSFUL",
    ],
    [
      "allocate-resource",
      doc(
        `<allocate-resource><resource-id>${resourceId}</resource-id><protocol>PCOIP</protocol><client-info><ip-address>192.168.1.23</ip-address><mac-address>02:42:ac:11:00:02</mac-address></client-info></allocate-resource>`,
      ),
      "<result-id>ALLOC_SUCCESSFUL",
    ],
    ["bye", doc("<bye/>"), "bye-resp"],
  ];
  stepsCache.set(key, steps);
  return steps;
}

function request(port: number, body: string, cookie: string | undefined): string {
  return [
    "POST /pcoip-broker/xml HTTP/1.1",
    `Host: 127.0.0.1:${port}`,
    "User-Agent: Mozilla/4.0 (compatible; MSIE 6.0)",
    "Accept: text/*, application/octet-stream",
    "Content-Type: text/xml; charset=UTF-8",
    "Connection: Keep-Alive",
    "Cache-Control: no-cache",
    ...(cookie ? [`Cookie: JSESSIONID=${cookie}`] : []),
    `Content-Length: ${Buffer.byteLength(body)}`,
    "",
    body,
  ].join("\r\n");
}

/** Length of the first complete HTTP/1.1 response in `text` (Content-Length or chunked), or -1. */
function responseEnd(text: string): number {
  const headEnd = text.indexOf("\r\n\r\n");
  if (headEnd < 0) return -1;
  const head = text.slice(0, headEnd);
  const cl = /\r\ncontent-length:\s*(\d+)/i.exec(head);
  if (cl) {
    const end = headEnd + 4 + Number(cl[1]);
    return text.length >= end ? end : -1;
  }
  const last = text.indexOf("\r\n0\r\n\r\n", headEnd);
  return last < 0 ? -1 : last + 7;
}

interface Conversation {
  step: number;
  text: string;
  cookie: string | undefined;
  t0: number;
  settle(err: Error | undefined): void;
}

/** One login; resolves with its duration in ms, rejects naming the step that failed. */
export function login(t: LoginTarget): Promise<number> {
  const done = Promise.withResolvers<number>();
  const conv: Conversation = {
    step: 0,
    text: "",
    cookie: undefined,
    t0: performance.now(),
    settle(err) {
      conv.settle = () => {};
      if (err) done.reject(err);
      else done.resolve(performance.now() - conv.t0);
    },
  };
  const steps = stepsFor(t);
  const send = (s: Socket<Conversation>) => s.write(request(t.port, steps[conv.step]![1], conv.cookie));
  Bun.connect<Conversation>({
    hostname: "127.0.0.1",
    port: t.port,
    data: conv,
    tls: { ca: t.ca, serverName: "localhost" },
    socket: {
      handshake(s, ok, err) {
        if (!ok) {
          conv.settle(new Error(`TLS: ${err?.message ?? "handshake failed"}`));
          s.end();
        } else send(s);
      },
      data(s, d) {
        conv.text += d.toString("latin1");
        const end = responseEnd(conv.text);
        if (end < 0) return;
        const answer = conv.text.slice(0, end);
        conv.text = conv.text.slice(end);
        const [name, , expect] = steps[conv.step]!;
        const cookie = /\r\nSet-Cookie: JSESSIONID=([^;\r]*)/.exec(answer);
        if (cookie) conv.cookie = cookie[1];
        if (!answer.startsWith("HTTP/1.1 200") || !answer.includes(expect)) {
          const id = /<result-id>([^<]*)/.exec(answer)?.[1] ?? "";
          conv.settle(new Error(`${name}: ${answer.slice(0, 12)} ${id}`.trim()));
          s.end();
          return;
        }
        conv.step++;
        if (conv.step < steps.length) send(s);
        else {
          conv.settle(undefined);
          s.end();
        }
      },
      close() {
        conv.settle(new Error(`${steps[conv.step]?.[0] ?? "after bye"}: connection closed`));
      },
      error(_s, err) {
        conv.settle(new Error(`${steps[conv.step]?.[0]}: ${err.message}`));
      },
      connectError(_s, err) {
        conv.settle(new Error(`connect: ${err.message}`));
      },
    },
  }).catch((e: unknown) => conv.settle(e instanceof Error ? e : new Error(String(e))));
  return done.promise;
}

export interface LoginStats {
  readonly completed: number;
  readonly failed: number;
  readonly perSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxInFlight: number;
  /** Logins an open-loop run could not start because `cap` were already in flight. */
  readonly skipped: number;
  /** A few distinct failure messages. */
  readonly errors: readonly string[];
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/**
 * Runs logins for `seconds`: open loop at `rate` per second (at most `cap` in flight) or closed loop with
 * `concurrency` clients. Only logins started inside the window count; the run waits for them to finish.
 */
export async function runLogins(
  t: LoginTarget,
  o: { seconds: number } & ({ rate: number; cap?: number } | { concurrency: number }),
): Promise<LoginStats> {
  const times: number[] = [];
  const errors = new Set<string>();
  let failed = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  let skipped = 0;
  const pending = new Set<Promise<void>>();
  const t0 = performance.now();
  const end = t0 + o.seconds * 1000;
  const one = () => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    const p = login(t)
      .then((ms) => {
        times.push(ms);
      })
      .catch((e: unknown) => {
        failed++;
        if (errors.size < 5) errors.add(e instanceof Error ? e.message.slice(0, 160) : String(e));
      })
      .finally(() => {
        inFlight--;
        pending.delete(p);
      });
    pending.add(p);
    return p;
  };
  if ("rate" in o) {
    const cap = o.cap ?? 5000;
    let started = 0;
    while (performance.now() < end) {
      const due = Math.floor(((performance.now() - t0) / 1000) * o.rate);
      while (started < due) {
        started++;
        if (inFlight >= cap) skipped++;
        else void one();
      }
      await Bun.sleep(2);
    }
  } else {
    const loop = async () => {
      while (performance.now() < end) await one();
    };
    await Promise.all(Array.from({ length: o.concurrency }, loop));
  }
  while (pending.size > 0) await Promise.all([...pending]);
  // Completed per second of the whole run, the tail included: a CM that falls behind shows a lower rate.
  const windowS = (performance.now() - t0) / 1000;
  times.sort((a, b) => a - b);
  return {
    completed: times.length,
    failed,
    perSecond: times.length / windowS,
    p50Ms: percentile(times, 50),
    p99Ms: percentile(times, 99),
    maxInFlight,
    skipped,
    errors: [...errors],
  };
}
