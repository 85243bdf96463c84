/**
 * What the built-in broker asks of a password check. Implementations: local accounts (local-users.ts, argon2id
 * hashes) and a directory (ldap.ts). Expected failures are outcomes, never throws: the CM maps each reason to a
 * result id (bad_credentials → AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD, expired_password →
 * AUTH_FAILED_EXPIRED_PASSWORD, access_denied → AUTH_FAILED_ACCESS_DENIED, unavailable → a broker-communication
 * failure) and logs `detail` (which must never contain the password).
 */
import type { Logger } from "../../observability/log.ts";

export interface Credentials {
  readonly username: string;
  readonly password: string;
  /** The domain the user picked in the client (may be empty). */
  readonly domain: string;
}

export type AuthFailureReason =
  | "bad_credentials"
  | "expired_password"
  | "access_denied"
  | "unavailable"
  | "unknown_user";

export type AuthOutcome =
  | {
      readonly ok: true;
      /** The user name as the directory spells it (used for entitlements and audit). */
      readonly user: string;
      /** Group names (CN or full DN as configured) for `[[desktops]].groups` entitlements. */
      readonly groups: readonly string[];
      /** The domain to pass to the agent's Windows logon. */
      readonly domain: string;
    }
  | {
      readonly ok: false;
      readonly reason: AuthFailureReason;
      /** For the log: what failed, the cause and the fix; never the password. */
      readonly detail: string;
    };

export interface Authenticator {
  /** "local" or "ldap": shown in logs and diagnose. */
  readonly name: string;
  authenticate(credentials: Credentials, log: Logger): Promise<AuthOutcome>;
  close?(): Promise<void>;
}
