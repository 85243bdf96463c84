/**
 * The upstream broker's result ids, turned into ids the client understands (PROTOCOL.md §2.5 "Upstream result
 * ids"). A broker may pass through what its agent said (`FAILED_USER_AUTH`, ILS's misspelt
 * `FAILED_ANOTHER_SESION_STARTED`) or use ids of its own; a client only knows each answer's own family
 * (`AUTH_*`, `LIST_*`, `ALLOC_*`) as listed in PROTOCOL.md. An id outside that vocabulary is mapped — the same
 * way the CM maps its own agent's answers (agent-client.ts) — and the broker's original id and text are logged.
 * The broker's text is kept with an id that passes; a mapped id gets the CM's text for it.
 */
import type { Logger } from "../../observability/log.ts";
import { RESULTS, type ResultId, result } from "../../protocol/results.ts";
import type {
  AllocateResourceResp,
  AuthenticateResp,
  GetResourceListResp,
  Result,
} from "../../protocol/types.ts";
import { AGENT_REFUSED_LOGON_TEXT } from "../agent-client.ts";

type Answer = "authenticate" | "get-resource-list" | "allocate-resource";

/** The ids each answer passes to the client unchanged (every one is in PROTOCOL.md's table). */
export const CLIENT_VOCABULARY: Readonly<Record<Answer, ReadonlySet<string>>> = {
  authenticate: new Set<ResultId>([
    "AUTH_SUCCESSFUL_AND_COMPLETE",
    "AUTH_SUCCESSFUL_AND_INCOMPLETE",
    "AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD",
    "AUTH_FAILED_ACCESS_DENIED",
    "AUTH_FAILED_USER_HAS_NO_RESOURCE",
    "AUTH_FAILED_DIALOG_INVALID_USER_ENTRY",
    "AUTH_FAILED_EXPIRED_PASSWORD",
    "AUTH_FAILED_BROKER_ERROR",
  ]),
  "get-resource-list": new Set<ResultId>([
    "LIST_SUCCESSFUL",
    "LIST_FAILED_NO_ENTITLEMENT",
    "LIST_FAILED_BROKER_ERROR",
  ]),
  "allocate-resource": new Set<ResultId>([
    "ALLOC_SUCCESSFUL",
    "ALLOC_FAILED_TO_ALLOCATE_BROKER",
    "ALLOC_FAILED_TO_ALLOCATE_BROKER_PORT_UNREACHABLE",
    "ALLOC_FAILED_TO_ALLOCATE_AGENT",
    "ALLOC_FAILED_NO_LICENSE",
    "ALLOC_PENDING_TRY_AGAIN",
    "ALLOC_FAILED_RESOURCE_NOT_AVAILABLE",
    "ALLOC_FAILED_RESOURCE_IN_USE",
    "ALLOC_FAILED_SERVER_BUSY",
  ]),
};

/** The client's result for an upstream id outside the vocabulary of `answer` (PROTOCOL.md §2.5 table). */
export function mapUpstreamResultId(answer: Answer, id: string): Result {
  switch (answer) {
    case "authenticate":
      // A bare AUTH_SUCCESSFUL completes the sign-in (the conversation treats it so); anything else is a refusal.
      return id === "AUTH_SUCCESSFUL"
        ? result("AUTH_SUCCESSFUL_AND_COMPLETE")
        : result("AUTH_FAILED_ACCESS_DENIED");
    case "get-resource-list":
      return result("LIST_FAILED_BROKER_ERROR");
    case "allocate-resource":
      // Agent codes a broker passes through, mapped as the CM maps its own agent's answers (agent-client.ts).
      if (id === "FAILED_USER_AUTH")
        return result("ALLOC_FAILED_TO_ALLOCATE_AGENT", AGENT_REFUSED_LOGON_TEXT);
      if (id === "FAILED_ANOTHER_SESSION_STARTED" || id === "FAILED_ANOTHER_SESION_STARTED") {
        return result("ALLOC_FAILED_RESOURCE_IN_USE");
      }
      if (id.includes("LICENSE")) return result("ALLOC_FAILED_NO_LICENSE");
      if (id.startsWith("FAILED_"))
        return result("ALLOC_FAILED_TO_ALLOCATE_AGENT", RESULTS.ALLOC_FAILED_TO_ALLOCATE_AGENT);
      return result("ALLOC_FAILED_TO_ALLOCATE_BROKER");
  }
}

/** `resp` with its result id in the client's vocabulary; a mapped id is logged with the broker's own. */
export function inClientVocabulary<T extends AuthenticateResp | GetResourceListResp | AllocateResourceResp>(
  resp: T,
  log: Logger,
  broker: string,
): T {
  const answer = resp.op.slice(0, -"-resp".length) as Answer;
  const id = resp.result.resultId;
  if (CLIENT_VOCABULARY[answer].has(id)) return resp;
  const mapped = mapUpstreamResultId(answer, id);
  log.info(
    {
      broker,
      upstreamResultId: id.slice(0, 80),
      upstreamResultStr: resp.result.resultStr.slice(0, 200),
      resultId: mapped.resultId,
    },
    `the broker answered ${answer} with result id ${id.slice(0, 80)}, which clients do not know; the client gets ${mapped.resultId} (PROTOCOL.md §2.5)`,
  );
  if (resp.op === "get-resource-list-resp") return { ...resp, result: mapped, resources: [] };
  if (resp.op === "allocate-resource-resp" && mapped.resultId !== "ALLOC_SUCCESSFUL") {
    const { target: _dropped, ...rest } = resp;
    return { ...rest, result: mapped } as T;
  }
  return { ...resp, result: mapped };
}
