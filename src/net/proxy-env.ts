/**
 * The outbound proxy for broker traffic, read from the environment the way administrators already write it
 * (SPEC §3 upstream): `HTTPS_PROXY` (`http://host:port`, or `host:port` / `ip:port` without a scheme, or with
 * `user:password@` in the URL), `HTTPS_PROXY_USERNAME` / `HTTPS_PROXY_PASSWORD` for basic auth (they win over
 * credentials in the URL), and `NO_PROXY` (hosts, `.domain` suffixes, IPs, CIDRs, optional `:port`, or `*`).
 * Names are matched without regard to case (`https_proxy` works), since both spellings exist in the wild.
 *
 * Pure: the caller passes the environment (the service reads it from its 0600 EnvironmentFile). Only broker
 * traffic uses the result; agent calls on the LAN never do.
 */
import { isIP } from "node:net";

export interface NoProxyRule {
  /** Lower-case host name or domain suffix (without the leading dot), an IP, or "*". */
  readonly host: string;
  /** A CIDR's prefix length when `host` is a network address. */
  readonly prefix?: number;
  /** Only this destination port, when the rule named one. */
  readonly port?: number;
}

export interface ProxySettings {
  /** Host name or IP of the proxy (IPv6 without brackets). */
  readonly host: string;
  readonly port: number;
  /** Basic-auth user name, when credentials are configured. */
  readonly username?: string;
  /** Basic-auth password. Never logged: use `describeProxy` for log lines. */
  readonly password?: string;
  readonly noProxy: readonly NoProxyRule[];
  /** The variable the proxy came from (as spelled in the environment), for messages. */
  readonly source: string;
}

/** A configuration mistake in the proxy variables: what, why, and how to fix it. */
export interface ProxyEnvError {
  readonly what: string;
  readonly cause: string;
  readonly fix: string;
}

export type ProxyEnvResult =
  | { readonly ok: true; readonly proxy: ProxySettings | undefined }
  | { readonly ok: false; readonly error: ProxyEnvError };

type Env = Readonly<Record<string, string | undefined>>;

/**
 * Reads HTTPS_PROXY, HTTPS_PROXY_USERNAME, HTTPS_PROXY_PASSWORD and NO_PROXY (any case) from `env`.
 * No or an empty HTTPS_PROXY → `{ ok: true, proxy: undefined }`.
 * @example proxyFromEnv({ https_proxy: "10.0.0.8:3128", HTTPS_PROXY_USERNAME: "cm", HTTPS_PROXY_PASSWORD: "s" })
 *   // → { ok: true, proxy: { host: "10.0.0.8", port: 3128, username: "cm", password: "s", noProxy: [], … } }
 */
export function proxyFromEnv(env: Env): ProxyEnvResult {
  const found = lookup(env, "HTTPS_PROXY");
  if (!found || found.value.trim() === "") return { ok: true, proxy: undefined };
  const parsed = parseProxyUrl(found.value.trim(), found.name);
  if (!parsed.ok) return parsed;
  const user = lookup(env, "HTTPS_PROXY_USERNAME");
  const pass = lookup(env, "HTTPS_PROXY_PASSWORD");
  let username = parsed.username;
  let password = parsed.password;
  if (user && user.value !== "") {
    username = user.value;
    password = pass?.value ?? "";
  } else if (pass && pass.value !== "") {
    if (username === undefined) {
      return fail(
        `reading ${pass.name}`,
        "a proxy password is set but no user name",
        "set HTTPS_PROXY_USERNAME as well, or remove HTTPS_PROXY_PASSWORD",
      );
    }
    password = pass.value;
  }
  if (username?.includes(":")) {
    return fail(
      "reading the proxy user name",
      "it contains ':' which basic authentication cannot carry (RFC 7617)",
      "use a proxy account whose name has no colon",
    );
  }
  const noProxy = lookup(env, "NO_PROXY");
  const rules = noProxy ? parseNoProxy(noProxy.value) : [];
  return {
    ok: true,
    proxy: {
      host: parsed.host,
      port: parsed.port,
      ...(username !== undefined ? { username, password: password ?? "" } : {}),
      noProxy: rules,
      source: found.name,
    },
  };
}

/**
 * The proxy to use for `host:port`, or undefined when there is none or NO_PROXY exempts the destination.
 * @example proxyFor(p, "broker.corp.example", 443) // undefined when NO_PROXY=".corp.example"
 */
export function proxyFor(
  proxy: ProxySettings | undefined,
  host: string,
  port: number,
): ProxySettings | undefined {
  if (!proxy) return undefined;
  const h = unbracket(host).toLowerCase().replace(/\.$/, "");
  for (const rule of proxy.noProxy) {
    if (rule.port !== undefined && rule.port !== port) continue;
    if (rule.host === "*") return undefined;
    if (rule.prefix !== undefined) {
      if (inCidr(h, rule.host, rule.prefix)) return undefined;
      continue;
    }
    if (h === rule.host || (isIP(h) === 0 && h.endsWith(`.${rule.host}`))) return undefined;
  }
  return proxy;
}

/** The proxy for log lines and messages: `http://host:port (basic auth as "user")`, never the password. */
export function describeProxy(p: ProxySettings): string {
  const host = isIP(p.host) === 6 ? `[${p.host}]` : p.host;
  const auth = p.username !== undefined ? ` (basic auth as "${p.username}")` : "";
  return `http://${host}:${p.port}${auth} from ${p.source}`;
}

