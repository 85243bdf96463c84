/**
 * The one configuration schema (SPEC §6): every key with its default, its limits and its description. It is also
 * the reference documentation (`pcoip-cmsg config schema` prints {@link describeKeys}) and the source of every
 * validation message. Key names of SPEC §6 are fixed: tools and tests outside this repo rely on them.
 * Pure: imports nothing of ours but the client-address parser that validates trusted proxies.
 *
 * @example
 * const r = configSchema.safeParse(Bun.TOML.parse(text)); // what load.ts does, with sources and messages
 */
import { isIP } from "node:net";
import { z } from "zod";
import { canonicalIp, compileTrustedProxies } from "../net/client-address.ts";

// ── value formats ────────────────────────────────────────────────────────────────────────────────────────────────

export interface ListenAddress {
  readonly hostname: string;
  readonly port: number;
}

export interface AgentAddress {
  readonly host: string;
  readonly port: number;
}

/** The agent port of PROTOCOL.md §5, used when a desktop's `agent` names no port. */
export const DEFAULT_AGENT_PORT = 60443;

const DNS_NAME =
  /^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

/** An IP literal or a DNS name; digits-and-dots must be a real IPv4 address (so "10.0.0.300" is refused). */
export function isHost(s: string): boolean {
  if (isIP(s) !== 0) return true;
  if (/^[\d.]+$/.test(s)) return false;
  return DNS_NAME.test(s);
}

function parsePort(digits: string, min: number): number | undefined {
  const port = Number(digits);
  return /^\d{1,5}$/.test(digits) && port >= min && port <= 65535 ? port : undefined;
}

/**
 * "host:port", "[ipv6]:port" or ":port" (= 0.0.0.0); port 0 asks the system for one (tests). Undefined when the
 * string is none of these; an IPv6 literal needs its brackets, since its colons would hide the port.
 * @example parseListen("[::]:443") // { hostname: "::", port: 443 }
 */
export function parseListen(s: string): ListenAddress | undefined {
  const m = /^(?:\[([^\]]*)\]|([^:[\]\s]*)):(\d+)$/.exec(s);
  if (!m) return undefined;
  const port = parsePort(m[3]!, 0);
  if (port === undefined) return undefined;
  if (m[1] !== undefined) return isIP(m[1]) === 6 ? { hostname: m[1], port } : undefined;
  const host = m[2]!;
  if (host === "") return { hostname: "0.0.0.0", port };
  return isHost(host) && isIP(host) !== 6 ? { hostname: host, port } : undefined;
}

/**
 * A desktop's `agent`: "host", "host:port", "[ipv6]:port" or a bare IPv6 literal; the port defaults to 60443.
 * @example parseAgentAddress("10.20.3.14") // { host: "10.20.3.14", port: 60443 }
 */
export function parseAgentAddress(s: string): AgentAddress | undefined {
  if (isIP(s) === 6) return { host: s, port: DEFAULT_AGENT_PORT };
  const m = /^(?:\[([^\]]*)\]|([^:[\]\s]+))(?::(\d+))?$/.exec(s);
  if (!m) return undefined;
  const port = m[3] === undefined ? DEFAULT_AGENT_PORT : parsePort(m[3], 1);
  if (port === undefined) return undefined;
  if (m[1] !== undefined) return isIP(m[1]) === 6 ? { host: m[1], port } : undefined;
  return isHost(m[2]!) ? { host: m[2]!, port } : undefined;
}

function matchPortRange(s: string): { from: number; to: number } | undefined {
  const m = /^(\d{1,5})-(\d{1,5})$/.exec(s);
  if (!m) return undefined;
  const from = Number(m[1]);
  const to = Number(m[2]);
  return from >= 1024 && to <= 65535 && from <= to ? { from, to } : undefined;
}

/** "55000-59999" → { from: 55000, to: 59999 }. Only for values the schema accepted: anything else is a bug. */
export function parsePortRange(s: string): { from: number; to: number } {
  const r = matchPortRange(s);
  if (!r) throw new TypeError(`parsePortRange: "${s}" was not validated by the config schema`);
  return r;
}

/** 127.0.0.0/8, ::1 (also IPv4-mapped) and "localhost": where an admin listener needs no token. */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/^::ffff:/, "");
  return h === "localhost" || h === "::1" || (isIP(h) === 4 && h.startsWith("127."));
}

