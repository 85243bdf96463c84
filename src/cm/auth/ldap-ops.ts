/**
 * The LDAP operations both the login and `diagnose` use, with LDAP result codes turned into values (a socket
 * failure still throws, so the caller can try the next server).
 */
import type { Entry } from "ldapts";
import type { LdapConnection } from "./ldap-connection.ts";
import type { LdapSettings } from "./ldap-options.ts";
import { resultCodeOf } from "./ldap-results.ts";

/**
 * Service bind (or nothing, for anonymous search); the refusal detail when refused. A refusal is final for a
 * login: every server shares the account.
 */
export async function bindService(conn: LdapConnection, settings: LdapSettings): Promise<string | undefined> {
  if (!settings.service) return undefined;
  try {
    await conn.client.bind(settings.service.dn, settings.service.password);
    return undefined;
  } catch (e) {
    const rc = resultCodeOf(e);
    if (!rc) throw e;
    return (
      `ldap: service account bind as ${settings.service.dn} at ${conn.server.url} refused (result ${rc.code}` +
      `${rc.message ? `: ${rc.message}` : ""}); check [ldap].serviceBindDn and its password file`
    );
  }
}

/** A search whose LDAP errors are values; socket errors still throw (the caller tries the next server). */
export async function search(
  conn: Pick<LdapConnection, "client">,
  base: string,
  scope: "base" | "sub",
  filter: string,
  settings: LdapSettings,
  attributes?: string[],
  sizeLimit = 2,
): Promise<{ entries: Entry[] } | { error: string }> {
  const wanted =
    attributes ?? [settings.userAttribute, settings.groupAttribute].filter((a): a is string => !!a);
  // "1.1" asks for no attributes (RFC 4511 §4.5.1.8); an empty list would mean all of them.
  const attrs = wanted.length > 0 ? wanted : ["1.1"];
  try {
    const r = await conn.client.search(base, {
      scope,
      filter,
      attributes: attrs,
      sizeLimit,
      timeLimit: Math.ceil(settings.timeoutMs / 1000),
      derefAliases: "never",
    });
    return { entries: r.searchEntries };
  } catch (e) {
    const rc = resultCodeOf(e);
    if (!rc) throw e;
    return { error: `result ${rc.code}${rc.message ? `: ${rc.message}` : ""}` };
  }
}

/** An attribute's values as strings, matching the name case-insensitively (servers echo their own case). */
export function values(entry: Entry, attribute: string): string[] {
  const want = attribute.toLowerCase();
  for (const [k, v] of Object.entries(entry)) {
    if (k.toLowerCase() !== want || k === "dn") continue;
    const list = Array.isArray(v) ? v : [v];
    return list.map((x) => (typeof x === "string" ? x : x.toString("utf8"))).filter((x) => x !== "");
  }
  return [];
}
