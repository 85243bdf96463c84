/**
 * The per-test fixture of the appliance operations tests: what one test started (the appliance process, the fake
 * agent, and whatever it opened against them) is ended after the test, pass or fail, by the `afterEach` that
 * `applianceTest()` registers. Five test files kept the same three variables and hook, and two of them the same
 * "one live session" setup; this is that one copy.
 *
 * const t = applianceTest();                                   // at file scope: registers the afterEach
 * const { app, agent } = await t.start({ env });              // recorded, so the hook ends them
 * t.closers.push(() => c.close());                             // closed first, last opened first
 * const { app, control, udp } = await t.liveSession();         // signed in, control and UDP both echoing
 */
import { afterEach } from "bun:test";
import type { ControlClient } from "./agent-endpoint.ts";
import {
  type ApplianceProcess,
  type ApplianceProcessOptions,
  startApplianceProcess,
} from "./appliance-process.ts";
import {
  type Closer,
  endTest,
  openControl,
  sgEnv,
  signIn,
  tcpRoundTrip,
  type UdpPeer,
  udpPeer,
} from "./appliance-session.ts";
import { type FakeAgent, startFakeAgent } from "./fake-agent.ts";

/** An appliance with one live session: a relayed control connection and a UDP flow, both proven to echo. */
export interface LiveSession {
  readonly app: ApplianceProcess;
  readonly agent: FakeAgent;
  readonly control: ControlClient;
  readonly udp: UdpPeer;
  readonly sessionId: string;
}

/** What the running test started; `end` stops it all, closers first (last first), then the process, the agent. */
export class ApplianceTest {
  app: ApplianceProcess | undefined;
  agent: FakeAgent | undefined;
  readonly closers: Closer[] = [];

  async end(): Promise<void> {
    await endTest(this.closers, this.app, this.agent);
    this.app = undefined;
    this.agent = undefined;
  }

  /** A fake agent (with its session endpoint) and an appliance for it, its env `sgEnv()` plus `options.env`. */
  async start(
    options: Omit<ApplianceProcessOptions, "agent"> = {},
  ): Promise<{ app: ApplianceProcess; agent: FakeAgent }> {
    const agent = await startFakeAgent({ endpoint: true });
    this.agent = agent;
    const app = await startApplianceProcess({ ...options, agent, env: { ...sgEnv(), ...options.env } });
    this.app = app;
    return { app, agent };
  }

  /** `start({ env })`, then one session signed in, relaying TCP and UDP. */
  async liveSession(env: Record<string, string> = {}): Promise<LiveSession> {
    const { app, agent } = await this.start({ env });
    const s = await signIn(app);
    this.closers.push(() => s.client.close());
    const control = await openControl(app);
    this.closers.push(() => control.close());
    await tcpRoundTrip(control, "<before>");
    const udp = await udpPeer(app);
    this.closers.push(() => udp.close());
    await udp.roundTrip("<udp-before>");
    return { app, agent, control, udp, sessionId: s.sessionId };
  }
}

/** The fixture of one test file: call at file scope, so its `afterEach` ends what each test started. */
export function applianceTest(): ApplianceTest {
  const t = new ApplianceTest();
  afterEach(() => t.end());
  return t;
}
