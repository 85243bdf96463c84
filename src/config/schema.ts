/**
 * The one configuration schema (SPEC §6): defaults, limits and the description of every key. It is also the
 * reference documentation (`pcoip-cmsg config schema` prints it) and the source of every validation message.
 * Key names of SPEC §6 are fixed: tools and tests outside this repo rely on them.
 * Pure: imports nothing of ours but the client-address parser used to validate trusted proxies.
 */
import { isIP } from "node:net";
import { z } from "zod";
import { compileTrustedProxies } from "../net/client-address.ts";

/** "host:port", "[v6]:port" or ":port"; port 0 only for tests (ephemeral). */
export const LISTEN_PATTERN = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]*)):(\d{1,5})$/;

export interface ListenAddress {
  readonly hostname: string;
  readonly port: number;
}

/** Parses a listen string; undefined when it does not match. "[::]:443" → { hostname: "::", port: 443 }. */
export function parseListen(s: string): ListenAddress | undefined {
  const m = LISTEN_PATTERN.exec(s.trim());
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  const hostname = m[1] ?? (m[2] || "0.0.0.0");
  if (m[1] !== undefined && isIP(m[1]) !== 6) return undefined;
  return { hostname, port };
}

const listen = z.string().refine((s) => parseListen(s) !== undefined, {
  message: 'must be "host:port" or "[ipv6]:port" with port 0–65535, e.g. "0.0.0.0:443"',
});

const listenList = (def: string[], what: string) => z.array(listen).default(def).describe(what);

const bool = (def: boolean, what: string) => z.boolean().default(def).describe(what);
const int = (def: number, min: number, max: number, what: string) =>
  z
    .number({ message: `must be an integer from ${min} to ${max}` })
    .int({ message: `must be an integer from ${min} to ${max}` })
    .min(min, { message: `must be an integer from ${min} to ${max}` })
    .max(max, { message: `must be an integer from ${min} to ${max}` })
    .default(def)
    .describe(what);
const str = (def: string, what: string) => z.string().default(def).describe(what);

const ipLiteral = z
  .string()
  .refine((s) => isIP(s) !== 0, { message: "must be an IPv4 or IPv6 address literal" });

const httpsUrl = z
  .string()
  .refine(
    (s) =>
      s === "" ||
      /^https:\/\/[^/\s:]+(:\d{1,5})?\/?$/.test(s) ||
      /^https:\/\/\[[0-9a-fA-F:.]+\](:\d{1,5})?\/?$/.test(s),
    {
      message: 'must be "" (built-in broker) or https://host[:port]',
    },
  );

const tls = z
  .object({
    cert: str(
      "/etc/pcoip-cmsg/certs/cm.pem",
      "PEM certificate (leaf first; a chain may follow) served on 443.",
    ),
    key: str(
      "/etc/pcoip-cmsg/certs/cm.key",
      "PEM private key of `cert` (RSA ≥2048 bits or EC P-256/P-384), unencrypted.",
    ),
    caCert: str(
      "",
      "PEM CA certificate(s): served after the leaf as the chain, and trusted for broker/agent/LDAP checks.",
    ),
    brokerCertCheck: bool(
      true,
      "Verify the upstream broker's certificate (against caCert and the system store).",
    ),
    agentCertCheck: bool(
      false,
      "Verify agents' certificates against caCert (agents ship self-signed certificates, so off).",
    ),
    selfSigned: bool(
      false,
      "Generate a self-signed RSA-3072 pair at cert/key when they do not exist (demo, lab).",
    ),
    ciphers: z
      .array(z.string())
      .min(1, { message: "must name at least one TLS 1.2 suite" })
      .default([
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-GCM-SHA256",
      ])
      .describe(
        "TLS 1.2 cipher suites in preference order (TLS 1.3 suites are the library's and cannot be narrowed).",
      ),
  })
  .prefault({});

