// Claim: the kernel UDP path's table is one fixed ruleset — sessions only ever add map elements — whose catch-all
// forward drop and "we switched forwarding on" mark appear only when asked for; unadmitted datagrams to the
// listener are untracked, admitted ones zoned and counted in the same lookup; and `diagnose` says "off" plainly, names the missing pieces
// otherwise, and prints firewalld's lines when firewalld runs. (The rules at work: test/e2e/sg-udp-fastpath-netns.)
import { describe, expect, test } from "bun:test";
import { FORWARDING_LINE, forwardingLineWanted } from "../../src/cli/sysctl-file.ts";
import { loadConfig } from "../../src/config/load.ts";
import { fastPathChecks, firewalldLines } from "../../src/sg/kernel/diagnose.ts";
import { FORWARDING_MARK_CHAIN, ruleset } from "../../src/sg/kernel/ruleset.ts";

const base = { listenPorts: [4172, 4172], sourcePorts: { from: 55000, to: 59999 } };

describe("ruleset", () => {
  test("one table, deleted and recreated in the same transaction; listener ports deduplicated", () => {
    const text = ruleset({ ...base, dropOtherForwarding: false, markSwitchedOn: false });
    const lines = text.split("\n");
    expect(lines[0]).toBe("table inet pcoip_cmsg");
    expect(lines[1]).toBe("delete table inet pcoip_cmsg");
    // One listener port is a compare in the raw chain's dispatch, several are one set lookup.
    expect(text).toContain("udp dport 4172 jump listen");
    expect(text).not.toContain("4172, 4172");
    const two = ruleset({
      ...base,
      listenPorts: [4172, 4173],
      dropOtherForwarding: false,
      markSwitchedOn: false,
    });
    expect(two).toContain("udp dport { 4172, 4173 } jump listen");
    // Sessions are map elements: every per-session lookup goes through a named map.
    for (const m of ["dnat4", "snat4", "zone4", "up4", "down4", "dnat6", "zone_port", "warm"])
      expect(text).toContain(` @${m}`);
  });

  test("an unadmitted datagram to the listener is untracked; an admitted one is zoned and counted by one rule", () => {
    const text = ruleset({ ...base, dropOtherForwarding: false, markSwitchedOn: false });
    const chain = (name: string) => {
      const at = text.indexOf(`chain ${name} {`);
      return text.slice(at, text.indexOf("  }", at));
    };
    const listen = chain("listen");
    const zone = listen.indexOf(
      "ct zone set ip saddr . udp sport map @zone4 counter name ip saddr . udp sport map @up4 accept",
    );
    const notrack = listen.indexOf("fib daddr type local notrack accept");
    // The zone lookup is the admission test: only what fails it reaches the notrack rule.
    expect(zone).toBeGreaterThan(0);
    expect(notrack).toBeGreaterThan(zone);
    const reply = chain("reply");
    expect(reply.indexOf("udp dport @warm fib daddr type local notrack accept")).toBeGreaterThan(0);
    expect(reply).toContain("fib daddr type local ct zone set udp dport map @zone_port accept");
    // The agent's replies are counted after conntrack matched them (forward), never in raw where a spoofed
    // datagram toward a session port would count.
    expect(reply).not.toContain("counter");
    expect(chain("media")).toContain("counter name ip daddr . udp dport map @down4 accept");
  });

  test("the catch-all forward drop and the mark chain only when asked", () => {
    const neither = ruleset({ ...base, dropOtherForwarding: false, markSwitchedOn: false });
    const fwd = (t: string) => t.slice(t.indexOf("chain forward"), t.indexOf("chain media"));
    expect(fwd(neither)).not.toMatch(/^\s*drop$/m);
    expect(neither).not.toContain(FORWARDING_MARK_CHAIN);
    const both = ruleset({ ...base, dropOtherForwarding: true, markSwitchedOn: true });
    expect(fwd(both)).toMatch(/^\s*drop$/m);
    expect(both).toContain(`chain ${FORWARDING_MARK_CHAIN} { }`);
    // Our own media chain always ends in drop: a binding whose session ended stops at once.
    expect(neither.slice(neither.indexOf("chain media"))).toMatch(/^\s*drop$/m);
  });
});

describe("diagnose", () => {
  const config = (fastPath: string) => {
    const r = loadConfig({ text: `[sg]\nudpFastPath = "${fastPath}"\n`, strict: false });
    if (!r.ok) throw new Error(r.errors.join("; "));
    return r.config;
  };

  test('"off" is one INFO line and nothing is probed', () => {
    const checks = fastPathChecks(config("off"), true);
    expect(checks).toEqual([
      {
        verdict: "INFO",
        name: "udp fast path",
        detail: "sg.udpFastPath = off: the userspace relay carries media",
      },
    ]);
  });

  test("auto names what it found, and firewalld's lines when firewalld runs", () => {
    const checks = fastPathChecks(config("auto"), true);
    expect(checks[0]?.name).toBe("udp fast path");
    expect(["PASS", "INFO"]).toContain(checks[0]?.verdict ?? "missing");
    const fw = checks.find((c) => c.name === "udp fast path firewalld");
    expect(fw?.fix).toBe(firewalldLines().join(" && "));
    expect(firewalldLines()).toContain("firewall-cmd --reload");
    expect(fastPathChecks(config("auto"), false).some((c) => c.name.includes("firewalld"))).toBe(false);
  });
});

// Claim: install writes `net.ipv4.ip_forward = 1` only when forwarding would be ours — off now, or switched on by
// our own file before — and never over a host that already forwards for something else (whose other traffic the
// SG would then drop, and whose forwarding the unit would switch off at stop).
describe("the forwarding line", () => {
  const config = (text: string) => {
    const r = loadConfig({ text, strict: false });
    if (!r.ok) throw new Error(JSON.stringify(r));
    return r.config;
  };
  const on = config('[sg]\nudpFastPath = "auto"\n');
  const ours = `net.core.rmem_default = 1\n${FORWARDING_LINE}\n`;

  test("written when forwarding is off, or on because of our own file", () => {
    expect(forwardingLineWanted(on, undefined, 0)).toEqual({ write: true });
    expect(forwardingLineWanted(on, ours, 1)).toEqual({ write: true });
    expect(forwardingLineWanted(on, undefined, undefined)).toEqual({ write: true });
  });

  test("not written over a host that already forwards, with a note that says why", () => {
    const d = forwardingLineWanted(on, "net.core.rmem_default = 1\n", 1);
    expect(d.write).toBe(false);
    expect(d.note).toContain("already on on this host");
    expect(forwardingLineWanted(on, undefined, 1).write).toBe(false);
  });

  test('never with sg.udpFastPath = "off"', () => {
    expect(forwardingLineWanted(config('[sg]\nudpFastPath = "off"\n'), ours, 0)).toEqual({ write: false });
  });
});
