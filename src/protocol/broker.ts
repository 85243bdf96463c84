/**
 * The broker protocol, `pcoip-client` 2.1 (PROTOCOL.md §2), as typed values (types.ts) and back.
 *
 * Client → CM requests: `parseClientRequest`, and for the upstream relay `buildClientRequest`.
 * CM → client responses: `build*Resp`, `buildErrorResp`; from an upstream broker: `parseBrokerResponse`.
 *
 * Relaying (upstream broker mode). Every parsed message keeps `node`, its element as parsed, unknown children
 * and attributes included. Every builder takes the typed value and, when it carries a `node`, writes the node
 * with the typed fields laid over it:
 *   - typed fields win: change `target.ipAddress` and `target.port` of a parsed allocate-resource-resp and only
 *     those two values change on the wire;
 *   - elements the types do not model (vendor extensions, dialog prompts) pass through untouched;
 *   - an optional typed field that is undefined removes its element (`pcm: undefined` drops `pcm-info`);
 *   - with a node, an empty value ("", [], 0 for a port) never adds an element the node did not have, so a
 *     dialog `authenticate` does not grow empty `username`/`password` elements on its way to the broker.
 * Without a node (the built-in broker), every element of the PROTOCOL.md layout is written, empty or not.
 * So `buildX(parseX(doc))` gives back `doc` up to formatting, and a relay edits a message by spreading it:
 *   buildAllocateResourceResp({ ...resp, target: { ...resp.target, ipAddress: sgIp, port: 4172 } })
 */
import type {
  AllocateResource,
  AllocateResourceResp,
  Authenticate,
  AuthenticateResp,
  BrokerResponse,
  BrokerRoot,
  Bye,
  ByeResp,
  ClientInfo,
  ClientRequest,
  GetResourceList,
  GetResourceListResp,
  Hello,
  HelloResp,
  ParseResult,
  ProductInfo,
  Resource,
  Result,
  Target,
  XmlNode,
} from "./types.ts";
import {
  attr,
  buildXml,
  child,
  children,
  envelope,
  has,
  invalidMessage,
  nodeText,
  parsePort,
  parseXml,
  text,
  texts,
  token,
  unknownOperation,
  type XmlTree,
} from "./xml.ts";

/** The `version` we write on every broker-protocol root (PROTOCOL.md §2.1). */
export const BROKER_PROTOCOL_VERSION = "2.1";

/** product-name of the client's probe hello: answered, but creates no session (PROTOCOL.md §2.2). */
export const PROBE_PRODUCT_NAME = "QueryBrokerClient";

// ---- client requests --------------------------------------------------------------------------------------

/**
 * Parses a client request (PROTOCOL.md §2.1): root `pcoip-client` (or one of `opts.roots`) with a `version`
 * attribute and exactly one operation element. Unknown children are ignored (kept in `node`); a missing
 * optional field reads as "". Credentials and resource ids are taken verbatim, other values trimmed.
 * @example parseClientRequest('<pcoip-client version="2.1"><bye/></pcoip-client>')
 *   // → { ok: true, msg: { op: "bye", node: {} } }
 */
export function parseClientRequest(
  xml: string,
  opts: { roots?: readonly BrokerRoot[] } = {},
): ParseResult<ClientRequest> {
  const doc = parseXml(xml);
  if (!doc.ok) return doc;
  const env = envelope(doc.msg, opts.roots ?? ["pcoip-client"], true);
  if (!env.ok) return env;
  const { operation, node } = env.msg;
  switch (operation) {
    case "hello":
      return ok(decodeHello(node));
    case "authenticate":
      return ok(decodeAuthenticate(node));
    case "get-resource-list":
      return ok(decodeGetResourceList(node));
    case "allocate-resource":
      return ok(decodeAllocateResource(node));
    case "bye":
      return ok({ op: "bye", node } satisfies Bye);
    default:
      return unknownOperation(operation, doc.msg.root);
  }
}

/*
 * §2.2 <hello>
 *   <client-info> product-name product-version platform locale hostname serial-number device-name
 *                 pcoip-unique-id </client-info>
 *   <caps> <cap>…</cap>* </caps>
 *   <server-address> ip-address hostname </server-address>
 *   [<pcm-info> product-name product-version platform ip-address hostname </pcm-info>]   (CM → broker, §4.2)
 * </hello>
 */
