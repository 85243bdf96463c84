/**
 * The one place where XML text becomes a tree and back (fast-xml-parser 4.5.7), with the limits that keep a
 * hostile client from costing more than a small, bounded amount of work (PROTOCOL.md §1, §2.1; SPEC §3).
 *
 * Parsing is four steps, each refusing with a typed error, never a throw:
 *   1. size: more than MAX_DOCUMENT_BYTES of UTF-8 → "too_large";
 *   2. a scan of the markup (one pass over the `<` positions): any `<!DOCTYPE`, `<!ENTITY` or other `<!…`
 *      declaration, and any processing instruction but the leading XML declaration → "forbidden_markup" (no
 *      XXE, no billion laughs: entity declarations never reach a parser); more than MAX_ELEMENTS start tags →
 *      "too_large"; CDATA sections are rewritten as escaped text so every value goes through one decoder;
 *   3. XMLValidator for well-formedness (mismatched, unclosed or stray tags, text before the root, bad
 *      attributes, bare `&`) → "not_xml";
 *   4. XMLParser, then checks the validator misses: exactly one root and nothing but comments after it (it
 *      accepts `<a>…</a><b/>` and `<a/>junk`), nesting at most MAX_DEPTH (the parser's own guard is off by one).
 *
 * Values stay strings exactly as sent (parseTagValue/parseAttributeValue off: a password "0012" is not 12).
 * Leaf text is NOT trimmed (trimValues off): a password may end in a space. Whitespace-only text between
 * elements is dropped. The parser's entity handling is off; the five predefined entities and character
 * references are decoded here, once, and an undefined entity is "not_xml".
 *
 * Cost, measured with bench/xml-parse.ts (Bun 1.4.5, 2 shared cores, best of 9 rounds; figures vary ±30 %
 * with the neighbours' load). Per 1 KiB document:
 *                                         get-resource-list-resp   hello request
 *   fast-xml-parser, default options              ~50 µs              ~50 µs     (the issue quotes ~80 µs)
 *   parseXml, validator off                       ~65 µs              ~50 µs
 *   parseXml, validator on (what we run)         ~115 µs              ~75 µs
 *   buildGetResourceListResp                      ~25 µs
 * The validator costs 25–50 µs per KiB and stays: without it `<a><b></a>`, an unclosed tag and text outside the
 * root are silently accepted, and a relay would re-emit something other than what it was sent. Next to a TLS
 * handshake per client conversation, 0.1 ms per message is noise.
 */
import { XMLBuilder, XMLParser, XMLValidator, type XmlBuilderOptions } from "fast-xml-parser";
import type { ParseResult, ProtocolError, XmlNode } from "./types.ts";
import { fastBuildXml } from "./xml-build-fast.ts";
import { fastParseXml } from "./xml-fast.ts";

/** Largest document accepted, in UTF-8 bytes (SPEC §3: 64 KiB request body). */
export const MAX_DOCUMENT_BYTES = 65536;
/** Deepest element nesting accepted, the root counting as 1. The protocol needs 5. */
export const MAX_DEPTH = 32;
/** Most start tags accepted in one document. A 100-desktop resource list has about 700. */
export const MAX_ELEMENTS = 8192;

/**
 * Elements that may repeat, as "parent.child", so they always parse as arrays even when one is present
 * (PROTOCOL.md §2.2–2.4). Qualified by parent because `protocol` and `resource-type` are also single values
 * elsewhere (allocate-resource/protocol, resource/resource-type).
 */
const REPEATED = [
  "caps.cap",
  "domains.domain",
  "authentication-methods.method",
  "brokers-info.broker-info",
  "get-resource-list-resp.resource",
  "protocols.protocol",
  "resource-types.resource-type",
] as const;
const REPEATED_NAMES: ReadonlySet<string> = new Set(REPEATED.map((p) => p.slice(p.indexOf(".") + 1)));
const REPEATED_PAIRS: ReadonlySet<string> = new Set(REPEATED);
/** Whether `child` under `parent` always parses as an array (the fast path's view of REPEATED). */
export const isRepeated = (parent: string, child: string): boolean =>
  REPEATED_NAMES.has(child) && REPEATED_PAIRS.has(`${parent}.${child}`);

/** A parsed document: the root element's name and its content (attributes as "@_name", children by name). */
export interface XmlDocument {
  readonly root: string;
  readonly node: XmlNode;
}

