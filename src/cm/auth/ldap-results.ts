/**
 * What a directory's answer to a bind means for the user: wrong password, expired, locked, or a server-side
 * problem. Two dialects carry the detail beyond result code 49: Active Directory puts a sub-code in the
 * diagnostic message ("… AcceptSecurityContext error, data 532, v4563"), OpenLDAP's ppolicy overlay answers
 * with the password-policy response control (draft-behera-ldap-password-policy), which it only sends when the
 * bind asked for it — so every bind carries {@link PasswordPolicyControl}.
 */
import { type BerReader, Control } from "ldapts";
import type { AuthFailureReason } from "./authenticator.ts";

/** OID of the password policy request/response control. */
export const PPOLICY_OID = "1.3.6.1.4.1.42.2.27.8.5.1";

/** The `error` values of the password-policy response control that decide a login. */
export const PPOLICY_ERROR = { passwordExpired: 0, accountLocked: 1, changeAfterReset: 2 } as const;

export interface PasswordPolicyResponse {
  /** Seconds until the password expires (a warning on a successful bind). */
  readonly timeBeforeExpiration?: number;
  /** Logins left after expiry (a warning on a successful bind). */
  readonly graceAuthNsRemaining?: number;
  /** 0 passwordExpired, 1 accountLocked, 2 changeAfterReset, 3… password-change errors. */
  readonly error?: number;
}

/**
 * The request control (no value) whose instance ldapts fills from the response: ldapts hands a response
 * control of an unknown type to the request control with the same OID, which then parses it here.
 */
export class PasswordPolicyControl extends Control {
  response: PasswordPolicyResponse | undefined;

  constructor() {
    super(PPOLICY_OID, { critical: false });
  }

  protected override parseControl(reader: BerReader): void {
    this.response = parsePasswordPolicyValue(reader.buffer);
  }
}

/**
 * Decodes the control value:
 * ```
 * SEQUENCE {                                   30 len
 *   warning [0] CHOICE {                        a0 len
 *     timeBeforeExpiration [0] INTEGER,           80 len int
 *     graceAuthNsRemaining [1] INTEGER } OPT,     81 len int
 *   error [1] ENUMERATED OPTIONAL }             81 len enum
 * ```
 * Malformed input yields whatever was read before the fault (never throws: it is the server's bytes).
 */
export function parsePasswordPolicyValue(value: Uint8Array): PasswordPolicyResponse {
  const out: { timeBeforeExpiration?: number; graceAuthNsRemaining?: number; error?: number } = {};
  const seq = readTlv(value, 0);
  if (seq?.tag !== 0x30) return out;
  let at = seq.start;
  while (at < seq.end) {
    const el = readTlv(value, at);
    if (!el || el.end > seq.end) break;
    if (el.tag === 0xa0) {
      const inner = readTlv(value, el.start);
      if (inner && inner.end <= el.end) {
        const n = readUint(value, inner.start, inner.end);
        if (inner.tag === 0x80) out.timeBeforeExpiration = n;
        if (inner.tag === 0x81) out.graceAuthNsRemaining = n;
      }
    } else if (el.tag === 0x81) {
      out.error = readUint(value, el.start, el.end);
    }
    at = el.end;
  }
  return out;
}

function readTlv(b: Uint8Array, at: number): { tag: number; start: number; end: number } | undefined {
  if (at + 2 > b.length) return undefined;
  const tag = b[at]!;
  let len = b[at + 1]!;
  let start = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 3 || start + n > b.length) return undefined;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + b[start + i]!;
    start += n;
  }
  const end = start + len;
  return end > b.length ? undefined : { tag, start, end };
}

function readUint(b: Uint8Array, start: number, end: number): number {
  let n = 0;
  for (let i = start; i < end && i < start + 6; i++) n = n * 256 + b[i]!;
  return n;
}