function decodeHello(node: XmlNode): Hello {
  const ci = child(node, "client-info");
  const sa = child(node, "server-address");
  const clientInfo: ClientInfo = {
    productName: token(ci, "product-name"),
    productVersion: token(ci, "product-version"),
    platform: token(ci, "platform"),
    locale: token(ci, "locale"),
    hostname: token(ci, "hostname"),
    serialNumber: token(ci, "serial-number"),
    deviceName: token(ci, "device-name"),
    pcoipUniqueId: token(ci, "pcoip-unique-id"),
  };
  return {
    op: "hello",
    clientInfo,
    caps: trimmed(texts(child(node, "caps"), "cap")),
    serverAddress: { ipAddress: token(sa, "ip-address"), hostname: token(sa, "hostname") },
    isProbe: clientInfo.productName === PROBE_PRODUCT_NAME,
    node,
  };
}

/* §2.3 <authenticate method="password"> username password domain </authenticate>  (method "dialog": node only) */
function decodeAuthenticate(node: XmlNode): Authenticate {
  return {
    op: "authenticate",
    method: attr(node, "method") ?? "",
    username: text(node, "username"),
    password: text(node, "password"),
    domain: text(node, "domain"),
    node,
  };
}

/* §2.4 <get-resource-list> <protocols><protocol/>*</protocols> <resource-types><resource-type/>*</resource-types> */
function decodeGetResourceList(node: XmlNode): GetResourceList {
  return {
    op: "get-resource-list",
    protocols: trimmed(texts(child(node, "protocols"), "protocol")),
    resourceTypes: trimmed(texts(child(node, "resource-types"), "resource-type")),
    node,
  };
}

/* §2.5 <allocate-resource> resource-id protocol <client-info> ip-address mac-address </client-info> */
function decodeAllocateResource(node: XmlNode): AllocateResource {
  const ci = child(node, "client-info");
  return {
    op: "allocate-resource",
    resourceId: text(node, "resource-id"),
    protocol: token(node, "protocol"),
    clientIpAddress: token(ci, "ip-address"),
    clientMacAddress: token(ci, "mac-address"),
    node,
  };
}

/**
 * Writes a request for an upstream broker (SPEC §3 upstream mode) under `root` (`pcoip-client`, or
 * `pcoip-broker` as the vendor's CM is believed to send), with version 2.1. The request's `node` is written
 * with its typed fields laid over it (see the header), so unknown elements reach the broker. `extra.pcmInfo`
 * adds (or replaces) `hello/pcm-info`, the CM's identity (PROTOCOL.md §4.2); other operations ignore it.
 */
export function buildClientRequest(
  req: ClientRequest,
  root: BrokerRoot = "pcoip-client",
  extra: { pcmInfo?: ProductInfo } = {},
): string {
  return envelopeXml(root, req.op, requestTree(req, extra.pcmInfo));
}

function requestTree(req: ClientRequest, pcmInfo: ProductInfo | undefined): XmlTree {
  const n = req.node;
  switch (req.op) {
    case "hello": {
      const ci = child(n, "client-info");
      const c = req.clientInfo;
      const sa = child(n, "server-address");
      return overlay(true, n, {
        "client-info": overlay(true, ci, {
          "product-name": c.productName,
          "product-version": c.productVersion,
          platform: c.platform,
          locale: c.locale,
          hostname: c.hostname,
          "serial-number": c.serialNumber,
          "device-name": c.deviceName,
          "pcoip-unique-id": c.pcoipUniqueId,
        }),
        caps: overlay(true, child(n, "caps"), { cap: [...req.caps] }),
        "server-address": overlay(true, sa, {
          "ip-address": req.serverAddress.ipAddress,
          hostname: req.serverAddress.hostname,
        }),
        ...(pcmInfo ? { "pcm-info": productTree(false, undefined, pcmInfo) } : {}),
      });
    }
    case "authenticate":
      return overlay(true, n, {
        "@_method": req.method,
        username: req.username,
        password: req.password,
        domain: req.domain,
      });
    case "get-resource-list":
      return overlay(true, n, {
        protocols: overlay(true, child(n, "protocols"), { protocol: [...req.protocols] }),
        "resource-types": overlay(true, child(n, "resource-types"), {
          "resource-type": [...req.resourceTypes],
        }),
      });
    case "allocate-resource":
      return overlay(true, n, {
        "resource-id": req.resourceId,
        protocol: req.protocol,
        "client-info": overlay(true, child(n, "client-info"), {
          "ip-address": req.clientIpAddress,
          "mac-address": req.clientMacAddress,
        }),
      });
    case "bye":
      return overlay(true, n, {});
  }
}

// ---- responses ------------------------------------------------------------------------------------------

