// Claim: the logger never writes a secret: passwords, cookies, connect/session tags, tokens, authorization and
// proxy credentials and the LDAP bind password are replaced by "[redacted]" at the top level and one or two
// objects down, while ordinary fields are kept; and LOG_LEVEL in the environment beats the configured level.
import { afterEach, describe, expect, test } from "bun:test";
import {
  createLogger,
  isLogLevel,
  memoryDestination,
  SECRET_KEYS,
  sessionLogger,
} from "../../src/observability/log.ts";

const MARK = "[redacted]";

/** Every secret-bearing key the logger promises to hide, each with a value that appears nowhere else. */
const SECRETS: Record<string, string> = {
  password: "pw-Secret-1",
  newPassword: "pw-Secret-2",
  cookie: "JSESSIONID=cookie-Secret-3",
  Cookie: "JSESSIONID=cookie-Secret-4",
  setCookie: "JSESSIONID=cookie-Secret-5; Secure",
  jsessionid: "jsess-Secret-6",
  connectTag: "tag-Secret-7",
  sessionTag: "tag-Secret-8",
  "connect-tag": "tag-Secret-9",
  "session-tag": "tag-Secret-10",
  token: "token-Secret-11",
  authorization: "Basic auth-Secret-12",
  Authorization: "Bearer auth-Secret-13",
  proxyPassword: "proxy-Secret-14",
  proxyAuthorization: "Basic proxy-Secret-15",
  bindPassword: "bind-Secret-16",
};

function logOnce(obj: Record<string, unknown>): { line: Record<string, unknown>; text: string } {
  const sink = memoryDestination();
  const log = createLogger({ level: "debug", destination: sink });
  log.info(obj, "a line");
  const lines = sink.lines();
  expect(lines).toHaveLength(1);
  return { line: JSON.parse(lines[0]!) as Record<string, unknown>, text: sink.text() };
}

const savedLogLevel = process.env.LOG_LEVEL;
afterEach(() => {
  if (savedLogLevel === undefined) delete process.env.LOG_LEVEL;
  else process.env.LOG_LEVEL = savedLogLevel;
});