function isBrokerUrl(s: string): boolean {
  if (s === "") return true;
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    return false;
  }
  return u.protocol === "https:" && u.hostname !== "" && !u.username && !u.password && !u.search && !u.hash;
}

function isLdapUrl(s: string): boolean {
  return /^ldaps?:\/\/(\[[0-9A-Fa-f:.]+\]|[^\s/:[\]]+)(:\d{1,5})?\/?$/i.test(s);
}

function isLicenseServer(s: string): boolean {
  return s === "" || /^\d{1,5}@[^\s@]+$/.test(s) || /^https?:\/\/[^\s/]+(\/\S*)?$/.test(s);
}

// ── key builders: each key gets its type, default, limits, error text and description in one place ────────────────

/** Extra documentation shown by `config schema` next to the type (formats that refinements check). */
export interface KeyMeta {
  readonly description: string;
  readonly format?: string;
}

function doc<T extends z.ZodType>(schema: T, description: string, format?: string): T {
  const meta: KeyMeta = format ? { description, format } : { description };
  return schema.meta(meta as unknown as Record<string, unknown>);
}

const MSG = {
  bool: "must be true or false",
  string: "must be a string in quotes",
  list: 'must be a list, e.g. ["a", "b"]',
  listen: 'must be "host:port" or "[ipv6]:port" with port 0–65535, e.g. "0.0.0.0:443"',
  int: (min: number, max: number) => `must be an integer from ${min} to ${max}`,
  oneOf: (values: readonly string[]) => `must be one of ${values.map((v) => `"${v}"`).join(", ")}`,
  table: (name: string) => `must be a table: write [${name}] and its keys on the lines below`,
};

const bool = (def: boolean, what: string) => doc(z.boolean({ error: MSG.bool }).default(def), what);
const str = (def: string, what: string, format?: string) =>
  doc(z.string({ error: MSG.string }).default(def), what, format);
const nonEmpty = (def: string, what: string) =>
  doc(z.string({ error: MSG.string }).min(1, { error: "must not be empty" }).default(def), what);

function int(def: number, min: number, max: number, what: string) {
  const error = MSG.int(min, max);
  return doc(z.number({ error }).int({ error }).min(min, { error }).max(max, { error }).default(def), what);
}

function oneOf<const T extends readonly [string, ...string[]]>(values: T, def: T[number], what: string) {
  return doc(z.enum(values, { error: MSG.oneOf(values) }).default(def), what);
}

const stringList = <T extends z.ZodType>(element: T) => z.array(element, { error: MSG.list });

/** A list of IPs/CIDRs, each checked as compileTrustedProxies reads it (its error, via `message`, names the bad one). */
function addressList(message: (cause: string) => string = (m) => m) {
  return stringList(z.string({ error: MSG.string })).superRefine((list, ctx) => {
    try {
      compileTrustedProxies(list);
    } catch (e) {
      ctx.addIssue({ code: "custom", message: message((e as Error).message) });
    }
  });
}

function unique(list: readonly string[], ctx: z.RefinementCtx, what: string): void {
  const seen = new Set<string>();
  list.forEach((v, i) => {
    if (seen.has(v)) ctx.addIssue({ code: "custom", path: [i], message: `${what} "${v}" is listed twice` });
    seen.add(v);
  });
}

const listenString = z.string({ error: MSG.string }).refine((s) => parseListen(s) !== undefined, MSG.listen);

const listenList = (def: string[], what: string, min = 0) =>
  doc(
    stringList(listenString)
      .min(min, { error: "must name at least one listener" })
      .superRefine((l, ctx) => unique(l, ctx, "listener"))
      .default(def),
    what,
    '"host:port" or "[ipv6]:port"',
  );

/** A [section]: every key has a default, so a missing section is an empty one. */
const section = <T extends z.core.$ZodLooseShape>(name: string, shape: T) =>
  z.object(shape, { error: MSG.table(name) }).prefault({} as z.input<z.ZodObject<T>>);

// ── sections ─────────────────────────────────────────────────────────────────────────────────────────────────────

