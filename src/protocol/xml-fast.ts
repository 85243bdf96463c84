/**
 * The fast path of parseXml (xml.ts) for the small, plain documents a login exchanges: hello, authenticate,
 * get-resource-list, allocate-resource, bye and the agent's launch-session-resp (issue 21: fast-xml-parser's
 * validator and parser were the largest share of the CM's JavaScript time per login).
 *
 * It reads one strict subset of XML in a single pass and builds the very tree fast-xml-parser builds with
 * xml.ts's options (same keys, same key order, same arrays, values as strings). Anything outside the subset makes
 * it answer `undefined`, and the caller then runs the full path (scan, validator, parser), which decides and
 * words every refusal. So this module never refuses a document and never accepts one the full path refuses;
 * test/unit/protocol-xml-fast.test.ts checks both against each other with fast-check.
 *
 * The subset: at most FAST_MAX_CHARS (2 KiB) characters; an optional BOM and white space; an optional XML declaration
 * of `name="value"` pairs; one root element; then only white space. Elements with ASCII names (no colon), each
 * attribute once, quoted values without `<`; text without `<` or `>`; references only the five predefined
 * entities and character references to XML characters. No comments, CDATA, processing instructions or DTDs,
 * no element that holds both text (other than white space) and elements, no white-space-only leaf text, at most
 * FAST_MAX_DEPTH levels.
 */
import type { XmlNode } from "./types.ts";

/**
 * Longer documents take the full path: the fast one is for the few-hundred-byte documents of a login (a hello is
 * ≈600 bytes). Kept under 4 KiB so the hostile suite's linearity checks (4 KiB against 64 KiB) time one path.
 */
export const FAST_MAX_CHARS = 2048;
/** Deeper documents take the full path (which applies MAX_DEPTH and words the refusal). */
const FAST_MAX_DEPTH = 16;

/** The document's root name and content, as xml.ts's XmlDocument; undefined = use the full path. */
export interface FastDocument {
  readonly root: string;
  readonly node: XmlNode;
}

/**
 * An element being read: its name, its children (created on the first), its attributes (kept apart: the parser
 * puts them after the content), its text.
 */
interface Open {
  readonly name: string;
  obj: Record<string, unknown> | undefined;
  attrs: Record<string, string> | undefined;
  text: string;
  children: boolean;
}

/**
 * Parses `xml` when it lies in the subset above; `repeated(parent, child)` says which elements always parse as
 * arrays (xml.ts's REPEATED).
 */
