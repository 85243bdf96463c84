/**
 * Why a call to the upstream broker failed, as a value: the kind (for tests and metrics), whether it was a
 * timeout (the client then reads "Timeout occurred while communicating with broker" instead of "Error …"), the
 * cause in words an administrator can act on, and the fix. The log line and the client's answer are both made
 * from one of these, so they always agree.
 */
import type { ProxyFailureKind } from "../../net/https-proxy.ts";
import { result, VENDOR_TEXT } from "../../protocol/results.ts";
import type { Result } from "../../protocol/types.ts";

export type BrokerFailureKind =
  /** The broker's host name does not resolve. */
  | "dns"
  /** Nothing listens on the broker's port (ECONNREFUSED), or the network says unreachable. */
  | "refused"
  /** No answer in time (connect, TLS or the HTTP answer). */
  | "timeout"
  /** The connection closed before (or while) the broker answered. */
  | "closed"
  /** TLS failed before any certificate could be judged (wrong protocol, handshake reset). */
  | "tls"
  /** The broker's certificate broke a rule (untrusted issuer, self-signed, name, expiry, weak key). */
  | "certificate"
  /** The certificate came from the outbound proxy's CA: the proxy inspects TLS. */
  | "tls_inspection"
  /** The broker answered with an HTTP status other than 200. */
  | "http_status"
  /** The body is not a parsable XML document. */
  | "bad_xml"
  /** The body is XML but not a `pcoip-client` (or `pcoip-broker`) answer. */
  | "wrong_root"
  /** A well-formed answer to a different question (e.g. `bye-resp` to `hello`). */
  | "unexpected_answer"
  /** The broker connection closed after allocate-resource was sent; not repeated (may have started a session). */
  | "not_replayed"
  /** The broker forgot the conversation and it cannot be rebuilt without the user (e.g. after a dialog step). */
  | "conversation_lost"
  | ProxyFailureKind;

export interface BrokerFailure {
  readonly kind: BrokerFailureKind;
  readonly timeout: boolean;
  /** What the CM was doing, e.g. "relaying authenticate to the broker https://broker.corp.example". */
  readonly what: string;
  readonly cause: string;
  readonly fix: string;
  /** The broker's (or proxy's) HTTP status, when there was one. */
  readonly status?: number;
  /**
   * For an HTTP error answer: what it says about the broker's side of the conversation. "reset": the broker
   * started over without acting on the request (its "Unexpected message" protocol-order error, or the answer
   * dropped or replaced our session cookie); "kept": only this request failed (an exception in the broker), its
   * conversation is where it was. Other failures leave the broker's side unknown.
   */
  readonly brokerSession?: "reset" | "kept";
  /** Milliseconds from sending the request to the broker's (error) answer, when it answered. */
  readonly elapsedMs?: number;
}

/** The vendor sentence for a failure: "Timeout occurred …" for timeouts, "Error occurred …" otherwise. */
export function brokerFailureText(f: Pick<BrokerFailure, "timeout">): string {
  return f.timeout ? VENDOR_TEXT.brokerTimeout : VENDOR_TEXT.brokerError;
}

/** The failure result the client gets for `op` (SPEC §3: the matching `*-resp` with the vendor sentence). */
export function brokerFailureResult(
  op: "authenticate" | "get-resource-list" | "allocate-resource",
  f: BrokerFailure,
): Result {
  const text = brokerFailureText(f);
  switch (op) {
    case "authenticate":
      return result("AUTH_FAILED_BROKER_ERROR", text);
    case "get-resource-list":
      return result("LIST_FAILED_BROKER_ERROR", text);
    case "allocate-resource":
      return result("ALLOC_FAILED_TO_ALLOCATE_BROKER", text);
  }
}

/** One line for logs and errors: "relaying hello to the broker …: the broker refused … — fix: …". */
export function describeBrokerFailure(f: BrokerFailure): string {
  return `${f.what}: ${f.cause}; fix: ${f.fix}`;
}