/** A node under construction for the builder: same shape as XmlNode, values strings, nodes or arrays. */
export type XmlTree = { [key: string]: unknown };

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: "@_",
  textNodeName: "#text",
  allowBooleanAttributes: false,
  processEntities: false,
  htmlEntities: false,
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: false,
  ignoreDeclaration: true,
  ignorePiTags: true,
  removeNSPrefix: false,
  // A backstop only: the depth is checked exactly after parsing.
  maxNestedTags: MAX_DEPTH + 1,
  isArray: (name: string, jPath: string, _leaf: boolean, isAttribute: boolean) =>
    !isAttribute && REPEATED_NAMES.has(name) && REPEATED.some((p) => jPath === p || jPath.endsWith(`.${p}`)),
  tagValueProcessor: (_name: string, value: string, _jPath: string, _attrs: boolean, isLeaf: boolean) =>
    !isLeaf && isBlank(value) ? "" : decodeReferences(value),
  attributeValueProcessor: (_name: string, value: string) => decodeReferences(value),
});

const builder = new XMLBuilder({
  ignoreAttributes: false,
  attributeNamePrefix: "@_",
  textNodeName: "#text",
  format: false,
  suppressEmptyNode: true,
  // Off, or `is-default="true"` would be written as a bare `is-default` (not XML).
  suppressBooleanAttributes: false,
  processEntities: true,
  entities: [
    { regex: /&/g, val: "&amp;" }, // first, or it would escape the other replacements
    { regex: />/g, val: "&gt;" },
    { regex: /</g, val: "&lt;" },
    { regex: /'/g, val: "&apos;" },
    { regex: /"/g, val: "&quot;" },
    { regex: /\r/g, val: "&#13;" }, // a raw CR would be normalised to LF by the reader
  ],
  // `entities` is a builder option the library's .d.ts does not declare.
} as XmlBuilderOptions);

export const XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>';

/**
 * Parses one document under the limits above. Small plain documents (every one of a login) are read by the
 * fast path (xml-fast.ts), which builds the same tree or hands the document to the full path below.
 * `validate: false` exists for bench/xml-parse.ts only; `fast: false` (the fuzz test) forces the full path.
 * @example parseXml('<pcoip-client version="2.1"><bye/></pcoip-client>')
 *   // → { ok: true, msg: { root: "pcoip-client", node: { "@_version": "2.1", bye: "" } } }
 */
export function parseXml(
  xml: string,
  opts: { validate?: boolean; fast?: boolean } = {},
): ParseResult<XmlDocument> {
  if (opts.fast !== false && opts.validate !== false) {
    const fast = fastParseXml(xml, isRepeated);
    if (fast) return { ok: true, msg: fast };
  }
  if (xml.length > MAX_DOCUMENT_BYTES || Buffer.byteLength(xml, "utf8") > MAX_DOCUMENT_BYTES) {
    return fail("too_large", `document is larger than ${MAX_DOCUMENT_BYTES} bytes`);
  }
  const scanned = scanMarkup(xml);
  if (!scanned.ok) return scanned;
  const text = scanned.msg;
  if (opts.validate !== false) {
    const valid = XMLValidator.validate(text, { allowBooleanAttributes: false });
    if (valid !== true) return fail("not_xml", validatorDetail(valid.err));
  }
  let tree: unknown;
  try {
    tree = parser.parse(text);
  } catch (e) {
    if (e instanceof Error && e.message.startsWith("Maximum nested tags")) {
      return fail("too_large", `elements nested deeper than ${MAX_DEPTH} levels`);
    }
    // The library's messages may quote names from the document; ours (BadReference) never do.
    return fail("not_xml", e instanceof BadReference ? e.message : "not well-formed (refused by the parser)");
  }
  const roots = isObject(tree) ? Object.keys(tree) : [];
  if (roots.length === 0) return fail("not_xml", "no root element");
  if (roots.length > 1)
    return fail("not_xml", `more than one root element (${roots.slice(0, 3).join(", ")})`);
  const root = roots[0]!;
  const content = (tree as XmlTree)[root];
  if (Array.isArray(content)) return fail("not_xml", `more than one root element (${root})`);
  const node = asNode(content);
  if (elementNames(node).length === 0 && !has(node, "#text") && !onlyMiscAfterEmptyRoot(text)) {
    return fail("not_xml", "text after the root element");
  }
  if (depthExceeds(node, MAX_DEPTH - 1)) {
    return fail("too_large", `elements nested deeper than ${MAX_DEPTH} levels`);
  }
  return { ok: true, msg: { root, node } };
}

/**
 * Writes a document: XML declaration, then `<root …>` with the tree inside. Every text and attribute value is
 * escaped (`& < > " '` and CR); keys that are not XML names (a parsed `__proto__` becomes "#__proto__") are
 * dropped rather than written as broken markup. Written by xml-build-fast.ts in one walk (the same text as
 * fast-xml-parser's builder, fuzzed against it); `fast: false` forces the library's builder (tests).
 * @example buildXml("pcoip-client", { "@_version": "2.1", "bye-resp": "" })
 *   // → '<?xml version="1.0" encoding="UTF-8"?>\n<pcoip-client version="2.1"><bye-resp/></pcoip-client>'
 */
export function buildXml(root: string, tree: XmlNode, opts: { fast?: boolean } = {}): string {
  const fast = opts.fast !== false ? fastBuildXml(root, tree) : undefined;
  return `${XML_DECLARATION}\n${fast ?? (builder.build({ [root]: sanitize(tree) }) as string)}`;
}

// ---- reading a parsed node ------------------------------------------------------------------------------

/** The element `name` under `node` as a node (first one if repeated); undefined when absent. */
export function child(node: XmlNode | undefined, name: string): XmlNode | undefined {
  const v = own(node, name);
  if (v === undefined) return undefined;
  return asNode(Array.isArray(v) ? v[0] : v);
}

/** Every `name` element under `node`, as nodes, in document order. */
export function children(node: XmlNode | undefined, name: string): XmlNode[] {
  const v = own(node, name);
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).map(asNode);
}

/** Text of the element `name` under `node` exactly as sent (not trimmed); "" when absent or not text. */
export function text(node: XmlNode | undefined, name: string): string {
  const v = own(node, name);
  return textOf(Array.isArray(v) ? v[0] : v);
}

/** Texts of every `name` element under `node`. */
export function texts(node: XmlNode | undefined, name: string): string[] {
  const v = own(node, name);
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).map(textOf);
}