export function fastParseXml(
  xml: string,
  repeated: (parent: string, child: string) => boolean,
): FastDocument | undefined {
  const n = xml.length;
  // The parser turns CR LF and lone CR into LF: documents with a CR take the full path.
  if (n > FAST_MAX_CHARS || xml.includes("\r")) return undefined;
  let i = 0;
  if (xml.charCodeAt(0) === 0xfeff) i = 1;
  i = skipSpace(xml, i);
  if (xml.startsWith("<?", i)) {
    i = skipDeclaration(xml, i);
    if (i < 0) return undefined;
    i = skipSpace(xml, i);
  }
  const stack: Open[] = [];
  let root: FastDocument | undefined;
  while (i < n) {
    const lt = xml.indexOf("<", i);
    if (lt < 0) {
      // Trailing characters: only white space after the root.
      if (stack.length > 0 || !isSpaceRun(xml, i, n)) return undefined;
      break;
    }
    if (lt > i) {
      if (stack.length === 0) return undefined; // text outside the root
      const top = stack[stack.length - 1]!;
      const t = xml.slice(i, lt);
      if (t.includes(">")) return undefined;
      top.text += t;
    }
    i = lt + 1;
    const c = xml.charCodeAt(i);
    if (c === 0x2f /* / */) {
      const top = stack.pop();
      if (!top) return undefined;
      const end = i + 1 + top.name.length;
      if (!xml.startsWith(top.name, i + 1)) return undefined;
      i = skipSpace(xml, end);
      if (xml.charCodeAt(i) !== 0x3e /* > */) return undefined;
      i++;
      const value = close(top);
      if (value === undefined) return undefined;
      if (stack.length === 0) {
        root = { root: top.name, node: asNode(value) };
        if (!isSpaceRun(xml, i, n)) return undefined;
        break;
      }
      if (!addChild(stack[stack.length - 1]!, top.name, value, repeated)) return undefined;
      continue;
    }
    if (stack.length === 0 && root !== undefined) return undefined;
    // A start tag.
    const nameEnd = scanName(xml, i);
    if (nameEnd === i) return undefined; // `<!`, `<?`, `<` + anything that is not a name
    const el: Open = {
      name: xml.slice(i, nameEnd),
      obj: undefined,
      attrs: undefined,
      text: "",
      children: false,
    };
    // `__proto__`, `hasOwnProperty` and friends: the parser trips over some of them; leave them to it.
    if (el.name in Object.prototype) return undefined;
    i = nameEnd;
    let selfClosed = false;
    for (;;) {
      const afterSpace = skipSpace(xml, i);
      const ch = xml.charCodeAt(afterSpace);
      if (ch === 0x3e /* > */) {
        i = afterSpace + 1;
        break;
      }
      if (ch === 0x2f /* / */) {
        if (xml.charCodeAt(afterSpace + 1) !== 0x3e) return undefined;
        i = afterSpace + 2;
        selfClosed = true;
        break;
      }
      if (afterSpace === i) return undefined; // attributes need white space before them
      i = readAttribute(xml, afterSpace, el);
      if (i < 0) return undefined;
    }
    if (selfClosed) {
      const value = close(el);
      if (value === undefined) return undefined;
      if (stack.length === 0) {
        if (!isSpaceRun(xml, i, n)) return undefined;
        return { root: el.name, node: asNode(value) };
      }
      if (!addChild(stack[stack.length - 1]!, el.name, value, repeated)) return undefined;
      continue;
    }
    if (stack.length >= FAST_MAX_DEPTH) return undefined;
    stack.push(el);
  }
  return stack.length === 0 ? root : undefined;
}

/**
 * The element's value as fast-xml-parser gives it: a string for a bare leaf, else an object with the children
 * (or `#text`) first and the attributes after them.
 */
function close(el: Open): unknown {
  let obj = el.obj;
  if (el.children) {
    // Text between child elements: only white space (dropped), or it is mixed content.
    if (!isSpaceRun(el.text, 0, el.text.length)) return undefined;
  } else {
    let text = el.text;
    if (text !== "" && isSpaceRun(text, 0, text.length)) return undefined;
    if (text.includes("&")) {
      const decoded = decode(text);
      if (decoded === undefined) return undefined;
      text = decoded;
    }
    if (el.attrs === undefined) return text;
    obj = text !== "" ? { "#text": text } : {};
  }
  return el.attrs === undefined ? obj : Object.assign(obj ?? {}, el.attrs);
}

function addChild(
  parent: Open,
  name: string,
  value: unknown,
  repeated: (parent: string, child: string) => boolean,
): boolean {
  // Text before or between child elements: only white space (dropped), or it is mixed content.
  if (!isSpaceRun(parent.text, 0, parent.text.length)) return false;
  parent.children = true;
  parent.text = "";
  parent.obj ??= {};
  const obj = parent.obj;
  if (Object.hasOwn(obj, name)) {
    const prev = obj[name];
    // Values are strings or objects, never arrays: an array here is the element's list.
    if (Array.isArray(prev)) prev.push(value);
    else obj[name] = [prev, value];
    return true;
  }
  obj[name] = repeated(parent.name, name) ? [value] : value;
  return true;
}

function asNode(v: unknown): XmlNode {
  if (typeof v === "object" && v !== null) return v as XmlNode;
  if (typeof v === "string" && v !== "") return { "#text": v };
  return {};
}