const throttle = z
  .object({
    failuresBeforeDelay: int(3, 0, 1000, "Failed logins per (client IP, user) answered without delay."),
    maxDelaySeconds: int(10, 0, 120, "Longest delay added to a failed-login answer."),
    distinctUsersPerIp: int(
      30,
      1,
      100000,
      "Distinct failing user names from one client IP before the IP as a whole is slowed (a NAT is one IP).",
    ),
    maxDelayedAnswers: int(
      1000,
      0,
      100000,
      "Delayed answers in flight at once; beyond this failures are answered at once.",
    ),
    windowSeconds: int(900, 1, 86400, "How long failures are remembered."),
  })
  .prefault({});

const cm = z
  .object({
    listen: listenList(
      ["0.0.0.0:443"],
      'HTTPS listeners of the broker protocol ("[::]:443" is added when enableIpv6 = true).',
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
      "Broker/agent calls in flight at once; beyond this clients get a clear busy answer.",
    ),
    bodyLimitBytes: int(65536, 1024, 1048576, "Largest request body accepted."),
    headerTimeoutSeconds: int(10, 1, 300, "The request head must arrive within this (slow clients)."),
    idleTimeoutSeconds: int(60, 1, 3600, "Idle keep-alive connections are closed after this."),
    maxConnections: int(20000, 1, 1000000, "Client connections open at once on the front door."),
    agentTimeoutSeconds: int(20, 1, 300, "Longest wait for an agent's launch-session answer."),
    throttle,
  })
  .prefault({});

const ldap = z
  .object({
    url: z
      .union([z.string(), z.array(z.string())])
      .default("")
      .describe(
        'ldaps://dc1.corp.example:636 or ldap://… (StartTLS); a list is tried in order. "" = no directory.',
      ),
    bindDn: str(
      "{user}@{domain}",
      "DN template for the user's simple bind: {user}, {domain}; e.g. uid={user},ou=people,dc=corp,dc=example.",
    ),
    searchBase: str("", "With a service account: where to search for the user (search-then-bind)."),
    searchFilter: str(
      "(sAMAccountName={user})",
      "Filter finding the user in searchBase ({user} is escaped).",
    ),
    serviceBindDn: str("", "Service account DN for search-then-bind and group searches."),
    serviceBindPasswordFile: str("", "File holding the service account's password (mode 0600)."),
    startTls: bool(true, "Use StartTLS on ldap:// URLs."),
    allowInsecure: bool(
      false,
      "Allow plain ldap:// without StartTLS (passwords cross the network in clear).",
    ),
    groupAttribute: str("memberOf", 'User attribute listing group DNs; "" to use a group search instead.'),
    groupSearchBase: str("", "Group search base (directories without memberOf)."),
    groupSearchFilter: str("(member={dn})", "Group search filter ({dn} = the user's DN)."),
    timeoutSeconds: int(5, 1, 120, "Connect and operation timeout per directory server."),
    defaultDomain: str("", "Domain used when the client sends none."),
  })
  .prefault({});

const auth = z
  .object({
    order: z
      .array(z.enum(["ldap", "local"], { message: 'each entry must be "ldap" or "local"' }))
      .default(["ldap", "local"])
      .describe(
        "Order in which password checks are tried when both a directory and a users file are configured.",
      ),
  })
  .prefault({});

const upstream = z
  .object({
    dialect: z
      .enum(["pcoip-client", "pcoip-broker"], { message: 'must be "pcoip-client" or "pcoip-broker"' })
      .default("pcoip-client")
      .describe("Root element used toward the upstream broker (replies are accepted under either)."),
    timeoutSeconds: int(10, 1, 300, "Upstream broker answer timeout for hello/authenticate/list/bye."),
    allocateTimeoutSeconds: int(
      30,
      1,
      600,
      "Upstream allocate timeout; must exceed the broker's own agent timeout.",
    ),
  })
  .prefault({});

