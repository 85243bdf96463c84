/**
 * The directory settings the LDAP authenticator accepts (a plain object the config layer maps `[ldap]` onto),
 * checked once at construction: a mistake here is an administrator's, so it is thrown with the key, the bad
 * value and what is allowed, before any user tries to log in.
 */
import { X509Certificate } from "node:crypto";
import { isIP } from "node:net";
import { FilterParser } from "ldapts";
import { fillTemplate } from "./ldap-escape.ts";

export interface LdapOptions {
  /** Servers tried in order when one is unreachable: `ldaps://dc1.corp.example:636`, `ldap://dc2…`. */
  readonly urls: readonly string[];
  /**
   * Bind name template: `{user}@{domain}` (AD UPN), `{domain}\{user}` (AD down-level) or a DN such as
   * `uid={user},ou=people,dc=corp,dc=example`. Omit it to search for the user with `searchFilter` first.
   */
  readonly bindDn?: string;
  /** Where users are searched (search-then-bind), and where a template-bound user's entry is looked up. */
  readonly searchBase?: string;
  /** `(uid={user})`, `(sAMAccountName={user})` …; `{user}` and `{domain}` are filter-escaped. */
  readonly searchFilter?: string;
  /** Service account for the search (and group search); anonymous search when omitted. */
  readonly serviceBindDn?: string;
  readonly serviceBindPassword?: string;
  /** StartTLS on ldap:// URLs (default true). */
  readonly startTls?: boolean;
  /** Plain ldap:// without StartTLS is refused unless this is true: passwords would cross the wire in clear. */
  readonly allowInsecure?: boolean;
  /** PEM trust anchor(s) for ldaps:// and StartTLS; the system store when omitted. */
  readonly caCert?: string;
  /** Attribute of the user entry listing group DNs (default `memberOf`; empty string: do not read). */
  readonly groupAttribute?: string;
  /** Group search for directories without memberOf: base and filter with `{dn}` (user DN), `{user}`, `{domain}`. */
  readonly groupSearchBase?: string;
  readonly groupSearchFilter?: string;
  /** Timeout of the TCP connect, the TLS handshake and each LDAP operation (default 5000 ms). */
  readonly timeoutMs?: number;
  /** Domain used for `{domain}` and handed to the agent when the client sent none. */
  readonly defaultDomain?: string;
  /** Attribute holding the user name as the directory spells it (default: derived from bindDn/searchFilter). */
  readonly userAttribute?: string;
}

export type Transport = "ldaps" | "starttls" | "plain";

export interface LdapServer {
  readonly url: string;
  readonly host: string;
  readonly port: number;
  readonly transport: Transport;
}

/** How the bind name is built: a DN (values DN-escaped) or an AD logon name (UPN / DOMAIN\user). */
export type TemplateKind = "dn" | "upn" | "downlevel" | "name";

export interface LdapSettings {
  readonly servers: readonly LdapServer[];
  readonly mode: "template" | "search";
  readonly bindDn: string;
  readonly templateKind: TemplateKind;
  readonly searchBase: string | undefined;
  readonly searchFilter: string | undefined;
  readonly service: { readonly dn: string; readonly password: string } | undefined;
  readonly caCert: string | undefined;
  readonly groupAttribute: string | undefined;
  readonly groupSearch: { readonly base: string; readonly filter: string } | undefined;
  readonly timeoutMs: number;
  readonly defaultDomain: string;
  readonly userAttribute: string | undefined;
}

/** A configuration mistake, thrown at construction (never at login time). */
export class LdapConfigError extends Error {
  constructor(
    readonly key: string,
    message: string,
  ) {
    // Keys of other sections (tls.trustedCa) are named in full.
    super(`${key.includes(".") ? key : `ldap.${key}`}: ${message}`);
    this.name = "LdapConfigError";
  }
}

