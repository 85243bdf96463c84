/**
 * The contract every broker (src/cm/brokers/broker.ts) keeps, as one suite each implementation's test runs:
 *
 *   runBrokerContract("builtin", async () => ({ broker, good, badPassword, entitledResourceId, … }));
 *
 * A case an implementation cannot meet is skipped only with a written reason: `{ skip: { "case name": "why" } }`.
 * Not a test file itself (no `.test.ts`): it only defines the suite.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Broker, BrokerConversation, ConversationContext } from "../../src/cm/brokers/broker.ts";
import { createLogger, memoryDestination } from "../../src/observability/log.ts";
import type { Hello } from "../../src/protocol/types.ts";

export interface BrokerContractSetup {
  readonly broker: Broker;
  /** Credentials that sign in and are entitled to `entitledResourceId`. */
  readonly good: { readonly username: string; readonly password: string; readonly domain: string };
  /** A wrong password for `good.username`. */
  readonly badPassword: string;
  readonly entitledResourceId: string;
  /** A resource id that does not exist (or is not entitled). */
  readonly unknownResourceId: string;
  close(): Promise<void>;
}

export const CONTRACT_CASES = [
  "probe answers hello-resp offering password authentication",
  "hello answers hello-resp offering password authentication",
  "a wrong password fails with AUTH_FAILED_* and no identity, and may be retried",
  "good credentials give AUTH_SUCCESSFUL_AND_COMPLETE with the identity",
  "the list after sign-in holds the entitled resource",
  "allocating the entitled resource gives a complete target or an agent to launch on",
  "allocating an unknown resource is refused with a failure result",
  "bye answers bye-resp and close() never throws",
  "conversations are independent: one's sign-in is not another's",
] as const;
export type ContractCase = (typeof CONTRACT_CASES)[number];