/**
 * Parses a broker's response (upstream mode), under root `pcoip-client` or `pcoip-broker` (or `opts.roots`);
 * `version` is not required. Tolerates what a real broker sends (PROTOCOL.md §10): single-quoted declaration,
 * a newline before the root, `<bye-resp />`, `N/A` where an IP is expected (addresses are not checked here).
 * A response needing a result without `result/result-id`, or a non-numeric port, is "invalid_message".
 */
export function parseBrokerResponse(
  xml: string,
  opts: { roots?: readonly BrokerRoot[] } = {},
): ParseResult<BrokerResponse> {
  const doc = parseXml(xml);
  if (!doc.ok) return doc;
  const env = envelope(doc.msg, opts.roots ?? ["pcoip-client", "pcoip-broker"], false);
  if (!env.ok) return env;
  const { operation, node } = env.msg;
  switch (operation) {
    case "hello-resp":
      return ok(decodeHelloResp(node));
    case "authenticate-resp":
      return decodeAuthenticateResp(node);
    case "get-resource-list-resp":
      return decodeGetResourceListResp(node);
    case "allocate-resource-resp":
      return decodeAllocateResourceResp(node);
    case "bye-resp":
      return ok({ op: "bye-resp", node } satisfies ByeResp);
    default:
      return unknownOperation(operation, doc.msg.root);
  }
}

/** Writes any broker response (dispatch on `op`). */
export function buildBrokerResponse(resp: BrokerResponse): string {
  switch (resp.op) {
    case "hello-resp":
      return buildHelloResp(resp);
    case "authenticate-resp":
      return buildAuthenticateResp(resp);
    case "get-resource-list-resp":
      return buildGetResourceListResp(resp);
    case "allocate-resource-resp":
      return buildAllocateResourceResp(resp);
    case "bye-resp":
      return buildByeResp(resp);
  }
}

/*
 * §2.2 <hello-resp>
 *   <brokers-info> <broker-info> product-name product-version platform locale ip-address hostname
 *                  </broker-info>* </brokers-info>
 *   <pcm-info> product-name product-version platform ip-address hostname </pcm-info>     (when a CM is in the path)
 *   <next-authentication>
 *     <authentication-methods> <method>AUTHENTICATE_VIA_PASSWORD</method>* </authentication-methods>
 *     <domains> <domain>…</domain>* </domains>
 *   </next-authentication>
 * </hello-resp>
 */
function decodeHelloResp(node: XmlNode): HelloResp {
  const na = child(node, "next-authentication");
  const pcm = child(node, "pcm-info");
  return {
    op: "hello-resp",
    brokers: children(child(node, "brokers-info"), "broker-info").map(decodeProductInfo),
    ...(pcm ? { pcm: decodeProductInfo(pcm) } : {}),
    authenticationMethods: trimmed(texts(child(na, "authentication-methods"), "method")),
    domains: trimmed(texts(child(na, "domains"), "domain")),
    node,
  };
}

/** Writes `hello-resp` (layout above, PROTOCOL.md §2.2). */
export function buildHelloResp(r: HelloResp): string {
  const n = r.node;
  const relay = n !== undefined;
  const bi = child(n, "brokers-info");
  const biItems = children(bi, "broker-info");
  const na = child(n, "next-authentication");
  return envelopeXml(
    "pcoip-client",
    "hello-resp",
    overlay(relay, n, {
      "brokers-info": overlay(relay, bi, {
        "broker-info": r.brokers.map((b, i) => productTree(relay, biItems[i], b)),
      }),
      "pcm-info": r.pcm ? productTree(relay, child(n, "pcm-info"), r.pcm) : undefined,
      "next-authentication": overlay(relay, na, {
        "authentication-methods": overlay(relay, child(na, "authentication-methods"), {
          method: [...r.authenticationMethods],
        }),
        domains: overlay(relay, child(na, "domains"), { domain: [...r.domains] }),
      }),
    }),
  );
}

/*
 * §2.3 <authenticate-resp method="password">        (no method attribute after a dialog step)
 *   <result> result-id result-str </result>
 *   [<next-authentication> <authentication-methods> <method/>* </authentication-methods> </next-authentication>]
 * </authenticate-resp>
 */
function decodeAuthenticateResp(node: XmlNode): ParseResult<AuthenticateResp> {
  const result = decodeResult(node, "authenticate-resp");
  if (!result.ok) return result;
  const method = attr(node, "method");
  const na = child(node, "next-authentication");
  return ok({
    op: "authenticate-resp",
    ...(method !== undefined ? { method } : {}),
    result: result.msg,
    ...(na
      ? { nextAuthenticationMethods: trimmed(texts(child(na, "authentication-methods"), "method")) }
      : {}),
    node,
  });
}