/** Trimmed text, for enumerations and numbers where surrounding whitespace is formatting, never meaning. */
export function token(node: XmlNode | undefined, name: string): string {
  return text(node, name).trim();
}

/** Attribute value (trimmed), or undefined when the attribute is absent. */
export function attr(node: XmlNode | undefined, name: string): string | undefined {
  const v = own(node, `@_${name}`);
  return typeof v === "string" ? v.trim() : undefined;
}

/** Whether `node` has a child element or attribute called `name` (own keys only). */
export function has(node: XmlNode | undefined, name: string): boolean {
  return own(node, name) !== undefined;
}

/** Child element names of `node` (no attributes, no text), in document order. */
export function elementNames(node: XmlNode): string[] {
  return Object.keys(node).filter((k) => !k.startsWith("@_") && k !== "#text");
}

/** A parsed value as a node: `<x/>` parses as "" and `<x>t</x>` as "t"; both become objects here. */
export function asNode(v: unknown): XmlNode {
  if (isObject(v)) return v;
  if (typeof v === "string" && !isBlank(v)) return { "#text": v };
  return {};
}

/** Own text of a node (`<x a="1">t</x>` → "t"), verbatim; "" when it has none. */
export function nodeText(node: XmlNode): string {
  return textOf(node);
}

/** A `port` value: "" → 0 (absent, the caller decides), an integer 0–65535 → itself, anything else → undefined. */
export function parsePort(value: string): number | undefined {
  if (value === "") return 0;
  if (!/^[0-9]{1,5}$/.test(value)) return undefined;
  const n = Number(value);
  return n <= 65535 ? n : undefined;
}

/** The operation of a document: `<root version="…"><operation …>…</operation></root>` (PROTOCOL.md §2.1). */
export interface Envelope {
  readonly root: string;
  readonly version: string;
  readonly operation: string;
  readonly node: XmlNode;
}

/**
 * Checks the envelope: the root is one of `roots`, carries `version` when `requireVersion`, and holds exactly
 * one element (the operation). Unknown operations are the caller's to judge; this only finds the one.
 */