/** The vendor's TLS 1.2 suites in its order (SPEC §5); tls/policy.ts checks them against the TLS library. */
const VENDOR_SUITES = [
  "ECDHE-RSA-AES256-GCM-SHA384",
  "ECDHE-RSA-AES128-GCM-SHA256",
  "AES256-GCM-SHA384",
  "AES128-GCM-SHA256",
];

const tls = section("tls", {
  cert: nonEmpty(
    "/etc/pcoip-cmsg/certs/cm.pem",
    "PEM certificate served on 443 (leaf first; a chain may follow). Generated here when selfSigned = true.",
  ),
  key: nonEmpty(
    "/etc/pcoip-cmsg/certs/cm.key",
    "Unencrypted PEM private key of `cert`: RSA ≥ 2048 bits (3072 recommended) or EC P-256/P-384.",
  ),
  caCert: str(
    "",
    "PEM CA/intermediate certificate(s) served after `cert` as its chain (the vendor's --ca-cert). Not trusted for outgoing checks: that is trustedCa.",
  ),
  trustedCa: str(
    "",
    "PEM CA bundle trusted (besides the system store) to verify the upstream broker, agents and the LDAP directory. Empty: caCert is trusted instead (deprecated).",
  ),
  brokerCertCheck: bool(
    true,
    "Verify the upstream broker's certificate (against trustedCa and the system store).",
  ),
  agentCertCheck: bool(
    false,
    "Verify agents' certificates against trustedCa (agents ship self-signed certificates, hence off).",
  ),
  selfSigned: bool(
    false,
    "Generate a self-signed RSA-3072 pair at cert/key (SANs: hostAddress) when those files are missing.",
  ),
  ciphers: doc(
    stringList(z.string({ error: MSG.string }))
      .min(1, { error: "must name at least one TLS 1.2 suite" })
      .default(VENDOR_SUITES),
    "TLS 1.2 cipher suites in preference order (TLS 1.3 suites are the TLS library's and cannot be narrowed).",
    "OpenSSL suite names, one per entry",
  ),
  minVersion: oneOf(
    ["TLSv1.2", "TLSv1.3"],
    "TLSv1.2",
    "Oldest TLS version accepted on 443 and used toward brokers and agents.",
  ),
});

const throttle = section("cm.throttle", {
  failuresBeforeDelay: int(3, 0, 1000, "Failed logins per (client IP, user name) answered without delay."),
  maxDelaySeconds: int(10, 0, 120, "Longest delay added to a failed-login answer (it grows per failure)."),
  distinctUsersPerIpBeforeIpThrottle: int(
    30,
    1,
    100000,
    "Distinct failing user names from one client IP before that IP as a whole is slowed (a NAT is one IP).",
  ),
  maxDelayedAnswers: int(
    1000,
    0,
    100000,
    "Delayed answers held at once; beyond this, failures are answered at once (still as failures).",
  ),
  windowSeconds: int(900, 1, 86400, "How long a failed login is remembered."),
});

