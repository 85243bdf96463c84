/**
 * Password check against a directory (Active Directory or any LDAP server) by a simple bind as the user —
 * the password must be the directory's, because the CM hands it on to the agent for the Windows logon.
 *
 * Two ways to find the user's bind name:
 *  - template: `bindDn` such as `{user}@{domain}`, `{domain}\{user}` or `uid={user},ou=people,dc=corp,dc=example`;
 *    after the bind the user's own entry is read (base read of the DN, or a search for the UPN / sAMAccountName
 *    under `searchBase` or the server's default naming context) for the canonical name and groups;
 *  - search-then-bind: a service account (or anonymous) searches `searchBase` with `searchFilter`, then the
 *    found DN binds with the password.
 *
 * Groups: the values of `groupAttribute` (memberOf) and/or the DNs a group search (`groupSearchFilter` with
 * `{dn}`) finds. Each group is returned twice — its CN (the first RDN's value, e.g. `cad-users`) and its full DN
 * as the directory spells it — so `[[desktops]].groups` may name either; compare case-insensitively.
 * Nested AD groups: use a group search with `(member:1.2.840.113556.1.4.1941:={dn})`.
 *
 * Safety: user name and domain are escaped for filters (RFC 4515) and DNs (RFC 4514) and refused when they
 * contain characters an AD logon name cannot; an empty password is refused before any server is contacted
 * (RFC 4513 §5.1.2: a name with an empty password is an "unauthenticated bind" that servers answer with
 * success). Passwords never reach a log line or a `detail`. A login's connection is kept for the next one when
 * every login starts with a bind (ldap-pool.ts: a bind changes the connection's identity), else closed.
 */
import type { Client, Entry } from "ldapts";
import type { Logger } from "../../observability/log.ts";
import type { Authenticator, AuthFailureReason, AuthOutcome, Credentials } from "./authenticator.ts";
import {
  describeConnectionError,
  type LdapConnection,
  openConnection,
  type ServerFailure,
} from "./ldap-connection.ts";
import { escapeDnValue, escapeFilterValue, fillTemplate, firstRdnValue } from "./ldap-escape.ts";
import { bindService, search, values } from "./ldap-ops.ts";
import { type LdapOptions, type LdapServer, type LdapSettings, resolveLdapSettings } from "./ldap-options.ts";
import { createLdapPool, type LdapPool } from "./ldap-pool.ts";
import { classifyBindFailure, PasswordPolicyControl, PPOLICY_ERROR, resultCodeOf } from "./ldap-results.ts";

export { checkDirectory, type DirectoryCheck } from "./ldap-diagnose.ts";
export type { LdapOptions } from "./ldap-options.ts";
export { LdapConfigError } from "./ldap-options.ts";

export interface LdapDeps {
  /** For construction-time warnings (e.g. allowInsecure); per-login lines go to the logger passed to authenticate. */
  readonly log?: Logger;
}