/** Active Directory's sub-codes of result 49, as found after "data " in the diagnostic message. */
const AD_SUBCODES: Readonly<Record<string, { reason: AuthFailureReason; what: string }>> = {
  "525": { reason: "bad_credentials", what: "user not found" },
  "52e": { reason: "bad_credentials", what: "invalid credentials" },
  "530": { reason: "access_denied", what: "not permitted to log on at this time" },
  "531": { reason: "access_denied", what: "not permitted to log on at this workstation" },
  "532": { reason: "expired_password", what: "password expired" },
  "533": { reason: "access_denied", what: "account disabled" },
  "568": { reason: "access_denied", what: "too many security IDs (token too large)" },
  "701": { reason: "access_denied", what: "account expired" },
  "773": { reason: "expired_password", what: "user must reset password" },
  "775": { reason: "access_denied", what: "account locked out" },
};

/** How a bind that the server answered with a result code ends. `retry` = try the next server. */
export type BindVerdict =
  | { readonly kind: "final"; readonly reason: AuthFailureReason; readonly detail: string }
  | { readonly kind: "retry"; readonly cause: string; readonly fix: string };

/** An ldapts result-code error: a numeric `code` and the server's diagnostic in `message`. */
export function resultCodeOf(err: unknown): { code: number; message: string } | undefined {
  if (typeof err !== "object" || err === null) return undefined;
  const { code, message } = err as { code?: unknown; message?: unknown };
  if (typeof code !== "number") return undefined;
  // ldapts appends " Code: 0x31" to the diagnostic; keep only what the server said.
  const text = typeof message === "string" ? message.replace(/\s*Code: 0x[0-9a-f]+$/i, "") : "";
  return { code, message: text };
}

/**
 * Classifies a refused bind. `who` names the account and server for the log ("uid=alice,… at ldap://…").
 * The password policy control (when the server sent one) wins over the result code; AD sub-codes next.
 */
export function classifyBindFailure(
  code: number,
  message: string,
  policy: PasswordPolicyResponse | undefined,
  who: string,
): BindVerdict {
  const said = message ? `: ${message}` : "";
  const final = (reason: AuthFailureReason, what: string): BindVerdict => ({
    kind: "final",
    reason,
    detail: `ldap bind as ${who}: ${what} (result ${code}${said})`,
  });
  if (policy?.error === PPOLICY_ERROR.passwordExpired) return final("expired_password", "password expired");
  if (policy?.error === PPOLICY_ERROR.accountLocked) return final("access_denied", "account locked");
  if (policy?.error === PPOLICY_ERROR.changeAfterReset)
    return final("expired_password", "password must be changed");
  const sub = /\bdata ([0-9a-f]{3,8})\b/i.exec(message)?.[1]?.toLowerCase();
  const ad = sub ? AD_SUBCODES[sub] : undefined;
  if (ad) return final(ad.reason, ad.what);
  switch (code) {
    case 49: // invalidCredentials
    case 32: // noSuchObject (some servers, for an unknown bind DN)
    case 48: // inappropriateAuthentication
      return final("bad_credentials", "invalid credentials");
    case 34: // invalidDNSyntax: our values are escaped, so the template itself is at fault
      return final("bad_credentials", "the server rejected the bind name as invalid (check [ldap].bindDn)");
    case 50: // insufficientAccessRights
    case 53: // unwillingToPerform (e.g. account disabled on several servers)
      return final("access_denied", "the server refused this account");
    case 8: // strongAuthRequired
    case 13: // confidentialityRequired
      return final(
        "unavailable",
        "the server requires a protected connection (use ldaps:// or StartTLS, not allowInsecure)",
      );
    case 51: // busy
    case 52: // unavailable
    case 80: // other (e.g. a backend down)
      return {
        kind: "retry",
        cause: `server answered result ${code}${said}`,
        fix: "check the directory server's health and logs",
      };
    default:
      return final("unavailable", "unexpected answer from the directory");
  }
}