const cm = section("cm", {
  listen: listenList(
    ["0.0.0.0:443"],
    'HTTPS listeners of the broker protocol ("[::]:port" is added for 0.0.0.0:port when enableIpv6 = true).',
    1,
  ),
  redirectListen: listenList(
    ["0.0.0.0:80"],
    "Plain HTTP listeners: redirect to HTTPS and answer the GET health check; [] disables.",
  ),
  maxPreSessions: int(
    10000,
    1,
    1000000,
    "Pre-session conversations kept at once; unauthenticated ones are evicted first.",
  ),
  preSessionIdleSeconds: int(900, 10, 86400, "A pre-session conversation idle this long is forgotten."),
  maxConcurrentEstablishments: int(
    200,
    1,
    100000,
    "Broker/agent calls in flight at once; beyond this, clients get a clear busy answer.",
  ),
  bodyLimitBytes: int(65536, 1024, 1048576, "Largest request body accepted."),
  headerTimeoutSeconds: int(10, 1, 300, "The request head must arrive within this (slow clients)."),
  idleTimeoutSeconds: int(60, 1, 3600, "Idle keep-alive connections are closed after this."),
  maxConnections: int(20000, 1, 1000000, "Client connections open at once on the HTTPS listeners."),
  // Per-client-IP caps (issue 16): high defaults, because a corporate NAT is one IP.
  maxConnectionsPerIp: int(
    256,
    1,
    1000000,
    "Connections one client IP may hold open on the CM's listeners (load balancers exempt); more are closed.",
  ),
  maxPreSessionsPerIp: int(
    64,
    1,
    1000000,
    "Pre-session conversations per client IP; beyond, that IP's oldest not-yet-signing-in one is evicted.",
  ),
  maxPasswordChecksPerIp: int(
    4,
    1,
    10000,
    "Password checks from one client IP at once; further ones queue up to 10 s, then get the busy answer.",
  ),
  agentTimeoutSeconds: int(20, 1, 300, "Longest wait for an agent's launch-session answer."),
  // PROXY protocol (issue 19): an L4 balancer passing TLS through names the client in a header.
  proxyProtocolFrom: doc(
    addressList((m) => m.replace("trusted proxy", "entry")).default([]),
    "Balancers that must start each connection on listen and redirectListen with a PROXY protocol header " +
      "(v1 or v2) naming the client; no other peer may send one. [] = no PROXY protocol.",
    'IPs or CIDRs, e.g. "10.0.0.5"',
  ),
  throttle,
  // Both cores for the CM (issue 21): the HTTPS listeners' threads (platform/front-door-workers.ts).
  workers: doc(
    z
      .union([z.literal("auto"), z.number().int().min(0).max(64)], {
        error: 'must be "auto" or an integer from 0 to 64',
      })
      .default("auto"),
    "Threads running the HTTPS listeners (TLS handshakes) while the main thread runs the CM: 0 = none (the main " +
      'thread listens itself), N = N threads, "auto" = one per CPU (0 on a single CPU).',
    '"auto" or 0–64',
  ),
});

const ldap = section("ldap", {
  url: doc(
    z
      .union([z.string(), stringList(z.string({ error: MSG.string }))], {
        error: 'must be a string or a list of strings, e.g. "ldaps://dc1.corp.example:636"',
      })
      .default(""),
    'Directory server(s); a list is tried in order when one is unreachable. "" = no directory.',
    "ldaps://host[:port] or ldap://host[:port] (StartTLS unless startTls = false)",
  ),
  bindDn: str(
    "{user}@{domain}",
    'Bind name template for the user: "{user}@{domain}" (AD), "{domain}\\{user}" or a DN such as ' +
      '"uid={user},ou=people,dc=corp,dc=example". "" = search for the user first (searchBase, searchFilter).',
  ),
  searchBase: str("", "Where users are searched (search-then-bind, and the user's entry for groups)."),
  searchFilter: str(
    "(sAMAccountName={user})",
    "Filter finding the user under searchBase ({user} and {domain} are escaped).",
  ),
  serviceBindDn: str("", "Service account DN for searches; anonymous search when empty."),
  serviceBindPasswordFile: str(
    "",
    "File holding the service account's password (first line; mode 0600). Required with serviceBindDn.",
  ),
  startTls: bool(true, "Use StartTLS on ldap:// URLs."),
  allowInsecure: bool(
    false,
    "Allow ldap:// without StartTLS: passwords then cross the network in clear (labs only).",
  ),
  groupAttribute: str("memberOf", 'User attribute listing group DNs; "" = do not read it.'),
  groupSearchBase: str(
    "",
    "Group search base, for directories without memberOf (set with groupSearchFilter).",
  ),
  groupSearchFilter: str(
    "",
    'Group search filter: {dn} = the user\'s DN, e.g. "(member={dn})" (set with groupSearchBase).',
  ),
  timeoutSeconds: int(5, 1, 120, "Connect, TLS handshake and per-operation timeout, per directory server."),
  defaultDomain: str("", "Domain used for {domain} and handed to the agent when the client sends none."),
});

const auth = section("auth", {
  order: doc(
    stringList(z.enum(["ldap", "local"], { error: MSG.oneOf(["ldap", "local"]) }))
      .min(1, { error: 'must name at least one of "ldap", "local"' })
      .superRefine((l, ctx) => unique(l, ctx, "method"))
      .default(["ldap", "local"]),
    "Order in which password checks are tried when both a directory and a users file are configured.",
  ),
});