/** Writes `authenticate-resp` (layout above, PROTOCOL.md §2.3). */
export function buildAuthenticateResp(r: AuthenticateResp): string {
  const n = r.node;
  const relay = n !== undefined;
  const na = child(n, "next-authentication");
  return envelopeXml(
    "pcoip-client",
    "authenticate-resp",
    overlay(relay, n, {
      "@_method": r.method,
      result: resultTree(relay, child(n, "result"), r.result),
      "next-authentication": r.nextAuthenticationMethods
        ? overlay(relay, na, {
            "authentication-methods": overlay(relay, child(na, "authentication-methods"), {
              method: [...r.nextAuthenticationMethods],
            }),
          })
        : undefined,
    }),
  );
}

/*
 * §2.4 <get-resource-list-resp>
 *   <result> result-id result-str </result>
 *   <resource>                                            (zero or more, no wrapper)
 *     resource-name resource-id <resource-type session-type="VDI">DESKTOP</resource-type> resource-state
 *     <protocols> <protocol is-default="true">PCOIP</protocol>* </protocols>
 *   </resource>*
 * </get-resource-list-resp>
 */
function decodeGetResourceListResp(node: XmlNode): ParseResult<GetResourceListResp> {
  const result = decodeResult(node, "get-resource-list-resp");
  if (!result.ok) return result;
  return ok({
    op: "get-resource-list-resp",
    result: result.msg,
    resources: children(node, "resource").map(decodeResource),
    node,
  });
}

function decodeResource(r: XmlNode): Resource {
  return {
    resourceName: text(r, "resource-name"),
    resourceId: text(r, "resource-id"),
    resourceType: token(r, "resource-type"),
    sessionType: attr(child(r, "resource-type"), "session-type") ?? "",
    resourceState: token(r, "resource-state"),
    protocols: children(child(r, "protocols"), "protocol").map((p) => ({
      name: nodeText(p).trim(),
      isDefault: attr(p, "is-default")?.toLowerCase() === "true",
    })),
  };
}

/** Writes `get-resource-list-resp` (layout above, PROTOCOL.md §2.4). */
export function buildGetResourceListResp(r: GetResourceListResp): string {
  const n = r.node;
  const relay = n !== undefined;
  const items = children(n, "resource");
  return envelopeXml(
    "pcoip-client",
    "get-resource-list-resp",
    overlay(relay, n, {
      result: resultTree(relay, child(n, "result"), r.result),
      resource: r.resources.map((res, i) => resourceTree(relay, items[i], res)),
    }),
  );
}

function resourceTree(relay: boolean, base: XmlNode | undefined, r: Resource): XmlTree {
  const rt = child(base, "resource-type");
  const ps = child(base, "protocols");
  const pItems = children(ps, "protocol");
  return overlay(relay, base, {
    "resource-name": r.resourceName,
    "resource-id": r.resourceId,
    "resource-type": overlay(relay, rt, {
      "#text": r.resourceType,
      "@_session-type": r.sessionType === "" && !has(rt, "@_session-type") ? undefined : r.sessionType,
    }),
    "resource-state": r.resourceState,
    protocols: overlay(relay, ps, {
      protocol: r.protocols.map((p, i) =>
        overlay(relay, pItems[i], {
          "#text": p.name,
          // Only the default one is marked, as the real samples do; a relayed explicit "false" stays.
          "@_is-default": p.isDefault ? "true" : has(pItems[i], "@_is-default") ? "false" : undefined,
        }),
      ),
    }),
  });
}

/*
 * §2.5 <allocate-resource-resp>
 *   <result> result-id result-str </result>
 *   <target> ip-address hostname sni port session-id connect-tag </target>      (success only)
 *   resource-id protocol
 * </allocate-resource-resp>
 */
function decodeAllocateResourceResp(node: XmlNode): ParseResult<AllocateResourceResp> {
  const result = decodeResult(node, "allocate-resource-resp");
  if (!result.ok) return result;
  const t = child(node, "target");
  let target: Target | undefined;
  if (t) {
    const port = parsePort(token(t, "port"));
    if (port === undefined)
      return invalidMessage("allocate-resource-resp", "target/port is not a port number");
    target = {
      ipAddress: token(t, "ip-address"),
      hostname: token(t, "hostname"),
      sni: token(t, "sni"),
      port,
      sessionId: token(t, "session-id"),
      connectTag: text(t, "connect-tag"),
    };
  }
  return ok({
    op: "allocate-resource-resp",
    result: result.msg,
    ...(target ? { target } : {}),
    ...(has(node, "resource-id") ? { resourceId: text(node, "resource-id") } : {}),
    ...(has(node, "protocol") ? { protocol: token(node, "protocol") } : {}),
    node,
  });
}

