/**
 * One conversation with one directory server: TCP (or TLS for ldaps://), StartTLS for ldap:// unless the admin
 * allowed plain text, a timeout on the connect, the handshake and every operation, and a close that always
 * releases the socket. A failure to talk to the server (as opposed to an LDAP answer) is described as
 * `{ server, cause, fix }` so the caller can try the next server and the log can say what to do.
 */
import { isIP, type Socket, connect as tcpConnect } from "node:net";
import { type ConnectionOptions, connect as tlsConnect } from "node:tls";
import { Client } from "ldapts";
import type { LdapServer, LdapSettings } from "./ldap-options.ts";
import { resultCodeOf } from "./ldap-results.ts";

/** Why a server could not be used; `kind` lets diagnose separate "unreachable" from "TLS not trusted". */
export interface ServerFailure {
  readonly url: string;
  readonly kind: "refused" | "timeout" | "dns" | "certificate" | "tls" | "network" | "protocol";
  readonly cause: string;
  readonly fix: string;
}

export interface LdapConnection {
  readonly client: Client;
  readonly server: LdapServer;
  /** Unbind and close; never throws, never waits longer than the operation timeout. */
  close(): Promise<void>;
}

/** Opens a connection (StartTLS included) or says why not. The socket is connected lazily for ldaps/plain. */
export async function openConnection(
  server: LdapServer,
  settings: Pick<LdapSettings, "caCert" | "timeoutMs">,
): Promise<{ ok: true; conn: LdapConnection } | { ok: false; failure: ServerFailure }> {
  const sockets: Socket[] = [];
  const tlsOptions = tlsOptionsFor(server, settings.caCert);
  const client = new Client({
    url: server.url,
    timeout: settings.timeoutMs,
    connectTimeout: settings.timeoutMs,
    // ldapts makes any client with tlsOptions speak TLS from the first byte, so only ldaps:// gets them here;
    // StartTLS gets the same options when it upgrades.
    ...(server.transport === "ldaps" ? { tlsOptions } : {}),
    // Keep hold of every socket so close() can destroy it even when the server stops answering mid-way.
    createConnection: ((...args: Parameters<typeof tcpConnect>) =>
      track(sockets, tcpConnect(...args))) as typeof tcpConnect,
    createSecureConnection: ((...args: Parameters<typeof tlsConnect>) =>
      track(sockets, tlsConnect(...args))) as typeof tlsConnect,
  });
  const conn: LdapConnection = {
    client,
    server,
    async close() {
      await withTimeout(
        client.unbind().catch(() => {}),
        settings.timeoutMs,
      ).catch(() => {});
      for (const s of sockets) s.destroy();
    },
  };
  if (server.transport !== "starttls") return { ok: true, conn };
  try {
    await withTimeout(client.startTLS(tlsOptions), settings.timeoutMs);
    return { ok: true, conn };
  } catch (e) {
    await conn.close();
    const rc = resultCodeOf(e);
    if (rc) {
      return {
        ok: false,
        failure: {
          url: server.url,
          kind: "tls",
          cause: `StartTLS refused by the server (result ${rc.code}${rc.message ? `: ${rc.message}` : ""})`,
          fix: "configure a TLS certificate on the directory server, or use its ldaps:// URL",
        },
      };
    }
    return { ok: false, failure: describeConnectionError(e, server, settings.timeoutMs) };
  }
}

function track<T extends Socket>(list: Socket[], s: T): T {
  list.push(s);
  return s;
}

function tlsOptionsFor(server: LdapServer, caCert: string | undefined): ConnectionOptions {
  return {
    host: server.host,
    // SNI carries names only (RFC 6066); certificate checking still uses `host`, IPs included.
    ...(isIP(server.host) ? {} : { servername: server.host }),
    ...(caCert ? { ca: caCert } : {}),
    minVersion: "TLSv1.2",
    rejectUnauthorized: true,
  };
}

/** Rejects with a timeout error when `p` has not settled within `ms`. */
export function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(Object.assign(new Error("operation timed out"), { code: "ETIMEDOUT" })),
      ms,
    );
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

const CERT_CODES =
  /CERT|SIGNATURE|ISSUER|ALTNAME|SELF_SIGNED|UNABLE_TO_VERIFY|HOSTNAME|IP_ADDRESS|PUBKEY|CHAIN|UNTRUSTED/i;

/** Turns a socket/TLS error from a server into cause and fix for the log and for diagnose. */
export function describeConnectionError(err: unknown, server: LdapServer, timeoutMs: number): ServerFailure {
  const e = (typeof err === "object" && err !== null ? err : {}) as { code?: unknown; message?: unknown };
  const code = typeof e.code === "string" ? e.code : "";
  const message = typeof e.message === "string" ? e.message : String(err);
  const at = `${server.host}:${server.port}`;
  const f = (kind: ServerFailure["kind"], cause: string, fix: string): ServerFailure => ({
    url: server.url,
    kind,
    cause,
    fix,
  });
  if (code === "ECONNREFUSED" || /refused/i.test(message)) {
    return f(
      "refused",
      `connection refused by ${at}`,
      "check that the directory service runs and listens on that port, and the URL in [ldap].url",
    );
  }
  if (code === "ETIMEDOUT" || /timed? ?out/i.test(message)) {
    return f(
      "timeout",
      `no answer from ${at} within ${timeoutMs} ms`,
      "check the firewall between this host and the directory, and that the server is not overloaded",
    );
  }
  if (
    code === "ENOTFOUND" ||
    code === "EAI_AGAIN" ||
    code === "EAI_NONAME" ||
    /getaddrinfo|DNS/i.test(message)
  ) {
    return f(
      "dns",
      `cannot resolve ${server.host} (${code || message})`,
      "check the host name in [ldap].url and this host's DNS settings",
    );
  }
  if (CERT_CODES.test(code) || /certificate|self[- ]signed|altname|hostname\/ip/i.test(message)) {
    const mismatch = /ALTNAME|HOSTNAME|IP_ADDRESS|altname|does not match/i.test(`${code} ${message}`);
    return f(
      "certificate",
      `certificate of ${at} not accepted: ${message}${code && !message.includes(code) ? ` (${code})` : ""}`,
      mismatch
        ? "connect by a name the certificate lists (its subjectAltName), or reissue the certificate with this name"
        : "set tls.trustedCa to the CA bundle (PEM) that issued the directory's certificate",
    );
  }
  if (/ssl|tls|handshake|wrong version|alert/i.test(`${code} ${message}`)) {
    return f(
      "tls",
      `TLS with ${at} failed: ${message}`,
      server.transport === "ldaps"
        ? "check that the port speaks ldaps (usually 636); for ldap:// with StartTLS use port 389"
        : "check the directory's TLS configuration",
    );
  }
  if (/closed|reset|ECONNRESET|EPIPE/i.test(`${code} ${message}`)) {
    return f(
      "network",
      `connection to ${at} closed unexpectedly (${code || message})`,
      server.transport === "ldaps"
        ? "check that the port speaks ldaps (usually 636) and the server's logs"
        : "check that the port speaks plain LDAP (usually 389; use ldaps:// for 636) and the server's logs",
    );
  }
  return f(
    "network",
    `cannot talk to ${at}: ${code ? `${code} ` : ""}${message}`,
    "check the network path to the directory server",
  );
}