const portRange = z.string().refine(
  (s) => {
    const m = /^(\d{1,5})-(\d{1,5})$/.exec(s);
    if (!m) return false;
    const from = Number(m[1]);
    const to = Number(m[2]);
    return from >= 1024 && to <= 65535 && from <= to;
  },
  { message: 'must be "FROM-TO" with 1024 ≤ FROM ≤ TO ≤ 65535, e.g. "55000-59999"' },
);

const sg = z
  .object({
    tcpListen: listenList(
      ["0.0.0.0:4172"],
      "TCP listeners of the PCoIP control channel (TLS passed through).",
    ),
    udpListen: listenList(["0.0.0.0:4172"], "UDP listeners of PCoIP media."),
    udpSourcePorts: portRange
      .default("55000-59999")
      .describe("Source ports toward agents: one per session (firewall rules name this range)."),
    maxSessions: int(5000, 1, 1000000, "Admitted sessions at once (the vendor's MaxConnections)."),
    maxSessionsPerClientIp: int(
      0,
      0,
      1000000,
      "Admitted sessions per client IP; 0 = no cap (a corporate NAT is one IP).",
    ),
    pendingTtlSeconds: int(90, 10, 3600, "An admission unused this long expires."),
    reconnectGraceSeconds: int(
      30,
      0,
      3600,
      "After a session's last control connection closes, reconnects are accepted this long.",
    ),
    udpIdleSeconds: int(120, 5, 86400, "A silent UDP flow is forgotten after this."),
    udpRebindSeconds: int(
      10,
      1,
      3600,
      "A session whose client flow was silent this long may be re-bound to a new client port (NAT rebinding).",
    ),
    handshakeTimeoutSeconds: int(5, 1, 60, "The client's TLS ClientHello must arrive within this."),
  })
  .prefault({});

const admin = z
  .object({
    listen: z
      .union([z.literal(""), listen])
      .default("127.0.0.1:8099")
      .describe('Admin HTTP listener (/healthz, /readyz, /metrics, /sessions); "" disables.'),
    token: str("", "Bearer token required by the admin listener; mandatory when it is not on loopback."),
  })
  .prefault({});

const license = z
  .object({
    trustedCert: str("", "Stored for compatibility with the vendor's --trusted-license-cert; has no effect."),
    trustedCertKey: str(
      "",
      "Stored for compatibility with the vendor's --trusted-license-cert-key; has no effect.",
    ),
  })
  .prefault({});

const desktop = z.object({
  id: z
    .string()
    .min(1, { message: "must not be empty" })
    .describe("Resource id shown to and echoed by the client."),
  name: z.string().default("").describe("Display name (defaults to id)."),
  agent: z
    .string()
    .min(1, { message: "must not be empty" })
    .refine((s) => /^(\[[0-9A-Fa-f:.]+\]|[^\s:[\]]+)(:\d{1,5})?$/.test(s), {
      message: 'must be "host", "host:port" or "[ipv6]:port"',
    })
    .describe("Agent host or IP, optional :port (default 60443)."),
  hostname: z
    .string()
    .default("")
    .describe("Agent host name sent in launch-session (defaults to the agent host)."),
  users: z.array(z.string()).default([]).describe('Entitled user names ("*" = every authenticated user).'),
  groups: z.array(z.string()).default([]).describe("Entitled directory groups (CN or DN, case-insensitive)."),
});