export function envelope(
  doc: XmlDocument,
  roots: readonly string[],
  requireVersion: boolean,
): ParseResult<Envelope> {
  if (!roots.includes(doc.root)) {
    return fail("wrong_root", `root element is <${clip(doc.root)}>, expected <${roots.join("> or <")}>`);
  }
  const version = attr(doc.node, "version");
  if (requireVersion && !version) return fail("wrong_root", `<${doc.root}> has no version attribute`);
  const ops = elementNames(doc.node);
  if (ops.length === 0) return fail("no_operation", `<${doc.root}> holds no operation element`);
  const first = ops[0]!;
  if (ops.length > 1 || Array.isArray(doc.node[first])) {
    const names = ops.length > 1 ? ops.slice(0, 3).map(clip).join(", ") : `${clip(first)} twice`;
    return {
      ok: false,
      error: {
        kind: "invalid_message",
        detail: `more than one operation element (${names})`,
        operation: clip(first),
      },
    };
  }
  return {
    ok: true,
    msg: { root: doc.root, version: version ?? "", operation: first, node: asNode(doc.node[first]) },
  };
}

/** Error for an operation this dialect does not know; the name is clipped so the detail stays loggable. */
export function unknownOperation(operation: string, root: string): { ok: false; error: ProtocolError } {
  const op = clip(operation);
  return {
    ok: false,
    error: { kind: "unknown_operation", detail: `unknown operation <${op}> in <${root}>`, operation: op },
  };
}

/** Error for a known operation missing something it cannot do without. */
export function invalidMessage(operation: string, detail: string): { ok: false; error: ProtocolError } {
  return { ok: false, error: { kind: "invalid_message", detail: `${operation}: ${detail}`, operation } };
}

/** Element names reach logs and metrics: 64 characters are plenty for any real one. */
function clip(name: string): string {
  return name.length > 64 ? `${name.slice(0, 64)}…` : name;
}

// ---- internals ------------------------------------------------------------------------------------------

function own(node: XmlNode | undefined, key: string): unknown {
  return node !== undefined && Object.hasOwn(node, key) ? node[key] : undefined;
}

function textOf(v: unknown): string {
  if (typeof v === "string") return v;
  if (isObject(v)) {
    const t = own(v, "#text");
    return typeof t === "string" ? t : "";
  }
  return "";
}

