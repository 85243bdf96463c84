/**
 * Every result id the CM sends, each with its human `result-str` (PROTOCOL.md §2.3–2.5; SPEC §3). Ids marked
 * [vendor] are seen in real logs or in software that real clients talked to; ids marked [ours] exist because no
 * public source names one for the case, and follow the vendor's `<OP>_<OUTCOME>_<REASON>` shape so a client
 * that only checks the `AUTH_SUCCESSFUL` / `ALLOC_SUCCESSFUL` prefixes behaves. Texts from real logs are kept
 * verbatim; the four sentences admins already know (below) live here and nowhere else.
 */
import type { ProtocolError, Result } from "./types.ts";

/** The four vendor sentences (SPEC §3), for `result(id, text)` where the failing party is what matters. */
export const VENDOR_TEXT = {
  brokerError: "Error occurred while communicating with broker",
  brokerTimeout: "Timeout occurred while communicating with broker",
  agentError: "Error occurred while communicating with agent",
  agentTimeout: "Timeout occurred while communicating with agent",
} as const;

const BAD_CREDENTIALS = "User authentication failed. Please re-enter username, password, and/or domain.";
const NO_WORKSTATIONS = "User has not been assigned any remote workstations";

export const RESULTS = {
  // authenticate-resp (§2.3)
  /** [vendor] Authenticated; the client goes on to get-resource-list. */
  AUTH_SUCCESSFUL_AND_COMPLETE: "User authentication successful",
  /** [vendor] This step passed; another authenticate step follows (next-authentication names it). */
  AUTH_SUCCESSFUL_AND_INCOMPLETE: "User authentication step successful; another step is required",
  /** [vendor] Text as in a real log. */
  AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD: BAD_CREDENTIALS,
  /** [vendor] Same text in a real log. Also our answer to a message out of order (PROTOCOL.md §3). */
  AUTH_FAILED_ACCESS_DENIED: BAD_CREDENTIALS,
  /** [vendor] */
  AUTH_FAILED_USER_HAS_NO_RESOURCE: NO_WORKSTATIONS,
  /** [vendor] A dialog (MFA) answer was rejected. */
  AUTH_FAILED_DIALOG_INVALID_USER_ENTRY: "The value entered was not accepted. Please try again.",
  /** [vendor] */
  AUTH_FAILED_EXPIRED_PASSWORD: "The password has expired. Please change it and try again.",
  /** [ours] The directory or upstream broker could not be asked (the log names DNS/refused/TLS/timeout). */
  AUTH_FAILED_BROKER_ERROR: VENDOR_TEXT.brokerError,

  // get-resource-list-resp (§2.4)
  /** [vendor] Text as in a real log. */
  LIST_SUCCESSFUL: "Successfully retrieved the list of resources",
  /** [vendor] Text as in a real log. */
  LIST_FAILED_NO_ENTITLEMENT: NO_WORKSTATIONS,
  /** [ours] The upstream broker failed or timed out while listing. */
  LIST_FAILED_BROKER_ERROR: VENDOR_TEXT.brokerError,

  // allocate-resource-resp (§2.5)
  /** [vendor] Text as in a real client log. */
  ALLOC_SUCCESSFUL: "Successfully allocated remote workstation",
  /** [vendor] Generic broker-side failure. */
  ALLOC_FAILED_TO_ALLOCATE_BROKER: VENDOR_TEXT.brokerError,
  /** [vendor] The agent's port 60443 could not be reached. Text as in a real log. */
  ALLOC_FAILED_TO_ALLOCATE_BROKER_PORT_UNREACHABLE: "Broker failed to reach resource on port 60443.",
  /** [vendor] The agent refused or failed launch-session. */
  ALLOC_FAILED_TO_ALLOCATE_AGENT: VENDOR_TEXT.agentError,
  /** [vendor] The agent had no PCoIP session license. */
  ALLOC_FAILED_NO_LICENSE: "The remote workstation could not obtain a PCoIP session license",
  /** [vendor] Not ready yet (e.g. powering on); the client may retry. */
  ALLOC_PENDING_TRY_AGAIN: "The remote workstation is not ready yet. Please try again shortly.",
  /** [ours] The resource id is unknown or not entitled to this user (both answered alike: no probing). */
  ALLOC_FAILED_RESOURCE_NOT_AVAILABLE: "The requested remote workstation is not available to this user",
  /** [ours] enableCollaboration is off and another user holds a session on this desktop. */
  ALLOC_FAILED_RESOURCE_IN_USE: "The remote workstation is in use by another user",
  /** [ours] cm.maxConcurrentEstablishments reached: a clear busy answer instead of a pile-up. */
  ALLOC_FAILED_SERVER_BUSY: "The server is busy. Please try again shortly.",

  // error-resp (SPEC §3)
  /** [ours] The body is not a parsable pcoip-client document (bad XML, wrong root, no or several operations). */
  PROTOCOL_ERROR_MALFORMED_REQUEST: "The request is not a valid pcoip-client message",
  /** [ours] The body is larger than the CM accepts. */
  PROTOCOL_ERROR_REQUEST_TOO_LARGE: "The request is too large",
  /** [ours] Well-formed, but names an operation this CM does not know. */
  PROTOCOL_ERROR_UNKNOWN_OPERATION: "The request names an operation this server does not support",
} as const;

export type ResultId = keyof typeof RESULTS;

/** A result block for `id`, with its standard text or `text` (e.g. one of VENDOR_TEXT) instead. */
export function result(id: ResultId, text?: string): Result {
  return { resultId: id, resultStr: text ?? RESULTS[id] };
}

export function isResultId(s: string): s is ResultId {
  return Object.hasOwn(RESULTS, s);
}

/** The error-resp result for a request that could not be parsed (SPEC §3). */
export function resultForProtocolError(error: ProtocolError): Result {
  switch (error.kind) {
    case "too_large":
      return result("PROTOCOL_ERROR_REQUEST_TOO_LARGE");
    case "unknown_operation":
      return result("PROTOCOL_ERROR_UNKNOWN_OPERATION");
    default:
      return result("PROTOCOL_ERROR_MALFORMED_REQUEST");
  }
}