/** Parses NO_PROXY: entries separated by commas or spaces; malformed entries are skipped (curl does the same). */
export function parseNoProxy(value: string): NoProxyRule[] {
  const rules: NoProxyRule[] = [];
  for (const raw of value.split(/[\s,]+/)) {
    const entry = raw.trim().toLowerCase();
    if (entry === "") continue;
    if (entry === "*") {
      rules.push({ host: "*" });
      continue;
    }
    let host = entry;
    let port: number | undefined;
    const bracketed = /^\[([^\]]+)\](?::(\d+))?(?:\/(\d+))?$/.exec(entry);
    if (bracketed) {
      host = bracketed[1]!;
      if (bracketed[2]) port = Number(bracketed[2]);
      if (bracketed[3]) host = `${host}/${bracketed[3]}`;
    } else if (isIP(entry.split("/")[0]!) !== 6) {
      const hp = /^(.*):(\d+)$/.exec(entry);
      if (hp) {
        host = hp[1]!;
        port = Number(hp[2]);
      }
    }
    host = host.replace(/^\*?\./, "").replace(/\.$/, "");
    const slash = host.indexOf("/");
    if (slash >= 0) {
      const net = host.slice(0, slash);
      const prefix = Number(host.slice(slash + 1));
      const fam = isIP(net);
      if (fam === 0 || !Number.isInteger(prefix) || prefix < 0 || prefix > (fam === 4 ? 32 : 128)) continue;
      rules.push({ host: net, prefix, ...(port !== undefined ? { port } : {}) });
      continue;
    }
    if (host === "") continue;
    rules.push({ host, ...(port !== undefined ? { port } : {}) });
  }
  return rules;
}

type ParsedProxyUrl =
  | { ok: true; host: string; port: number; username?: string; password?: string }
  | { ok: false; error: ProxyEnvError };

function parseProxyUrl(value: string, name: string): ParsedProxyUrl {
  const what = `reading ${name}`;
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(value)?.[1]?.toLowerCase();
  if (scheme !== undefined && scheme !== "http") {
    return fail(
      what,
      `the proxy scheme "${scheme}://" is not supported (only an HTTP proxy that tunnels with CONNECT)`,
      `write it as http://host:port or host:port`,
    );
  }
  const withScheme = scheme ? value : `http://${value}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    return fail(
      what,
      `"${redactUrl(value)}" is not a proxy address`,
      "write it as http://host:port or host:port",
    );
  }
  if (url.hostname === "") return fail(what, "no proxy host", "write it as http://host:port or host:port");
  if (url.pathname !== "/" && url.pathname !== "") {
    return fail(
      what,
      `a path ("${url.pathname}") is not allowed`,
      "write it as http://host:port or host:port",
    );
  }
  // Without a scheme there is no default port to fall back on: ask rather than guess (curl guesses 1080).
  if (url.port === "" && !scheme) {
    return fail(what, "no port", "write it as host:port, e.g. 10.0.0.8:3128");
  }
  const port = url.port === "" ? 80 : Number(url.port);
  const host = unbracket(url.hostname);
  let username: string | undefined;
  let password: string | undefined;
  if (url.username !== "" || url.password !== "") {
    try {
      username = decodeURIComponent(url.username);
      password = decodeURIComponent(url.password);
    } catch {
      return fail(what, "the credentials in the URL are not valid percent-encoding", "percent-encode them");
    }
  }
  return {
    ok: true,
    host,
    port,
    ...(username !== undefined ? { username, password: password ?? "" } : {}),
  };
}

/** The variable named `canonical` in any case; the exact upper-case spelling wins when both exist. */
function lookup(env: Env, canonical: string): { name: string; value: string } | undefined {
  const exact = env[canonical];
  if (exact !== undefined) return { name: canonical, value: exact };
  for (const [name, value] of Object.entries(env)) {
    if (value !== undefined && name.toUpperCase() === canonical) return { name, value };
  }
  return undefined;
}

function inCidr(ip: string, net: string, prefix: number): boolean {
  const fam = isIP(ip);
  if ((fam !== 4 && fam !== 6) || fam !== isIP(net)) return false;
  const bits = fam === 4 ? 32 : 128;
  const a = toBigInt(ip, fam);
  const b = toBigInt(net, fam);
  const mask = prefix === 0 ? 0n : ((1n << BigInt(prefix)) - 1n) << BigInt(bits - prefix);
  return (a & mask) === (b & mask);
}

function toBigInt(ip: string, fam: 4 | 6): bigint {
  if (fam === 4) return ip.split(".").reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n);
  const [head = "", tail = ""] = ip.split("::");
  const h = head === "" ? [] : head.split(":");
  const t = ip.includes("::") ? (tail === "" ? [] : tail.split(":")) : [];
  const groups = ip.includes("::") ? [...h, ...Array(8 - h.length - t.length).fill("0"), ...t] : h;
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(Number.parseInt(g || "0", 16)), 0n);
}

function unbracket(host: string): string {
  return host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
}

/** A proxy value with any `user:password@` removed, safe for a message. */
function redactUrl(value: string): string {
  return value.replace(/\/\/[^@/]*@/, "//***@").replace(/^[^/@]*@/, "***@");
}

function fail(what: string, cause: string, fix: string): { ok: false; error: ProxyEnvError } {
  return { ok: false, error: { what, cause, fix } };
}