/** Reads `name = "value"` at `i` into `el`; returns the index after it, or -1. */
function readAttribute(xml: string, i: number, el: Open): number {
  const nameEnd = scanName(xml, i);
  if (nameEnd === i) return -1;
  const key = `@_${xml.slice(i, nameEnd)}`;
  let j = skipSpace(xml, nameEnd);
  if (xml.charCodeAt(j) !== 0x3d /* = */) return -1;
  j = skipSpace(xml, j + 1);
  const q = xml.charCodeAt(j);
  if (q !== 0x22 && q !== 0x27) return -1;
  const close = xml.indexOf(q === 0x22 ? '"' : "'", j + 1);
  if (close < 0) return -1;
  let value = xml.slice(j + 1, close);
  if (value.includes("<")) return -1;
  if (value.includes("&")) {
    const decoded = decode(value);
    if (decoded === undefined) return -1;
    value = decoded;
  }
  el.attrs ??= {};
  const attrs = el.attrs;
  if (Object.hasOwn(attrs, key)) return -1;
  attrs[key] = value;
  return close + 1;
}

/** `<?xml version="1.0" encoding="UTF-8"?>` (name="value" pairs only); returns the index after it, or -1. */
function skipDeclaration(xml: string, i: number): number {
  if (!xml.startsWith("<?xml", i)) return -1;
  const end = xml.indexOf("?>", i + 5);
  if (end < 0) return -1;
  const body = xml.slice(i + 5, end);
  return DECLARATION_BODY.test(body) ? end + 2 : -1;
}
const DECLARATION_BODY =
  /^(?:[ \t\r\n]+[a-z]+[ \t\r\n]*=[ \t\r\n]*(?:"[A-Za-z0-9._-]*"|'[A-Za-z0-9._-]*'))+[ \t\r\n]*$/;

/** End of the ASCII XML name at `i` (letters, digits, `_ - .`, starting with a letter or `_`); `i` if none. */
function scanName(xml: string, i: number): number {
  const c = xml.charCodeAt(i);
  if (!((c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || c === 0x5f)) return i;
  let j = i + 1;
  for (;;) {
    const d = xml.charCodeAt(j);
    if (
      (d >= 0x61 && d <= 0x7a) ||
      (d >= 0x41 && d <= 0x5a) ||
      (d >= 0x30 && d <= 0x39) ||
      d === 0x5f ||
      d === 0x2d ||
      d === 0x2e
    )
      j++;
    else return j;
  }
}

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;
}

function skipSpace(s: string, i: number): number {
  while (i < s.length && isSpace(s.charCodeAt(i))) i++;
  return i;
}

function isSpaceRun(s: string, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (!isSpace(s.charCodeAt(i))) return false;
  return true;
}

const PREDEFINED: Readonly<Record<string, string>> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };

/** Decodes the predefined entities and character references; undefined on anything else. */
function decode(s: string): string | undefined {
  let out = "";
  let from = 0;
  for (;;) {
    const amp = s.indexOf("&", from);
    if (amp < 0) return out + s.slice(from);
    const semi = s.indexOf(";", amp + 1);
    if (semi < 0 || semi - amp > 12) return undefined;
    const body = s.slice(amp + 1, semi);
    let rep: string | undefined;
    if (body.startsWith("#x")) {
      rep = /^#x[0-9A-Fa-f]{1,6}$/.test(body) ? charFor(Number.parseInt(body.slice(2), 16)) : undefined;
    } else if (body.startsWith("#")) {
      rep = /^#[0-9]{1,7}$/.test(body) ? charFor(Number.parseInt(body.slice(1), 10)) : undefined;
    } else {
      rep = Object.hasOwn(PREDEFINED, body) ? PREDEFINED[body] : undefined;
    }
    if (rep === undefined) return undefined;
    out += s.slice(from, amp) + rep;
    from = semi + 1;
  }
}

function charFor(cp: number): string | undefined {
  const ok =
    cp === 0x9 ||
    cp === 0xa ||
    cp === 0xd ||
    (cp >= 0x20 && cp <= 0xd7ff) ||
    (cp >= 0xe000 && cp <= 0xfffd) ||
    (cp >= 0x10000 && cp <= 0x10ffff);
  return ok ? String.fromCodePoint(cp) : undefined;
}