export const configSchema = z
  .object({
    logLevel: z
      .enum(["debug", "info", "warn", "error"], { message: "must be one of debug, info, warn, error" })
      .default("info")
      .describe("Log level (LOG_LEVEL in the environment wins)."),
    enableSecurityGateway: bool(
      true,
      "Relay PCoIP sessions through the Security Gateway (clients get externalPcoipIp).",
    ),
    enableCollaboration: bool(true, "Allow more than one concurrent allocation of one desktop."),
    enableIpv6: bool(false, "Add [::] listeners (fails on hosts with IPv6 disabled)."),
    externalPcoipIp: z
      .array(ipLiteral)
      .default([])
      .refine(
        (a) => a.filter((ip) => isIP(ip) === 4).length <= 1 && a.filter((ip) => isIP(ip) === 6).length <= 1,
        {
          message: "at most one IPv4 and one IPv6 address",
        },
      )
      .describe("Public address(es) of the SG handed to clients: one IPv4 and/or one IPv6."),
    hostAddress: z
      .array(z.string())
      .default([])
      .describe("This node's IP and/or FQDN (SANs of the self-signed certificate)."),
    brokerUrl: httpsUrl
      .default("")
      .describe('"" = built-in broker; else the upstream broker https://host[:port].'),
    licenseServerUrl: str(
      "",
      "Fills license-path in launch-session (port@host or http(s)://host:port/request).",
    ),
    domains: z.array(z.string()).default([]).describe("Domains offered to clients in hello-resp."),
    trustedProxies: z
      .array(z.string())
      .default([])
      .superRefine((list, ctx) => {
        try {
          compileTrustedProxies(list);
        } catch (e) {
          ctx.addIssue({ code: "custom", message: (e as Error).message });
        }
      })
      .describe("Load balancers whose X-Forwarded-For is believed (IPs or CIDRs)."),
    usersFile: str(
      "/etc/pcoip-cmsg/users",
      'Local accounts of the built-in broker: lines "name:<argon2id hash>".',
    ),
    dataDir: str("/var/lib/pcoip-cmsg", "State directory (generated certificates, runtime files)."),
    drainSeconds: int(60, 0, 86400, "On SIGTERM, live relays run this long before the process exits."),
    tls,
    cm,
    ldap,
    auth,
    upstream,
    sg,
    admin,
    license,
    desktops: z.array(desktop).default([]).describe("Desktops of the built-in broker ([[desktops]] tables)."),
  })
  .superRefine((c, ctx) => {
    if (c.admin.listen !== "") {
      const a = parseListen(c.admin.listen);
      const loopback =
        a && (a.hostname === "::1" || a.hostname.startsWith("127.") || a.hostname === "localhost");
      if (!loopback && c.admin.token === "") {
        ctx.addIssue({
          code: "custom",
          path: ["admin", "token"],
          message: `must be set when admin.listen (${c.admin.listen}) is not a loopback address: /sessions lists users and client IPs`,
        });
      }
    }
    const ids = new Set<string>();
    c.desktops.forEach((d, i) => {
      if (ids.has(d.id))
        ctx.addIssue({
          code: "custom",
          path: ["desktops", i, "id"],
          message: `duplicate desktop id "${d.id}"`,
        });
      ids.add(d.id);
    });
    if (c.upstream.allocateTimeoutSeconds <= c.upstream.timeoutSeconds) {
      ctx.addIssue({
        code: "custom",
        path: ["upstream", "allocateTimeoutSeconds"],
        message:
          "must be greater than upstream.timeoutSeconds (a broker's allocate waits on its own agent call)",
      });
    }
  });

export type Config = z.infer<typeof configSchema>;
export type DesktopConfig = Config["desktops"][number];

/** Listener lists with "[::]:port" added for each IPv4 wildcard when enableIpv6 is on (SPEC §2). */
export function effectiveListeners(list: readonly string[], enableIpv6: boolean): string[] {
  const out = [...list];
  if (!enableIpv6) return out;
  for (const entry of list) {
    const a = parseListen(entry);
    if (a && a.hostname === "0.0.0.0") {
      const v6 = `[::]:${a.port}`;
      if (!out.includes(v6)) out.push(v6);
    }
  }
  return out;
}

/** "55000-59999" → { from: 55000, to: 59999 } (validated by the schema). */
export function parsePortRange(s: string): { from: number; to: number } {
  const [from, to] = s.split("-").map(Number);
  return { from: from!, to: to! };
}
