/**
 * sd_notify over bun:ffi reaches a real unix datagram socket, as systemd's would: READY, RELOADING with a
 * CLOCK_MONOTONIC timestamp, STOPPING, WATCHDOG, STATUS, ERRNO, from this very pid (NotifyAccess=main), on a path
 * socket and on an abstract one; and it is a silent no-op without NOTIFY_SOCKET.
 *
 * The receiver is a python3 script (Bun cannot bind unix datagram sockets): it prints each datagram as one JSON
 * line with the sender's pid (SCM_CREDENTIALS) and its own CLOCK_MONOTONIC at receipt.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createNotifier } from "../../src/platform/systemd.ts";

const RECEIVER = `
import json, socket, struct, sys, time
name = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind("\\0" + name[1:] if name.startswith("@") else name)
print(json.dumps({"listening": True}), flush=True)
while True:
    msg, anc, flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(12))
    pid = None
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", data[:12])[0]
    mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    print(json.dumps({"pid": pid, "msg": msg.decode(), "mono": mono}), flush=True)
`;

interface Datagram {
  readonly pid: number | null;
  readonly msg: string;
  readonly mono: number;
}

interface Receiver {
  next(): Promise<Datagram>;
  close(): void;
}

/** Starts the python receiver on `name` and resolves once it is bound. */
async function receiver(name: string): Promise<Receiver> {
  const proc = Bun.spawn(["python3", "-c", RECEIVER, name], { stdout: "pipe", stderr: "inherit" });
  const reader = proc.stdout.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  async function line(): Promise<string> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const nl = buffered.indexOf("\n");
      if (nl >= 0) {
        const l = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        return l;
      }
      if (Date.now() > deadline) throw new Error("receiver: no datagram within 10 s");
      const chunk = await Promise.race([reader.read(), Bun.sleep(10_000).then(() => undefined)]);
      if (!chunk || chunk.done) throw new Error("receiver: output ended (did python3 fail?)");
      buffered += decoder.decode(chunk.value, { stream: true });
    }
  }
  try {
    expect(JSON.parse(await line())).toEqual({ listening: true });
  } catch (e) {
    proc.kill();
    throw e;
  }
  return {
    next: async () => JSON.parse(await line()) as Datagram,
    close: () => proc.kill(),
  };
}

const dir = mkdtempSync(join(tmpdir(), "pcoip-cmsg-notify-"));
const receivers: Receiver[] = [];
afterAll(() => {
  for (const r of receivers) r.close();
  rmSync(dir, { recursive: true, force: true });
});

async function start(name: string): Promise<Receiver> {
  const r = await receiver(name);
  receivers.push(r);
  return r;
}

describe("createNotifier on a path socket", () => {
  test("sends READY, RELOADING + MONOTONIC_USEC, STOPPING, WATCHDOG, STATUS, ERRNO from this pid", async () => {
    const path = join(dir, "notify.sock");
    const r = await start(path);
    const sd = createNotifier({ NOTIFY_SOCKET: path });
    expect(sd.enabled).toBe(true);

    expect(sd.ready("serving 443")).toBe(true);
    const ready = await r.next();
    expect(ready.msg).toBe("READY=1\nSTATUS=serving 443");
    expect(ready.pid).toBe(process.pid);

    expect(sd.reloading()).toBe(true);
    const reload = await r.next();
    const m = /^RELOADING=1\nMONOTONIC_USEC=(\d+)$/.exec(reload.msg);
    expect(m).not.toBeNull();
    // CLOCK_MONOTONIC, the clock systemd compares with: not after the receiver's reading, and not a
    // process-relative clock (which would trail the system's by the machine's uptime).
    const sent = Number(m![1]);
    expect(sent).toBeLessThanOrEqual(reload.mono);
    expect(reload.mono - sent).toBeLessThan(60_000_000);

    expect(sd.stopping()).toBe(true);
    expect((await r.next()).msg).toBe("STOPPING=1");
    expect(sd.watchdog()).toBe(true);
    expect((await r.next()).msg).toBe("WATCHDOG=1");
    expect(sd.status("draining: 3 sessions")).toBe(true);
    expect((await r.next()).msg).toBe("STATUS=draining: 3 sessions");
    expect(sd.error("reloading config: bad key", 22)).toBe(true);
    expect((await r.next()).msg).toBe("STATUS=reloading config: bad key\nERRNO=22");
  });

  test("a newline in a status cannot smuggle in another assignment", async () => {
    const path = join(dir, "inject.sock");
    const r = await start(path);
    const sd = createNotifier({ NOTIFY_SOCKET: path });
    expect(sd.status("broken\nREADY=1")).toBe(true);
    const d = await r.next();
    expect(d.msg.split("\n")).toEqual(["STATUS=broken READY=1"]);
  });
});

describe("createNotifier on an abstract socket", () => {
  test("'@name' reaches the abstract namespace", async () => {
    const name = `@pcoip-cmsg-test-${process.pid}-${crypto.randomUUID()}`;
    const r = await start(name);
    const sd = createNotifier({ NOTIFY_SOCKET: name });
    expect(sd.enabled).toBe(true);
    expect(sd.ready()).toBe(true);
    const d = await r.next();
    expect(d.msg).toBe("READY=1");
    expect(d.pid).toBe(process.pid);
  });
});

describe("createNotifier without a usable socket", () => {
  test("no NOTIFY_SOCKET: disabled, every call false, nothing thrown", () => {
    const sd = createNotifier({});
    expect(sd.enabled).toBe(false);
    expect([sd.ready(), sd.reloading(), sd.stopping(), sd.watchdog(), sd.status("x"), sd.error("x")]).toEqual(
      [false, false, false, false, false, false],
    );
  });

  test("a socket path nobody listens on: false, nothing thrown", () => {
    const sd = createNotifier({ NOTIFY_SOCKET: join(dir, "nobody.sock") });
    expect(sd.enabled).toBe(true);
    expect(sd.ready()).toBe(false);
  });

  test("unsupported or oversized addresses are disabled", () => {
    expect(createNotifier({ NOTIFY_SOCKET: "vsock:2:1234" }).enabled).toBe(false);
    expect(createNotifier({ NOTIFY_SOCKET: `/${"x".repeat(107)}` }).enabled).toBe(false);
    expect(createNotifier({ NOTIFY_SOCKET: `/${"x".repeat(106)}` }).enabled).toBe(true);
  });
});

describe("watchdogIntervalMs", () => {
  test("half of WATCHDOG_USEC when WATCHDOG_PID is unset or ours", () => {
    expect(createNotifier({ WATCHDOG_USEC: "30000000" }).watchdogIntervalMs).toBe(15_000);
    expect(
      createNotifier({ WATCHDOG_USEC: "30000000", WATCHDOG_PID: String(process.pid) }).watchdogIntervalMs,
    ).toBe(15_000);
    expect(
      createNotifier({ WATCHDOG_USEC: "30000000", WATCHDOG_PID: "1" }, 4242).watchdogIntervalMs,
    ).toBeUndefined();
    expect(createNotifier({ WATCHDOG_USEC: "0" }).watchdogIntervalMs).toBeUndefined();
    expect(createNotifier({ WATCHDOG_USEC: "soon" }).watchdogIntervalMs).toBeUndefined();
    expect(createNotifier({}).watchdogIntervalMs).toBeUndefined();
  });
});