function isObject(v: unknown): v is XmlNode {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isBlank(s: string): boolean {
  return /^[ \t\r\n]*$/.test(s);
}

function fail(kind: ProtocolError["kind"], detail: string): { ok: false; error: ProtocolError } {
  return { ok: false, error: { kind, detail } };
}

/**
 * One pass over the `<` positions: refuses declarations and processing instructions, counts start tags,
 * skips comments, turns CDATA sections into escaped text. Leading BOM and whitespace are dropped (some
 * clients send a newline before the declaration). Returns the text to validate and parse.
 */
function scanMarkup(xml: string): ParseResult<string> {
  const start = /^\uFEFF?[ \t\r\n]*/.exec(xml)![0].length;
  const s = start > 0 ? xml.slice(start) : xml;
  const parts: string[] = [];
  let copied = 0;
  let elements = 0;
  let i = 0;
  for (;;) {
    i = s.indexOf("<", i);
    if (i < 0) break;
    const next = s.charCodeAt(i + 1);
    if (next === 0x21 /* ! */) {
      if (s.startsWith("<!--", i)) {
        const end = s.indexOf("-->", i + 4);
        if (end < 0) return fail("not_xml", "comment is not closed");
        i = end + 3;
      } else if (s.startsWith("<![CDATA[", i)) {
        const end = s.indexOf("]]>", i + 9);
        if (end < 0) return fail("not_xml", "CDATA section is not closed");
        parts.push(s.slice(copied, i), escapeText(s.slice(i + 9, end)));
        i = copied = end + 3;
      } else {
        const what = /^<!([A-Za-z]*)/.exec(s.slice(i, i + 12))![1] || "declaration";
        return fail("forbidden_markup", `<!${what} is not allowed (no DTDs or entity declarations)`);
      }
    } else if (next === 0x3f /* ? */) {
      if (i === 0 && /^<\?xml[ \t\r\n?]/.test(s.slice(0, 6))) {
        const end = s.indexOf("?>", 5);
        if (end < 0) return fail("not_xml", "XML declaration is not closed");
        i = end + 2;
      } else {
        return fail("forbidden_markup", "processing instructions are not allowed");
      }
    } else {
      if (next !== 0x2f /* / */ && ++elements > MAX_ELEMENTS) {
        return fail("too_large", `more than ${MAX_ELEMENTS} elements`);
      }
      i += 1;
    }
  }
  if (parts.length === 0) return { ok: true, msg: s };
  parts.push(s.slice(copied));
  return { ok: true, msg: parts.join("") };
}

/**
 * The validator does not look past a self-closing root (`<a/>junk` passes), so for an empty root the rest of
 * the document is checked here: only whitespace and comments may follow it.
 */
function onlyMiscAfterEmptyRoot(s: string): boolean {
  let i = s.indexOf("<");
  while (i >= 0 && (s[i + 1] === "?" || s[i + 1] === "!")) {
    const end = s[i + 1] === "?" ? s.indexOf("?>", i) : s.indexOf("-->", i);
    i = end < 0 ? -1 : s.indexOf("<", end);
  }
  if (i < 0) return true;
  let quote = "";
  for (i += 1; i < s.length; i++) {
    const c = s[i];
    if (quote) {
      if (c === quote) quote = "";
    } else if (c === '"' || c === "'") {
      quote = c;
    } else if (c === ">") {
      break;
    }
  }
  if (s[i - 1] !== "/") return true; // `<a></a>`: the validator checked what follows
  return /^[ \t\r\n]*$/.test(s.slice(i + 1).replace(/<!--[\s\S]*?-->/g, ""));
}

function escapeText(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/**
 * The validator's own messages quote tag names and characters, which can be pieces of an unescaped password;
 * details are logged, so they say what kind of fault and where, never what text.
 */
function validatorDetail(err: { code: string; msg: string; line: number; col?: number }): string {
  const what =
    err.msg === "Start tag expected."
      ? "no root element"
      : ({
          InvalidTag: "malformed, unclosed or mismatched tag",
          InvalidAttr: "malformed or repeated attribute",
          InvalidChar: "unexpected character (an unescaped & or < , or text outside the root)",
          InvalidXml: "not well-formed",
        }[err.code] ?? "not well-formed");
  return err.col ? `${what} at line ${err.line}, column ${err.col}` : `${what} at line ${err.line}`;
}

/** Thrown from inside the parser's value callbacks (the only way to stop it); caught in parseXml. */
class BadReference extends Error {}

const PREDEFINED: Readonly<Record<string, string>> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };

/** Decodes the predefined entities and character references in one pass. @throws on anything else (→ not_xml). */
function decodeReferences(value: string): string {
  if (!value.includes("&")) return value;
  return value.replace(/&(#x[0-9A-Fa-f]+|#[0-9]+|[A-Za-z_][\w.-]*);/g, (_ref, body: string) => {
    if (body.startsWith("#")) {
      const cp = body[1] === "x" ? Number.parseInt(body.slice(2), 16) : Number.parseInt(body.slice(1), 10);
      if (!isXmlChar(cp))
        throw new BadReference("a character reference names a character XML does not allow");
      return String.fromCodePoint(cp);
    }
    if (!Object.hasOwn(PREDEFINED, body))
      throw new BadReference("reference to an undefined entity (only the five XML ones exist)");
    return PREDEFINED[body]!;
  });
}

function isXmlChar(cp: number): boolean {
  return (
    cp === 0x9 ||
    cp === 0xa ||
    cp === 0xd ||
    (cp >= 0x20 && cp <= 0xd7ff) ||
    (cp >= 0xe000 && cp <= 0xfffd) ||
    (cp >= 0x10000 && cp <= 0x10ffff)
  );
}

/** True when some element sits more than `levels` below `node`. Recursion is bounded by the parser's guard. */
function depthExceeds(node: XmlNode, levels: number): boolean {
  for (const key of Object.keys(node)) {
    if (key.startsWith("@_") || key === "#text") continue;
    const v = node[key];
    for (const item of Array.isArray(v) ? v : [v]) {
      if (levels === 0) return true;
      if (isObject(item) && depthExceeds(item, levels - 1)) return true;
    }
  }
  return false;
}

const XML_NAME = /^[A-Za-z_:\u00C0-\uFFFD][\w.:\-\u00B7\u00C0-\uFFFD]*$/;

/** Copies a tree for the builder, keeping only keys that are XML names (plus "@_"-attributes and "#text"). */
function sanitize(tree: XmlNode): XmlTree {
  const out: XmlTree = {};
  for (const key of Object.keys(tree)) {
    const v = tree[key];
    if (v === undefined) continue;
    if (key === "#text") {
      out[key] = v;
    } else if (key.startsWith("@_")) {
      if (XML_NAME.test(key.slice(2)) && (typeof v === "string" || typeof v === "number"))
        out[key] = String(v);
    } else if (XML_NAME.test(key)) {
      out[key] = Array.isArray(v) ? v.map(sanitizeValue) : sanitizeValue(v);
    }
  }
  return out;
}

function sanitizeValue(v: unknown): unknown {
  if (isObject(v)) return sanitize(v);
  if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") return String(v);
  return "";
}