const upstream = section("upstream", {
  dialect: oneOf(
    ["pcoip-client", "pcoip-broker"],
    "pcoip-client",
    "Root element of requests to the upstream broker (replies are accepted under either).",
  ),
  timeoutSeconds: int(10, 1, 300, "Upstream broker timeout for hello, authenticate, list and bye."),
  allocateTimeoutSeconds: int(
    30,
    1,
    600,
    "Upstream allocate timeout: must exceed the broker's own agent timeout, so its answer arrives first.",
  ),
  agentPort: int(
    60443,
    1,
    65535,
    "Agent port the CM launches sessions on when the broker's allocation names only the desktop's host.",
  ),
});

/** sg.agentPorts by default: PCoIP's own port. */
export const DEFAULT_AGENT_PORTS: readonly number[] = [4172];
/** sg.agentNetworks by default: the private and shared (CGNAT) IPv4 ranges and IPv6 ULA — no loopback. */
export const DEFAULT_AGENT_NETWORKS: readonly string[] = [
  "10.0.0.0/8",
  "172.16.0.0/12",
  "192.168.0.0/16",
  "100.64.0.0/10",
  "fc00::/7",
];

const sg = section("sg", {
  tcpListen: listenList(
    ["0.0.0.0:4172"],
    "TCP listeners of the PCoIP control channel (TLS passed through).",
    1,
  ),
  udpListen: listenList(["0.0.0.0:4172"], "UDP listeners of PCoIP media.", 1),
  udpSourcePorts: doc(
    z
      .string({ error: MSG.string })
      .refine(
        (s) => matchPortRange(s) !== undefined,
        'must be "FROM-TO" with 1024 ≤ FROM ≤ TO ≤ 65535, e.g. "55000-59999"',
      )
      .default("55000-59999"),
    "Source ports toward agents, one per session (firewall rules name this range).",
    '"FROM-TO", 1024 ≤ FROM ≤ TO ≤ 65535',
  ),
  maxSessions: int(5000, 1, 1000000, "Admitted sessions at once (the vendor's MaxConnections)."),
  maxSessionsPerClientIp: int(
    0,
    0,
    1000000,
    "Admitted sessions per client IP; 0 = no cap (a corporate NAT is one IP).",
  ),
  pendingTtlSeconds: int(90, 10, 3600, "An admission not used by a connection within this expires."),
  reconnectGraceSeconds: int(
    30,
    0,
    3600,
    "After a session's last control connection closes, reconnects are accepted this long.",
  ),
  udpIdleSeconds: int(120, 5, 86400, "A silent UDP flow is forgotten after this."),
  udpRebindSeconds: int(
    1,
    1,
    3600,
    "With several sessions on one client IP, a new client port may take the flow silent this long (NAT rebinding); one session per IP takes a new port at once.",
  ),
  // Kernel UDP path and per-session caps (issues 16 #3, 17).
  udpFastPath: oneOf(
    ["auto", "on", "off"] as const,
    "auto",
    "Media in the kernel (nftables DNAT/SNAT) once a session is admitted: auto = where CAP_NET_ADMIN and libnftables are present, on = refuse to start without them, off = the userspace relay.",
  ),
  maxConnectionsPerSession: int(4, 1, 1000, "TCP relays one admitted session may hold at once."),
  handshakeTimeoutSeconds: int(5, 1, 60, "The client's TLS ClientHello must arrive within this."),
  // Where the SG may relay a session (cm/agent-targets.ts): the agent's answer is not trusted blindly.
  agentPorts: doc(
    z
      .array(
        z
          .number({ error: MSG.int(1, 65535) })
          .int()
          .min(1)
          .max(65535),
        { error: MSG.list },
      )
      .min(1, { error: "must name at least one port" })
      .default([...DEFAULT_AGENT_PORTS]),
    "Agent ports the SG relays to; a session whose agent names another port is refused.",
    "list of ports 1–65535",
  ),
  agentNetworks: doc(
    addressList().default([...DEFAULT_AGENT_NETWORKS]),
    "With an upstream broker: networks the agents' addresses must lie in (built-in broker: the desktop's own agent).",
    'CIDRs, e.g. "10.0.0.0/8"; loopback only if added, e.g. "127.0.0.0/8"',
  ),
});