const MAX_USER_LENGTH = 256;
const MAX_PASSWORD_LENGTH = 1024;
/** Characters AD forbids in logon names (and `@`, which would change the UPN); refused for non-DN templates. */
const LOGON_NAME_FORBIDDEN = /["/\\[\]:;|=,+*?<>@\u0000-\u001f\u007f]/;

type Attempt = { readonly outcome: AuthOutcome } | { readonly retry: ServerFailure };

/**
 * Builds the directory authenticator; throws {@link LdapConfigError} on a configuration mistake.
 *
 * @example
 * const auth = createLdapAuthenticator({ urls: ["ldaps://dc1.corp.example"], bindDn: "{user}@{domain}",
 *   defaultDomain: "corp.example", caCert: pem });
 * const r = await auth.authenticate({ username: "alice", password, domain: "" }, log);
 */
export function createLdapAuthenticator(options: LdapOptions, deps: LdapDeps = {}): Authenticator {
  const settings = resolveLdapSettings(options);
  const plain = settings.servers.filter((s) => s.transport === "plain").map((s) => s.url);
  if (plain.length > 0) {
    deps.log?.warn(
      { servers: plain },
      "ldap: allowInsecure: passwords cross the network unencrypted; use ldaps:// or StartTLS outside a lab",
    );
  }
  const pool = createLdapPool({
    open: (server) => openConnection(server, settings),
    everyUseBinds: settings.mode === "template" || settings.service !== undefined,
  });
  return {
    name: "ldap",
    authenticate: (credentials, log) => authenticate(settings, pool, credentials, log),
    close: () => pool.close(),
  };
}

async function authenticate(
  settings: LdapSettings,
  pool: LdapPool,
  creds: Credentials,
  log: Logger,
): Promise<AuthOutcome> {
  const refused = precheck(settings, creds);
  if (refused) return refused;
  const domain = creds.domain || settings.defaultDomain;
  const failures: ServerFailure[] = [];
  const run = async (conn: LdapConnection, server: LdapServer): Promise<Attempt> => {
    try {
      return settings.mode === "template"
        ? await templateBind(conn, settings, creds, domain, log)
        : await searchThenBind(conn, settings, creds, domain, log);
    } catch (e) {
      return { retry: describeConnectionError(e, server, settings.timeoutMs) };
    }
  };
  for (const server of settings.servers) {
    const acquired = await pool.acquire(server);
    if (!acquired.ok) {
      failures.push(acquired.failure);
      continue;
    }
    let conn = acquired.conn;
    let attempt = await run(conn, server);
    if ("retry" in attempt && acquired.reused) {
      // A kept connection the server closed meanwhile (idle timeout, restart): once more on a new one.
      await conn.close();
      const opened = await openConnection(server, settings);
      if (!opened.ok) {
        failures.push(opened.failure);
        continue;
      }
      conn = opened.conn;
      attempt = await run(conn, server);
    }
    if ("retry" in attempt) {
      await conn.close();
      failures.push(attempt.retry);
      continue;
    }
    pool.release(conn);
    for (const f of failures) {
      log.warn({ server: f.url, cause: f.cause, fix: f.fix }, "ldap: server unusable; used the next one");
    }
    return attempt.outcome;
  }
  return {
    ok: false,
    reason: "unavailable",
    detail: `ldap: no directory server usable: ${failures.map((f) => `${f.url}: ${f.cause} (fix: ${f.fix})`).join("; ")}`,
  };
}

function fail(reason: AuthFailureReason, detail: string): AuthOutcome {
  return { ok: false, reason, detail };
}

/** Refusals that need no server: empty or oversized input, names a logon-name template cannot carry. */
function precheck(settings: LdapSettings, creds: Credentials): AuthOutcome | undefined {
  if (creds.username === "") return fail("bad_credentials", "ldap: empty user name refused");
  if (creds.password === "") {
    return fail(
      "bad_credentials",
      "ldap: empty password refused without contacting the directory (it would be an unauthenticated bind)",
    );
  }
  if (creds.username.length > MAX_USER_LENGTH || creds.password.length > MAX_PASSWORD_LENGTH) {
    return fail("bad_credentials", "ldap: user name or password longer than allowed");
  }
  const domain = creds.domain || settings.defaultDomain;
  const templates = [settings.mode === "template" ? settings.bindDn : "", settings.searchFilter ?? ""];
  if (domain === "" && templates.some((t) => t.includes("{domain}"))) {
    return fail(
      "bad_credentials",
      "ldap: the client sent no domain and [ldap].defaultDomain is empty (needed for {domain}); set defaultDomain",
    );
  }
  if (settings.mode === "template" && settings.templateKind !== "dn") {
    for (const [what, value] of [
      ["user name", creds.username],
      ["domain", domain],
    ] as const) {
      if (LOGON_NAME_FORBIDDEN.test(value)) {
        return fail("bad_credentials", `ldap: ${what} "${value}" has characters a logon name cannot contain`);
      }
    }
  }
  return undefined;
}

function bindNameFor(settings: LdapSettings, user: string, domain: string): string {
  const esc = settings.templateKind === "dn" ? escapeDnValue : (v: string) => v;
  return fillTemplate(settings.bindDn, { user: esc(user), domain: esc(domain) });
}

/** Binds as the user with the password-policy control; `undefined` = success, else the attempt's end. */
async function bindUser(
  client: Client,
  name: string,
  password: string,
  where: LdapServer,
): Promise<Attempt | undefined> {
  const policy = new PasswordPolicyControl();
  try {
    await client.bind(name, password, policy);
  } catch (e) {
    const rc = resultCodeOf(e);
    if (!rc) throw e;
    const v = classifyBindFailure(rc.code, rc.message, policy.response, `${name} at ${where.url}`);
    if (v.kind === "retry") {
      return { retry: { url: where.url, kind: "protocol", cause: v.cause, fix: v.fix } };
    }
    return { outcome: fail(v.reason, v.detail) };
  }
  if (policy.response?.error === PPOLICY_ERROR.changeAfterReset) {
    // The server let the bind through but allows nothing but a password change: the agent logon would fail.
    return {
      outcome: fail(
        "expired_password",
        `ldap bind as ${name} at ${where.url}: password must be changed (ppolicy)`,
      ),
    };
  }
  return undefined;
}

async function templateBind(
  conn: LdapConnection,
  settings: LdapSettings,
  creds: Credentials,
  domain: string,
  log: Logger,
): Promise<Attempt> {
  const name = bindNameFor(settings, creds.username, domain);
  const refused = await bindUser(conn.client, name, creds.password, conn.server);
  if (refused) return refused;
  const entry = await readOwnEntry(conn, settings, name, creds.username, domain, log);
  if (settings.groupSearch && settings.service) {
    // Group entries are often unreadable to ordinary users: search them as the service account.
    const refused = await bindService(conn, settings);
    if (refused) log.warn({ cause: refused }, "ldap: group search without the service account");
  }
  const groups = await collectGroups(conn, settings, entry, creds.username, domain, log);
  return { outcome: success(settings, entry, creds.username, domain, groups) };
}

async function searchThenBind(
  conn: LdapConnection,
  settings: LdapSettings,
  creds: Credentials,
  domain: string,
  log: Logger,
): Promise<Attempt> {
  const refused = await bindService(conn, settings);
  if (refused) return { outcome: fail("unavailable", refused) };
  const filter = fillTemplate(settings.searchFilter!, {
    user: escapeFilterValue(creds.username),
    domain: escapeFilterValue(domain),
  });
  const found = await search(conn, settings.searchBase!, "sub", filter, settings);
  if ("error" in found) {
    return {
      outcome: fail("unavailable", `ldap: searching the user: ${found.error} (check [ldap].searchBase)`),
    };
  }
  if (found.entries.length === 0) {
    return { outcome: fail("unknown_user", `ldap: no entry under ${settings.searchBase} matches ${filter}`) };
  }
  if (found.entries.length > 1) {
    return {
      outcome: fail(
        "bad_credentials",
        `ldap: ${filter} matches more than one entry under ${settings.searchBase}; make [ldap].searchFilter unique`,
      ),
    };
  }
  const entry = found.entries[0]!;
  // Groups are read with the service account's rights, before the connection takes the user's identity.
  const groups = await collectGroups(conn, settings, entry, creds.username, domain, log);
  const refusedUser = await bindUser(conn.client, entry.dn, creds.password, conn.server);
  if (refusedUser) return refusedUser;
  return { outcome: success(settings, entry, creds.username, domain, groups) };
}

function success(
  settings: LdapSettings,
  entry: Entry | undefined,
  typed: string,
  domain: string,
  groups: string[],
): AuthOutcome {
  const spelled = entry && settings.userAttribute ? values(entry, settings.userAttribute)[0] : undefined;
  return { ok: true, user: spelled || typed, groups, domain };
}

/**
 * The bound user's entry, for the canonical name and memberOf. Not finding it is not a login failure (the
 * password was right) but leaves groups empty, which is logged because entitlements by group then fail.
 */
async function readOwnEntry(
  conn: LdapConnection,
  settings: LdapSettings,
  bindName: string,
  user: string,
  domain: string,
  log: Logger,
): Promise<Entry | undefined> {
  let base: string;
  let scope: "base" | "sub";
  let filter: string;
  if (settings.templateKind === "dn") {
    [base, scope, filter] = [bindName, "base", "(objectClass=*)"];
  } else {
    const b = settings.searchBase ?? (await defaultNamingContext(conn.client, settings));
    if (!b) {
      log.warn({ server: conn.server.url }, "ldap: cannot find the user's entry: set [ldap].searchBase");
      return undefined;
    }
    base = b;
    scope = "sub";
    filter = settings.searchFilter
      ? fillTemplate(settings.searchFilter, {
          user: escapeFilterValue(user),
          domain: escapeFilterValue(domain),
        })
      : settings.templateKind === "upn"
        ? `(userPrincipalName=${escapeFilterValue(bindName)})`
        : `(sAMAccountName=${escapeFilterValue(user)})`;
  }
  let found = await search(conn, base, scope, filter, settings);
  if (
    !settings.searchFilter &&
    settings.templateKind === "upn" &&
    "entries" in found &&
    !found.entries.length
  ) {
    // The UPN suffix a user logs on with need not be the one stored (alternative UPN suffixes).
    filter = `(sAMAccountName=${escapeFilterValue(user)})`;
    found = await search(conn, base, scope, filter, settings);
  }
  if ("error" in found || found.entries.length !== 1) {
    log.warn(
      {
        server: conn.server.url,
        base,
        filter,
        cause: "error" in found ? found.error : `${found.entries.length} entries`,
      },
      "ldap: bound, but cannot read the user's own entry; groups unknown (check [ldap].searchBase / searchFilter)",
    );
    return undefined;
  }
  return found.entries[0];
}

async function defaultNamingContext(client: Client, settings: LdapSettings): Promise<string | undefined> {
  const r = await search({ client }, "", "base", "(objectClass=*)", settings, [
    "defaultNamingContext",
    "namingContexts",
  ]);
  if ("error" in r || !r.entries[0]) return undefined;
  const e = r.entries[0];
  return values(e, "defaultNamingContext")[0] ?? values(e, "namingContexts")[0];
}

async function collectGroups(
  conn: LdapConnection,
  settings: LdapSettings,
  entry: Entry | undefined,
  user: string,
  domain: string,
  log: Logger,
): Promise<string[]> {
  const dns: string[] = [];
  if (entry && settings.groupAttribute) dns.push(...values(entry, settings.groupAttribute));
  if (entry && settings.groupSearch) {
    const filter = fillTemplate(settings.groupSearch.filter, {
      dn: escapeFilterValue(entry.dn),
      user: escapeFilterValue(user),
      domain: escapeFilterValue(domain),
    });
    const found = await search(conn, settings.groupSearch.base, "sub", filter, settings, ["1.1"], 0);
    if ("error" in found) {
      log.warn(
        { server: conn.server.url, base: settings.groupSearch.base, filter, cause: found.error },
        "ldap: group search failed; groups unknown (check [ldap].groupSearchBase / groupSearchFilter)",
      );
    } else {
      dns.push(...found.entries.map((e) => e.dn));
    }
  }
  const out = new Set<string>();
  for (const dn of dns) {
    const cn = firstRdnValue(dn);
    if (cn) out.add(cn);
    out.add(dn);
  }
  return [...out];
}