/** Validates and normalises; throws {@link LdapConfigError} naming the key, the value and what is allowed. */
export function resolveLdapSettings(o: LdapOptions): LdapSettings {
  if (!Array.isArray(o.urls) || o.urls.length === 0) {
    throw new LdapConfigError("urls", "no directory server given; set at least one ldaps:// or ldap:// URL");
  }
  const servers = o.urls.map((u) => parseServer(u, o.startTls ?? true, o.allowInsecure === true));

  const bindDn = o.bindDn?.trim() ?? "";
  const searchBase = o.searchBase?.trim() || undefined;
  const searchFilter = o.searchFilter?.trim() || undefined;
  if (bindDn) checkPlaceholders("bindDn", bindDn, ["user", "domain"], ["user"]);
  if (searchFilter) checkFilter("searchFilter", searchFilter, ["user", "domain"], ["user"]);
  const mode = bindDn ? "template" : "search";
  if (mode === "search" && (!searchBase || !searchFilter)) {
    throw new LdapConfigError(
      "bindDn",
      "neither a bind DN template nor a search is configured; set bindDn (e.g. " +
        '"{user}@{domain}" or "uid={user},ou=people,dc=corp,dc=example") or searchBase and searchFilter',
    );
  }

  let service: LdapSettings["service"];
  if (o.serviceBindDn?.trim()) {
    if (!o.serviceBindPassword) {
      throw new LdapConfigError(
        "serviceBindPassword",
        "empty for serviceBindDn " +
          `"${o.serviceBindDn}"; an empty password is an unauthenticated bind that proves nothing — ` +
          "put the service account's password in the password file",
      );
    }
    service = { dn: o.serviceBindDn.trim(), password: o.serviceBindPassword };
  }

  const caCert = o.caCert?.trim() || undefined;
  if (caCert) {
    try {
      new X509Certificate(caCert);
    } catch (e) {
      throw new LdapConfigError(
        "tls.trustedCa",
        `not a PEM certificate (${(e as Error).message}); give the CA bundle in PEM form`,
      );
    }
  }

  let groupSearch: LdapSettings["groupSearch"];
  const gBase = o.groupSearchBase?.trim();
  const gFilter = o.groupSearchFilter?.trim();
  if (gBase || gFilter) {
    if (!gBase || !gFilter) {
      throw new LdapConfigError(
        gBase ? "groupSearchFilter" : "groupSearchBase",
        "a group search needs both groupSearchBase and groupSearchFilter (e.g. (member={dn}))",
      );
    }
    checkFilter("groupSearchFilter", gFilter, ["dn", "user", "domain"], []);
    groupSearch = { base: gBase, filter: gFilter };
  }

  const timeoutMs = o.timeoutMs ?? 5000;
  if (!Number.isInteger(timeoutMs) || timeoutMs < 100 || timeoutMs > 120_000) {
    throw new LdapConfigError(
      "timeoutMs",
      `${timeoutMs} is out of range; allowed 100 to 120000 (milliseconds)`,
    );
  }

  const templateKind = bindDn ? kindOf(bindDn) : "dn";
  return {
    servers,
    mode,
    bindDn,
    templateKind,
    searchBase,
    searchFilter,
    service,
    caCert,
    groupAttribute: o.groupAttribute === undefined ? "memberOf" : o.groupAttribute.trim() || undefined,
    groupSearch,
    timeoutMs,
    defaultDomain: o.defaultDomain?.trim() ?? "",
    userAttribute: o.userAttribute?.trim() || deriveUserAttribute(bindDn, templateKind, searchFilter),
  };
}

function parseServer(raw: string, startTls: boolean, allowInsecure: boolean): LdapServer {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new LdapConfigError(
      "urls",
      `"${raw}" is not a URL; allowed ldaps://host[:port] or ldap://host[:port]`,
    );
  }
  const scheme = u.protocol.replace(/:$/, "");
  if ((scheme !== "ldap" && scheme !== "ldaps") || !u.hostname || (u.pathname !== "" && u.pathname !== "/")) {
    throw new LdapConfigError(
      "urls",
      `"${raw}" is not allowed; use ldaps://host[:port] or ldap://host[:port]`,
    );
  }
  const host = u.hostname.replace(/^\[(.*)\]$/, "$1");
  const port = u.port ? Number(u.port) : scheme === "ldaps" ? 636 : 389;
  const url = `${scheme}://${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
  if (scheme === "ldaps") return { url, host, port, transport: "ldaps" };
  if (startTls) return { url, host, port, transport: "starttls" };
  if (!allowInsecure) {
    throw new LdapConfigError(
      "allowInsecure",
      `"${raw}" with startTls = false would send passwords in clear text; use ldaps://, ` +
        "keep startTls = true, or set allowInsecure = true for a lab",
    );
  }
  return { url, host, port, transport: "plain" };
}

function placeholders(template: string): string[] {
  return [...template.matchAll(/\{(\w*)\}/g)].map((m) => m[1]!);
}

function checkPlaceholders(key: string, template: string, allowed: string[], required: string[]): void {
  for (const p of placeholders(template)) {
    if (!allowed.includes(p)) {
      throw new LdapConfigError(
        key,
        `"${template}" has unknown placeholder {${p}}; allowed ${allowed.map((a) => `{${a}}`).join(", ")}`,
      );
    }
  }
  for (const r of required) {
    if (!placeholders(template).includes(r)) {
      throw new LdapConfigError(key, `"${template}" must contain {${r}}`);
    }
  }
  if (required.length === 0 && placeholders(template).length === 0) {
    throw new LdapConfigError(
      key,
      `"${template}" must contain one of ${allowed.map((a) => `{${a}}`).join(", ")}`,
    );
  }
}

function checkFilter(key: string, filter: string, allowed: string[], required: string[]): void {
  checkPlaceholders(key, filter, allowed, required);
  try {
    if (!filter.startsWith("(")) throw new Error("not in parentheses");
    FilterParser.parseString(fillTemplate(filter, { user: "x", domain: "x", dn: "x" }));
  } catch (e) {
    throw new LdapConfigError(
      key,
      `"${filter}" is not an LDAP filter (${(e as Error).message}); write it in parentheses, e.g. (uid={user})`,
    );
  }
}

function kindOf(template: string): TemplateKind {
  const sample = template.replace(/\{\w+\}/g, "x");
  if (sample.includes("=")) return "dn";
  if (sample.includes("@")) return "upn";
  if (sample.includes("\\")) return "downlevel";
  return "name";
}

/** `uid={user},…` → uid; `(sAMAccountName={user})` → sAMAccountName; AD logon names → sAMAccountName. */
function deriveUserAttribute(
  bindDn: string,
  kind: TemplateKind,
  filter: string | undefined,
): string | undefined {
  if (bindDn && kind === "dn") return /^\s*([\w-]+)\s*=\s*\{user\}\s*,/.exec(bindDn)?.[1];
  if (bindDn) return "sAMAccountName";
  return filter ? /^\(([\w-]+)=\{user\}\)$/.exec(filter)?.[1] : undefined;
}