const admin = section("admin", {
  listen: doc(
    z.union([z.literal(""), listenString], { error: MSG.listen }).default("127.0.0.1:8099"),
    'Admin HTTP listener: /healthz, /readyz, /metrics, /sessions, drain. "" disables.',
    '"host:port", "[ipv6]:port" or ""',
  ),
  tokenFile: str(
    "/etc/pcoip-cmsg/admin.token",
    "File holding the bearer token (first line; mode 0600; made by install) that /sessions and every " +
      "state-changing call (POST /drain, /resume) need; the CLI reads it too. Required off loopback.",
  ),
  token: str(
    "",
    "Inline bearer token; overrides tokenFile (prefer the file: the config is widely readable).",
  ),
});

const license = section("license", {
  trustedCert: str("", "Stored for compatibility with the vendor's --trusted-license-cert; has no effect."),
  trustedCertKey: str(
    "",
    "Stored for compatibility with the vendor's --trusted-license-cert-key; has no effect.",
  ),
});

const desktop = z.object(
  {
    id: doc(
      z.string({ error: MSG.string }).min(1, { error: "must not be empty" }),
      "Resource id shown to the client and echoed back when it allocates (required, unique).",
    ),
    name: str("", "Display name (defaults to id)."),
    agent: doc(
      z
        .string({ error: MSG.string })
        .refine(
          (s) => parseAgentAddress(s) !== undefined,
          'must be "host", "host:port" or "[ipv6]:port" with port 1–65535',
        ),
      `Agent host or IP with optional :port (default ${DEFAULT_AGENT_PORT}) (required).`,
      '"host[:port]" or "[ipv6][:port]"',
    ),
    hostname: str(
      "",
      "Agent host name for launch-session and the client's SNI (defaults to the agent host).",
    ),
    users: doc(
      stringList(z.string({ error: MSG.string })).default([]),
      'Entitled user names, case-insensitive ("*" = every authenticated user).',
    ),
    groups: doc(
      stringList(z.string({ error: MSG.string })).default([]),
      "Entitled directory groups (CN or DN, case-insensitive).",
    ),
  },
  { error: "must be a table: write [[desktops]] and its keys on the lines below" },
);

// ── the whole file ───────────────────────────────────────────────────────────────────────────────────────────────

export const configSchema = z
  .object({
    logLevel: oneOf(
      ["debug", "info", "warn", "error"],
      "info",
      "Log level (LOG_LEVEL in the service's environment wins).",
    ),
    enableSecurityGateway: bool(
      true,
      "Relay PCoIP sessions through the Security Gateway (clients get externalPcoipIp); false = LAN mode.",
    ),
    enableCollaboration: bool(true, "Allow more than one concurrent allocation of one desktop."),
    enableIpv6: bool(
      false,
      "Add [::]:port beside every 0.0.0.0:port listener (fails on hosts with IPv6 disabled).",
    ),
    externalPcoipIp: doc(
      stringList(
        z
          .string({ error: MSG.string })
          .refine((s) => isIP(s) !== 0, "must be an IPv4 or IPv6 address literal"),
      )
        .refine(
          (a) => a.filter((ip) => isIP(ip) === 4).length <= 1 && a.filter((ip) => isIP(ip) === 6).length <= 1,
          "must hold at most one IPv4 and one IPv6 address",
        )
        .default([]),
      "Public address(es) of the Security Gateway handed to clients, matched to the client's family.",
      "at most one IPv4 and one IPv6 literal",
    ),
    hostAddress: doc(
      stringList(
        z.string({ error: MSG.string }).refine(isHost, "must be an IP address or a DNS name"),
      ).default([]),
      "This node's IP(s) and/or FQDN(s): the SANs of the self-signed certificate.",
    ),
    brokerUrl: doc(
      z
        .string({ error: MSG.string })
        .refine(isBrokerUrl, 'must be "" (built-in broker) or https://host[:port]')
        .default(""),
      '"" = built-in broker (desktops below); else the upstream broker every conversation is relayed to.',
      '"" or https://host[:port]',
    ),
    licenseServerUrl: doc(
      z
        .string({ error: MSG.string })
        .refine(isLicenseServer, 'must be "", "port@host" or "http(s)://host:port/request"')
        .default(""),
      "Fills license-path in launch-session.",
      '"", "port@host" or "http(s)://host:port/request"',
    ),
    domains: doc(
      stringList(z.string({ error: MSG.string }).min(1, { error: "must not be empty" })).default([]),
      "Domains offered to clients in hello-resp.",
    ),
    trustedProxies: doc(
      addressList().default([]),
      "Load balancers whose X-Forwarded-For is believed.",
      'IPs or CIDRs, e.g. "10.0.0.0/8"',
    ),
    usersFile: str(
      "/etc/pcoip-cmsg/users",
      'Local accounts of the built-in broker: lines "name:<argon2id hash>" (pcoip-cmsg user add); "" = none.',
    ),
    dataDir: nonEmpty("/var/lib/pcoip-cmsg", "State directory (generated certificates, runtime files)."),
    drainSeconds: int(
      30,
      0,
      86400,
      "On SIGTERM: no new sessions; live relays run up to this long, then the process exits.",
    ),
    tls,
    cm,
    ldap,
    auth,
    upstream,
    sg,
    admin,
    license,
    desktops: doc(
      z.array(desktop, { error: "must be tables: write [[desktops]] once per desktop" }).default([]),
      "Desktops of the built-in broker, one [[desktops]] table each.",
    ),
  })
  .superRefine(crossChecks);

