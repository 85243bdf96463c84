/**
 * `pcoip-cmsg diagnose` for the directory: per configured server, can we connect, is its certificate trusted,
 * does the service account bind, do the search bases exist. Every answer carries the fix for what failed.
 */
import {
  describeConnectionError,
  type LdapConnection,
  openConnection,
  type ServerFailure,
} from "./ldap-connection.ts";
import { bindService, search } from "./ldap-ops.ts";
import { type LdapOptions, type LdapSettings, resolveLdapSettings } from "./ldap-options.ts";

/** One line of `pcoip-cmsg diagnose`. `fix` is empty when `ok`. */
export interface DirectoryCheck {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
  readonly fix: string;
}

/**
 * For `diagnose`: per server, reachable and TLS trusted; then the service bind and the search base when
 * configured. Never throws; a configuration mistake is one failed check.
 */
export async function checkDirectory(options: LdapOptions): Promise<DirectoryCheck[]> {
  let settings: LdapSettings;
  try {
    settings = resolveLdapSettings(options);
  } catch (e) {
    return [
      {
        name: "ldap configuration",
        ok: false,
        detail: (e as Error).message,
        fix: "correct [ldap] in the config file",
      },
    ];
  }
  const checks: DirectoryCheck[] = [];
  const add = (name: string, ok: boolean, detail: string, fix = "") => checks.push({ name, ok, detail, fix });
  for (const server of settings.servers) {
    const opened = await openConnection(server, settings);
    let failure: ServerFailure | undefined = opened.ok ? undefined : opened.failure;
    let rootDse: string | undefined;
    if (opened.ok) {
      try {
        const r = await search(opened.conn, "", "base", "(objectClass=*)", settings, ["namingContexts"]);
        rootDse = "error" in r ? r.error : "answered";
      } catch (e) {
        failure = describeConnectionError(e, server, settings.timeoutMs);
      }
    }
    const tlsBroken = failure?.kind === "certificate" || failure?.kind === "tls";
    add(
      `ldap ${server.url} reachable`,
      !failure || tlsBroken,
      failure && !tlsBroken
        ? failure.cause
        : `connected (${server.transport}); root DSE ${rootDse ?? "not read"}`,
      failure && !tlsBroken ? failure.fix : "",
    );
    if (server.transport === "plain") {
      add(
        `ldap ${server.url} tls`,
        true,
        "not encrypted (allowInsecure = true): passwords cross the network in clear",
        "",
      );
    } else if (failure && !tlsBroken) {
      add(`ldap ${server.url} tls`, false, "not checked: server unreachable", failure.fix);
    } else {
      add(
        `ldap ${server.url} tls`,
        !failure,
        failure
          ? failure.cause
          : `${server.transport === "ldaps" ? "ldaps" : "StartTLS"}: certificate trusted`,
        failure?.fix ?? "",
      );
    }
    if (opened.ok && !failure) {
      await checkBindAndBase(opened.conn, settings, add);
    }
    if (opened.ok) await opened.conn.close();
  }
  return checks;
}

async function checkBindAndBase(
  conn: LdapConnection,
  settings: LdapSettings,
  add: (name: string, ok: boolean, detail: string, fix?: string) => void,
): Promise<void> {
  const url = conn.server.url;
  try {
    if (settings.service) {
      const refused = await bindService(conn, settings);
      if (refused) {
        add(`ldap ${url} service bind`, false, refused, "check [ldap].serviceBindDn and its password file");
        return;
      }
      add(`ldap ${url} service bind`, true, `bound as ${settings.service.dn}`);
    }
    for (const [key, base] of [
      ["searchBase", settings.searchBase],
      ["groupSearchBase", settings.groupSearch?.base],
    ] as const) {
      if (!base) continue;
      const r = await search(conn, base, "base", "(objectClass=*)", settings, ["objectClass"]);
      const ok = !("error" in r) && r.entries.length === 1;
      add(
        `ldap ${url} ${key}`,
        ok,
        ok ? `${base} exists` : `${base}: ${"error" in r ? r.error : "not visible"}`,
        ok
          ? ""
          : `check [ldap].${key} (and that the ${settings.service ? "service account" : "anonymous user"} may read it)`,
      );
    }
  } catch (e) {
    const f = describeConnectionError(e, conn.server, settings.timeoutMs);
    add(`ldap ${url} connection`, false, `lost while checking: ${f.cause}`, f.fix);
  }
}
