/**
 * The typed messages of the PCoIP broker protocol (`pcoip-client` 2.1, PROTOCOL.md §2) and the agent protocol
 * (`pcoip-agent` 1.0, §5). Readonly plain data: parse() produces them, build() consumes them, tests compare them
 * with toEqual. Every parsed operation also keeps `node`, the parsed element itself (attributes under "@_"
 * keys, unknown children included), so a relay (upstream broker mode) can pass unknown elements through.
 */

/** A parsed XML element as fast-xml-parser gives it: child elements by name, attributes as "@_name", text "#text". */
export type XmlNode = { readonly [key: string]: unknown };

export interface ProtocolError {
  /** Machine-readable kind; the CM maps it to a result id. */
  readonly kind:
    | "too_large"
    | "not_xml"
    | "forbidden_markup"
    | "wrong_root"
    | "no_operation"
    | "unknown_operation"
    | "invalid_message";
  /** Human text naming what is wrong, safe to log (never contains the document's secrets). */
  readonly detail: string;
  /** The operation element's name when one was found (for `unknown_operation` / `invalid_message`). */
  readonly operation?: string;
}

export type ParseResult<T> =
  | { readonly ok: true; readonly msg: T }
  | { readonly ok: false; readonly error: ProtocolError };

/** Root element of the broker dialect: clients always send `pcoip-client`; a CM may talk `pcoip-broker` upstream. */
export type BrokerRoot = "pcoip-client" | "pcoip-broker";

// ---- client → CM (and CM → upstream broker) requests -------------------------------------------------------

export interface ClientInfo {
  readonly productName: string;
  readonly productVersion: string;
  readonly platform: string;
  readonly locale: string;
  readonly hostname: string;
  readonly serialNumber: string;
  readonly deviceName: string;
  readonly pcoipUniqueId: string;
}

/** `<hello>`: client-info, caps/cap*, server-address{ip-address,hostname}. product-name QueryBrokerClient = probe. */
export interface Hello {
  readonly op: "hello";
  readonly clientInfo: ClientInfo;
  readonly caps: readonly string[];
  readonly serverAddress: { readonly ipAddress: string; readonly hostname: string };
  readonly isProbe: boolean;
  readonly node: XmlNode;
}

/** `<authenticate method="password">` username, password, domain; other methods (dialog, …) keep `node` only. */
export interface Authenticate {
  readonly op: "authenticate";
  readonly method: string;
  readonly username: string;
  readonly password: string;
  readonly domain: string;
  readonly node: XmlNode;
}

/** `<get-resource-list>` protocols/protocol*, resource-types/resource-type*. */
export interface GetResourceList {
  readonly op: "get-resource-list";
  readonly protocols: readonly string[];
  readonly resourceTypes: readonly string[];
  readonly node: XmlNode;
}

/** `<allocate-resource>` resource-id (opaque, verbatim), protocol, client-info{ip-address, mac-address}. */
export interface AllocateResource {
  readonly op: "allocate-resource";
  readonly resourceId: string;
  readonly protocol: string;
  readonly clientIpAddress: string;
  readonly clientMacAddress: string;
  readonly node: XmlNode;
}

export interface Bye {
  readonly op: "bye";
  readonly node: XmlNode;
}

export type ClientRequest = Hello | Authenticate | GetResourceList | AllocateResource | Bye;
export type ClientOperation = ClientRequest["op"];

// ---- CM → client responses -----------------------------------------------------------------------------------

export interface Result {
  readonly resultId: string;
  readonly resultStr: string;
}

export interface ProductInfo {
  readonly productName: string;
  readonly productVersion: string;
  readonly platform: string;
  readonly locale?: string;
  readonly ipAddress: string;
  readonly hostname: string;
}

export interface HelloResp {
  readonly op: "hello-resp";
  readonly brokers: readonly ProductInfo[];
  readonly pcm?: ProductInfo;
  readonly authenticationMethods: readonly string[];
  readonly domains: readonly string[];
  readonly node?: XmlNode;
}

export interface AuthenticateResp {
  readonly op: "authenticate-resp";
  /** Echoed from the request (`password`); omitted for dialog steps, as real brokers do. */
  readonly method?: string;
  readonly result: Result;
  /** Present on AUTH_SUCCESSFUL_AND_INCOMPLETE: what comes next. */
  readonly nextAuthenticationMethods?: readonly string[];
  readonly node?: XmlNode;
}

export interface Resource {
  readonly resourceName: string;
  readonly resourceId: string;
  readonly resourceType: string;
  readonly sessionType: string;
  readonly resourceState: string;
  readonly protocols: readonly { readonly name: string; readonly isDefault: boolean }[];
}

export interface GetResourceListResp {
  readonly op: "get-resource-list-resp";
  readonly result: Result;
  readonly resources: readonly Resource[];
  readonly node?: XmlNode;
}

export interface Target {
  readonly ipAddress: string;
  readonly hostname: string;
  readonly sni: string;
  readonly port: number;
  readonly sessionId: string;
  readonly connectTag: string;
}

export interface AllocateResourceResp {
  readonly op: "allocate-resource-resp";
  readonly result: Result;
  /** Only on success. */
  readonly target?: Target;
  readonly resourceId?: string;
  readonly protocol?: string;
  readonly node?: XmlNode;
}

export interface ByeResp {
  readonly op: "bye-resp";
  readonly node?: XmlNode;
}

export type BrokerResponse =
  | HelloResp
  | AuthenticateResp
  | GetResourceListResp
  | AllocateResourceResp
  | ByeResp;

/** SPEC §3: `<pcoip-client version="2.1"><error-resp><result>…</result></error-resp></pcoip-client>`. */
export interface ErrorResp {
  readonly op: "error-resp";
  readonly result: Result;
}

// ---- CM → agent (pcoip-agent 1.0, PROTOCOL.md §5.2) ---------------------------------------------------------

export interface LaunchSession {
  readonly sessionType: string; // "UNSPECIFIED"
  readonly ipAddress: string;
  readonly hostname: string;
  readonly logon: {
    readonly method: string;
    readonly username: string;
    readonly password: string;
    readonly domain: string;
  };
  readonly clientMac: string;
  readonly clientIp: string;
  readonly clientName: string;
  readonly licensePath: string;
  readonly sessionLogId: string;
}

export interface SessionInfo {
  readonly ipAddress: string;
  readonly sni: string;
  readonly port: number;
  readonly sessionId: string;
  readonly sessionTag: string;
}

export interface LaunchSessionResp {
  /** Upper-cased on parse (agents vary in case): SUCCESSFUL, FAILED_USER_AUTH, FAILED_ANOTHER_SESSION_STARTED, … */
  readonly resultId: string;
  readonly failReason: string;
  readonly sessionInfo?: SessionInfo;
}