describe("redaction", () => {
  test("every secret key at the top level is replaced by the marker", () => {
    delete process.env.LOG_LEVEL;
    const { line, text } = logOnce({ ...SECRETS, user: "alice", clientIp: "192.0.2.7" });
    for (const [k, v] of Object.entries(SECRETS)) {
      expect(text).not.toContain(v);
      expect(line[k]).toBe(MARK);
    }
    // Ordinary fields are untouched.
    expect(line.user).toBe("alice");
    expect(line.clientIp).toBe("192.0.2.7");
    expect(line.msg).toBe("a line");
  });

  test("one object down (request headers, credentials, proxy settings)", () => {
    delete process.env.LOG_LEVEL;
    const { line, text } = logOnce({
      req: {
        method: "POST",
        password: SECRETS.password,
        cookie: SECRETS.cookie,
        "connect-tag": SECRETS["connect-tag"],
      },
      headers: { Cookie: SECRETS.Cookie, Authorization: SECRETS.Authorization, host: "cm.test" },
      proxy: { host: "10.0.0.8", port: 3128, password: "proxy-user-Secret", proxyAuthorization: "Basic p" },
      ldap: { bindDn: "uid=alice,ou=people", bindPassword: SECRETS.bindPassword },
      session: { connectTag: SECRETS.connectTag, sessionTag: SECRETS.sessionTag, id: "s-1" },
    });
    for (const v of [...Object.values(SECRETS), "proxy-user-Secret"]) expect(text).not.toContain(v);
    expect(line.req).toEqual({ method: "POST", password: MARK, cookie: MARK, "connect-tag": MARK });
    expect(line.headers).toEqual({ Cookie: MARK, Authorization: MARK, host: "cm.test" });
    expect(line.proxy).toEqual({ host: "10.0.0.8", port: 3128, password: MARK, proxyAuthorization: MARK });
    expect(line.ldap).toEqual({ bindDn: "uid=alice,ou=people", bindPassword: MARK });
    expect(line.session).toEqual({ connectTag: MARK, sessionTag: MARK, id: "s-1" });
  });

  test("two objects down", () => {
    delete process.env.LOG_LEVEL;
    const { line, text } = logOnce({
      config: { ldap: { bindPassword: SECRETS.bindPassword, url: "ldap://x" } },
      upstream: { request: { "session-tag": SECRETS["session-tag"], jsessionid: SECRETS.jsessionid } },
    });
    expect(text).not.toContain(SECRETS.bindPassword!);
    expect(text).not.toContain(SECRETS["session-tag"]!);
    expect(text).not.toContain(SECRETS.jsessionid!);
    expect(line.config).toEqual({ ldap: { bindPassword: MARK, url: "ldap://x" } });
    expect(line.upstream).toEqual({ request: { "session-tag": MARK, jsessionid: MARK } });
  });

  test("child and session loggers redact too", () => {
    delete process.env.LOG_LEVEL;
    const sink = memoryDestination();
    const root = createLogger({ destination: sink });
    const s = sessionLogger(root, "0123456789abcdef0123456789abcdef0123");
    s.warn({ connectTag: SECRETS.connectTag, auth: { password: SECRETS.password } }, "launch");
    const line = JSON.parse(sink.lines()[0]!) as Record<string, unknown>;
    expect(line.sessionId).toBe("0123456789abcdef0123456789abcdef0123");
    expect(line.connectTag).toBe(MARK);
    expect(line.auth).toEqual({ password: MARK });
    expect(sink.text()).not.toContain(SECRETS.connectTag!);
    expect(sink.text()).not.toContain(SECRETS.password!);
  });

  test("every promised key is a secret key of the logger", () => {
    expect([...SECRET_KEYS].sort() as string[]).toEqual(Object.keys(SECRETS).sort());
  });

  test("deeper objects are scrubbed too, and the caller's objects are left as they were", () => {
    const obj = { a: { b: { c: { password: SECRETS.password, keep: 1 } } }, list: [1, 2] };
    const { line, text } = logOnce(obj);
    expect(text).not.toContain(SECRETS.password!);
    expect(line.a).toEqual({ b: { c: { password: MARK, keep: 1 } } });
    expect(line.list).toEqual([1, 2]);
    expect(obj.a.b.c.password).toBe(SECRETS.password!);
  });

  test("an Error logged beside a secret keeps its message and stack", () => {
    const { line } = logOnce({ err: new Error("boom"), token: SECRETS.token });
    expect(line.token).toBe(MARK);
    expect((line.err as { message: string }).message).toBe("boom");
    expect(String((line.err as { stack: string }).stack)).toContain("boom");
  });

  test("a child logger's bindings are scrubbed", () => {
    const sink = memoryDestination();
    createLogger({ destination: sink }).child({ proxyPassword: SECRETS.proxyPassword }).info("x");
    expect(sink.text()).not.toContain(SECRETS.proxyPassword!);
    expect(sink.text()).toContain(MARK);
  });
});

describe("levels", () => {
  test("the configured level applies without LOG_LEVEL", () => {
    delete process.env.LOG_LEVEL;
    const sink = memoryDestination();
    const log = createLogger({ level: "info", destination: sink });
    log.debug("hidden");
    log.info("shown");
    expect(sink.lines().map((l) => JSON.parse(l).msg)).toEqual(["shown"]);
    expect(JSON.parse(sink.lines()[0]!).level).toBe("info");
  });

  test("LOG_LEVEL=debug beats a configured info", () => {
    process.env.LOG_LEVEL = "debug";
    const sink = memoryDestination();
    const log = createLogger({ level: "info", destination: sink });
    expect(log.level).toBe("debug");
    log.debug("now shown");
    const lines = sink.lines().map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: "debug", msg: "now shown", svc: "pcoip-cmsg" });
  });

  test("LOG_LEVEL=ERROR (any case) beats a configured debug; a bad LOG_LEVEL is ignored", () => {
    process.env.LOG_LEVEL = "ERROR";
    const sink = memoryDestination();
    const log = createLogger({ level: "debug", destination: sink });
    log.warn("hidden");
    log.error("shown");
    expect(sink.lines().map((l) => JSON.parse(l).msg)).toEqual(["shown"]);

    process.env.LOG_LEVEL = "verbose";
    expect(createLogger({ level: "warn", destination: memoryDestination() }).level).toBe("warn");
    expect(isLogLevel("verbose")).toBe(false);
  });
});