export type Config = z.infer<typeof configSchema>;
export type DesktopConfig = Config["desktops"][number];

/**
 * Rules between keys. Zod runs this only when every value has the right type, but values may still be out of
 * range or badly formatted, so each rule re-checks what it relies on.
 */
function crossChecks(c: Config, ctx: z.RefinementCtx): void {
  const issue = (path: (string | number)[], message: string) =>
    ctx.addIssue({ code: "custom", path, message });

  if (c.admin.listen !== "") {
    const a = parseListen(c.admin.listen);
    if (a && !isLoopbackHost(a.hostname) && c.admin.token === "" && c.admin.tokenFile === "")
      issue(
        ["admin", "tokenFile"],
        `must be set when admin.listen (${c.admin.listen}) is not a loopback address: /sessions lists users ` +
          "and client IPs, and drain stops the service; name a file holding a long random token",
      );
  }

  // The SG address handed to clients must be this node's own: a balancer's address there sends media to the
  // balancer (or to another node), whose SG has no admission for it.
  for (const [key, list] of [
    ["trustedProxies", c.trustedProxies],
    ["cm.proxyProtocolFrom", c.cm.proxyProtocolFrom],
  ] as const) {
    const balancers = new Set(
      list.filter((e) => !e.includes("/") || /\/(32|128)$/.test(e)).map((e) => canonicalIp(e.split("/")[0]!)),
    );
    c.externalPcoipIp.forEach((ip, i) => {
      if (balancers.has(canonicalIp(ip)))
        issue(
          ["externalPcoipIp", i],
          `${ip} is a load balancer's address (${key}): each node needs its own external PCoIP address, which ` +
            "clients reach directly (UDP and TCP 4172 are not balanced); set this node's public IP",
        );
    });
  }

  const ids = new Set<string>();
  c.desktops.forEach((d, i) => {
    if (ids.has(d.id)) issue(["desktops", i, "id"], `duplicate desktop id "${d.id}": ids must be unique`);
    ids.add(d.id);
  });

  if (c.upstream.allocateTimeoutSeconds < c.upstream.timeoutSeconds)
    issue(
      ["upstream", "allocateTimeoutSeconds"],
      `must be at least upstream.timeoutSeconds (${c.upstream.timeoutSeconds}): an allocation waits on the ` +
        "broker's own call to the agent",
    );

  const range = matchPortRange(c.sg.udpSourcePorts);
  if (range)
    c.sg.udpListen.forEach((l, i) => {
      const port = parseListen(l)?.port;
      if (port !== undefined && port >= range.from && port <= range.to)
        issue(
          ["sg", "udpListen", i],
          `port ${port} lies inside sg.udpSourcePorts (${c.sg.udpSourcePorts}): move the listener or the range`,
        );
    });

  const urls = typeof c.ldap.url === "string" ? (c.ldap.url === "" ? [] : [c.ldap.url]) : c.ldap.url;
  urls.forEach((u, i) => {
    if (!isLdapUrl(u))
      issue(
        typeof c.ldap.url === "string" ? ["ldap", "url"] : ["ldap", "url", i],
        'must be "ldaps://host[:port]" or "ldap://host[:port]"',
      );
  });
  if (urls.length > 0) {
    if (!c.ldap.startTls && !c.ldap.allowInsecure && urls.some((u) => /^ldap:/i.test(u)))
      issue(
        ["ldap", "allowInsecure"],
        "ldap:// with startTls = false sends passwords in clear: use ldaps://, keep startTls = true, or set " +
          "allowInsecure = true for a lab",
      );
    if (c.ldap.bindDn === "" && (c.ldap.searchBase === "" || c.ldap.searchFilter === ""))
      issue(
        ["ldap", "searchBase"],
        'must be set when bindDn is "": the user is found by a search under searchBase with searchFilter',
      );
  }
  if (c.ldap.serviceBindDn !== "" && c.ldap.serviceBindPasswordFile === "")
    issue(
      ["ldap", "serviceBindPasswordFile"],
      "must name the file holding the password of serviceBindDn: an empty password is an unauthenticated bind",
    );
  if ((c.ldap.groupSearchBase === "") !== (c.ldap.groupSearchFilter === ""))
    issue(
      ["ldap", c.ldap.groupSearchBase === "" ? "groupSearchBase" : "groupSearchFilter"],
      'a group search needs both groupSearchBase and groupSearchFilter (e.g. "(member={dn})")',
    );
}