/**
 * Whether a broker's target is enough for the client to connect (SPEC §3 upstream: a complete target is used
 * as is, otherwise the CM launches the session on the agent itself). `hostname` and `sni` may be empty.
 */
export function isCompleteTarget(t: Target | undefined): t is Target {
  return t !== undefined && t.ipAddress !== "" && t.port > 0 && t.sessionId !== "" && t.connectTag !== "";
}

/** Writes `allocate-resource-resp` (layout above, PROTOCOL.md §2.5). A failure carries no target. */
export function buildAllocateResourceResp(r: AllocateResourceResp): string {
  const n = r.node;
  const relay = n !== undefined;
  const t = r.target;
  return envelopeXml(
    "pcoip-client",
    "allocate-resource-resp",
    overlay(relay, n, {
      result: resultTree(relay, child(n, "result"), r.result),
      target: t
        ? overlay(relay, child(n, "target"), {
            "ip-address": t.ipAddress,
            hostname: t.hostname,
            sni: t.sni,
            port: t.port > 0 ? String(t.port) : "",
            "session-id": t.sessionId,
            "connect-tag": t.connectTag,
          })
        : undefined,
      "resource-id": r.resourceId,
      protocol: r.protocol,
    }),
  );
}

/* §2.6 <bye-resp/> */
/** Writes `bye-resp` (empty, PROTOCOL.md §2.6). */
export function buildByeResp(r: ByeResp = { op: "bye-resp" }): string {
  return envelopeXml("pcoip-client", "bye-resp", overlay(r.node !== undefined, r.node, {}));
}

/**
 * Writes SPEC §3's answer to a body that is not a parsable `pcoip-client` request or names an unknown
 * operation: `<pcoip-client version="2.1"><error-resp><result><result-id>…</result-id><result-str>…</result-str>
 * </result></error-resp></pcoip-client>`. Use `resultForProtocolError` (results.ts) for the result.
 */
export function buildErrorResp(result: Result): string {
  return envelopeXml("pcoip-client", "error-resp", { result: resultTree(false, undefined, result) });
}

// ---- shared pieces --------------------------------------------------------------------------------------

/* <result> result-id result-str </result> */
function decodeResult(node: XmlNode, operation: string): ParseResult<Result> {
  const r = child(node, "result");
  const resultId = token(r, "result-id");
  if (resultId === "") return invalidMessage(operation, "no result/result-id");
  return ok({ resultId, resultStr: text(r, "result-str") });
}

function resultTree(relay: boolean, base: XmlNode | undefined, r: Result): XmlTree {
  return overlay(relay, base, { "result-id": r.resultId, "result-str": r.resultStr });
}

/* broker-info / pcm-info: product-name product-version platform [locale] ip-address hostname */
function decodeProductInfo(n: XmlNode): ProductInfo {
  return {
    productName: token(n, "product-name"),
    productVersion: token(n, "product-version"),
    platform: token(n, "platform"),
    ...(has(n, "locale") ? { locale: token(n, "locale") } : {}),
    ipAddress: token(n, "ip-address"),
    hostname: token(n, "hostname"),
  };
}

function productTree(relay: boolean, base: XmlNode | undefined, p: ProductInfo): XmlTree {
  return overlay(relay, base, {
    "product-name": p.productName,
    "product-version": p.productVersion,
    platform: p.platform,
    locale: p.locale,
    "ip-address": p.ipAddress,
    hostname: p.hostname,
  });
}

/**
 * `base` (a parsed element, or nothing) with `fields` laid over it, in `fields` order for new keys and the
 * base's order for existing ones. undefined removes a key; when `relay`, an empty value ("", [], {}) does not
 * add a key the base lacks (see the module header).
 */
function overlay(
  relay: boolean,
  base: XmlNode | undefined,
  fields: Readonly<Record<string, unknown>>,
): XmlTree {
  const out: XmlTree = base ? { ...base } : {};
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined || (relay && isEmpty(value) && !has(base, key))) delete out[key];
    else out[key] = value;
  }
  return out;
}

function isEmpty(v: unknown): boolean {
  if (v === "") return true;
  if (Array.isArray(v)) return v.length === 0;
  return typeof v === "object" && v !== null && Object.keys(v).length === 0;
}

function envelopeXml(root: BrokerRoot, operation: string, tree: XmlTree): string {
  return buildXml(root, { "@_version": BROKER_PROTOCOL_VERSION, [operation]: tree });
}

function trimmed(values: readonly string[]): string[] {
  return values.map((v) => v.trim());
}

function ok<T>(msg: T): { ok: true; msg: T } {
  return { ok: true, msg };
}