export function runBrokerContract(
  name: string,
  setup: () => Promise<BrokerContractSetup>,
  opts: { skip?: Partial<Record<ContractCase, string>> } = {},
): void {
  describe(`broker contract: ${name}`, () => {
    let s: BrokerContractSetup;
    const sink = memoryDestination();
    const log = createLogger({ level: "debug", destination: sink });
    let n = 0;
    const ctx = (): ConversationContext => {
      n++;
      return {
        sessionLogId: `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`,
        clientIp: "127.0.0.1",
        clientLogId: "",
        log,
      };
    };
    const hello = (probe = false): Hello => ({
      op: "hello",
      clientInfo: {
        productName: probe ? "QueryBrokerClient" : "Teradici PCoIP Desktop Client",
        productVersion: probe ? "1.0" : "23.01.2",
        platform: probe ? "PCoIP" : "linux",
        locale: "en_US",
        hostname: "laptop-17",
        serialNumber: "02:42:ac:11:00:02",
        deviceName: "laptop-17",
        pcoipUniqueId: "02:42:ac:11:00:02",
      },
      caps: [],
      serverAddress: { ipAddress: "127.0.0.1", hostname: "cm.test" },
      isProbe: probe,
      node: {},
    });
    const auth = (username: string, password: string, domain: string) =>
      ({ op: "authenticate", method: "password", username, password, domain, node: {} }) as const;
    const list = {
      op: "get-resource-list",
      protocols: ["PCOIP"],
      resourceTypes: ["DESKTOP"],
      node: {},
    } as const;
    const alloc = (resourceId: string) =>
      ({
        op: "allocate-resource",
        resourceId,
        protocol: "PCOIP",
        clientIpAddress: "192.168.1.23",
        clientMacAddress: "02:42:ac:11:00:02",
        node: {},
      }) as const;
    const signedIn = async (): Promise<BrokerConversation> => {
      const c = s.broker.openConversation(ctx());
      await c.hello(hello());
      const a = await c.authenticate(auth(s.good.username, s.good.password, s.good.domain));
      expect(a.resp.result.resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
      return c;
    };

    beforeAll(async () => {
      s = await setup();
    });
    afterAll(async () => {
      await s?.close();
    });

    const contractTest = (c: ContractCase, fn: () => Promise<void>) => {
      const reason = opts.skip?.[c];
      if (reason) test.skip(`${c} (skipped: ${reason})`, fn);
      else test(c, fn);
    };

    contractTest("probe answers hello-resp offering password authentication", async () => {
      const r = await s.broker.probe(hello(true), ctx());
      expect(r.op).toBe("hello-resp");
      expect(r.authenticationMethods).toContain("AUTHENTICATE_VIA_PASSWORD");
    });

    contractTest("hello answers hello-resp offering password authentication", async () => {
      const c = s.broker.openConversation(ctx());
      try {
        const r = await c.hello(hello());
        expect(r.op).toBe("hello-resp");
        expect(r.authenticationMethods).toContain("AUTHENTICATE_VIA_PASSWORD");
      } finally {
        await c.close();
      }
    });

    contractTest(
      "a wrong password fails with AUTH_FAILED_* and no identity, and may be retried",
      async () => {
        const c = s.broker.openConversation(ctx());
        try {
          await c.hello(hello());
          const bad = await c.authenticate(auth(s.good.username, s.badPassword, s.good.domain));
          expect(bad.resp.result.resultId).toStartWith("AUTH_FAILED_");
          expect(bad.identity).toBeUndefined();
          const good = await c.authenticate(auth(s.good.username, s.good.password, s.good.domain));
          expect(good.resp.result.resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
        } finally {
          await c.close();
        }
      },
    );

    contractTest("good credentials give AUTH_SUCCESSFUL_AND_COMPLETE with the identity", async () => {
      const c = s.broker.openConversation(ctx());
      try {
        await c.hello(hello());
        const r = await c.authenticate(auth(s.good.username, s.good.password, s.good.domain));
        expect(r.resp.result.resultId).toBe("AUTH_SUCCESSFUL_AND_COMPLETE");
        expect(r.identity?.user.toLowerCase()).toBe(s.good.username.toLowerCase());
      } finally {
        await c.close();
      }
    });

    contractTest("the list after sign-in holds the entitled resource", async () => {
      const c = await signedIn();
      try {
        const r = await c.getResourceList(list);
        expect(r.result.resultId).toBe("LIST_SUCCESSFUL");
        expect(r.resources.map((x) => x.resourceId)).toContain(s.entitledResourceId);
      } finally {
        await c.close();
      }
    });

    contractTest(
      "allocating the entitled resource gives a complete target or an agent to launch on",
      async () => {
        const c = await signedIn();
        try {
          await c.getResourceList(list);
          const r = await c.allocateResource(alloc(s.entitledResourceId));
          expect(r.kind === "target" || r.kind === "launch").toBe(true);
          if (r.kind === "launch") {
            expect(r.agent.host).not.toBe("");
            expect(r.agent.port).toBeGreaterThan(0);
          }
          if (r.kind === "target") {
            expect(r.resp.target.connectTag).not.toBe("");
            expect(r.resp.target.port).toBeGreaterThan(0);
          }
        } finally {
          await c.close();
        }
      },
    );

    contractTest("allocating an unknown resource is refused with a failure result", async () => {
      const c = await signedIn();
      try {
        await c.getResourceList(list);
        const r = await c.allocateResource(alloc(s.unknownResourceId));
        expect(r.kind).toBe("refused");
        if (r.kind === "refused") expect(r.resp.result.resultId).not.toBe("ALLOC_SUCCESSFUL");
      } finally {
        await c.close();
      }
    });

    contractTest("bye answers bye-resp and close() never throws", async () => {
      const c = await signedIn();
      const r = await c.bye({ op: "bye", node: {} });
      expect(r.op).toBe("bye-resp");
      await c.close();
      await c.close();
    });

    contractTest("conversations are independent: one's sign-in is not another's", async () => {
      const a = await signedIn();
      const b = s.broker.openConversation(ctx());
      try {
        await b.hello(hello());
        const r = await b.getResourceList(list);
        expect(r.result.resultId).not.toBe("LIST_SUCCESSFUL");
        expect((await a.getResourceList(list)).result.resultId).toBe("LIST_SUCCESSFUL");
      } finally {
        await a.close();
        await b.close();
      }
    });
  });
}