// ── after parsing ────────────────────────────────────────────────────────────────────────────────────────────────

export interface Advice {
  /** Key path the advice is about, e.g. ["sg", "maxSessions"]. */
  readonly path: readonly (string | number)[];
  readonly message: string;
}

/** Valid but probably not what was meant: shown as warnings by `config check` and at start-up. */
export function adviceFor(c: Config): Advice[] {
  const out: Advice[] = [];
  if (c.enableSecurityGateway && c.externalPcoipIp.length === 0)
    out.push({
      path: ["externalPcoipIp"],
      message:
        "is empty while enableSecurityGateway = true: clients need the gateway's public address; set it, or " +
        "enableSecurityGateway = false for LAN mode",
    });
  const range = matchPortRange(c.sg.udpSourcePorts);
  if (range && c.enableSecurityGateway && c.sg.maxSessions > range.to - range.from + 1)
    out.push({
      path: ["sg", "maxSessions"],
      message: `${c.sg.maxSessions} sessions exceed the ${range.to - range.from + 1} ports of sg.udpSourcePorts (one per session): widen the range`,
    });
  if (c.brokerUrl !== "" && c.desktops.length > 0)
    out.push({
      path: ["desktops"],
      message: "are ignored while brokerUrl is set: the upstream broker lists the desktops",
    });
  c.desktops.forEach((d, i) => {
    if (d.users.length === 0 && d.groups.length === 0)
      out.push({
        path: ["desktops", i],
        message: `desktop "${d.id}" lists no users and no groups, so nobody is entitled to it (users = ["*"] = everyone)`,
      });
  });
  return out;
}

/** For each "0.0.0.0:port", "[::]:port" is added (once) when enableIpv6 is on (SPEC §2); explicit addresses stay as written. */
export function effectiveListeners(list: readonly string[], enableIpv6: boolean): string[] {
  const out = [...list];
  if (!enableIpv6) return out;
  for (const entry of list) {
    const a = parseListen(entry);
    if (a?.hostname !== "0.0.0.0") continue;
    const v6 = `[::]:${a.port}`;
    if (!out.some((e) => parseListen(e)?.hostname === "::" && parseListen(e)?.port === a.port)) out.push(v6);
  }
  return out;
}

/**
 * The configuration the appliance runs: the listener lists with their IPv6 twins (see {@link effectiveListeners}).
 * Kept apart from parsing so that `config check`, `configure` and reload comparisons see what the file says.
 */
export function effectiveConfig(c: Config): Config {
  const v6 = (l: readonly string[]) => effectiveListeners(l, c.enableIpv6);
  return deepFreeze({
    ...c,
    cm: { ...c.cm, listen: v6(c.cm.listen), redirectListen: v6(c.cm.redirectListen) },
    sg: { ...c.sg, tcpListen: v6(c.sg.tcpListen), udpListen: v6(c.sg.udpListen) },
  });
}

export function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object" && !Object.isFrozen(value)) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
