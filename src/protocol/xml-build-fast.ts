/**
 * The fast path of buildXml (xml.ts): writes a tree as XML text in one walk, with exactly the output of
 * xml.ts's sanitize + fast-xml-parser's builder under xml.ts's options (issue 21: the builder and its tree copy
 * were the largest XML cost left per login once parsing had a fast path). Same rules: keys that are not XML names
 * are dropped, attributes only from strings and numbers, `& < > ' "` and CR escaped in every text and attribute
 * value, an empty element written `<x/>`. A tree with anything outside those rules (a `#text` that is not a
 * string, an own `__proto__` key) gives `undefined`, and the caller uses the full builder. test/unit/protocol-xml-fast.test.ts compares
 * both on generated trees.
 */

/** xml.ts's XML_NAME: the names the builder writes. */
const XML_NAME = /^[A-Za-z_:\u00C0-\uFFFD][\w.:\-\u00B7\u00C0-\uFFFD]*$/;
/** Names already judged (element names repeat from login to login); bounded, since relayed names are a peer's. */
const judged = new Map<string, boolean>();
const MAX_JUDGED = 1024;

function isName(name: string): boolean {
  const hit = judged.get(name);
  if (hit !== undefined) return hit;
  const ok = XML_NAME.test(name);
  if (judged.size < MAX_JUDGED) judged.set(name, ok);
  return ok;
}

const ESCAPES: Readonly<Record<string, string>> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  "'": "&apos;",
  '"': "&quot;",
  "\r": "&#13;",
};
const ESCAPED = /[&<>'"\r]/g;

function escapeValue(s: string): string {
  ESCAPED.lastIndex = 0;
  return ESCAPED.test(s) ? s.replace(ESCAPED, (c) => ESCAPES[c]!) : s;
}

/** Thrown inside the walk when the tree leaves the rules; caught in fastBuildXml. */
class NotPlain extends Error {}

function leaf(key: string, text: string): string {
  const t = escapeValue(text);
  return t === "" ? `<${key}/>` : `<${key}>${t}</${key}>`;
}

/** One value under `key` as the sanitizer turns it (objects kept, primitives as text, anything else empty). */
function value(key: string, v: unknown): string {
  if (typeof v === "object" && v !== null && !Array.isArray(v))
    return element(key, v as Record<string, unknown>);
  if (typeof v === "string") return leaf(key, v);
  if (typeof v === "number" || typeof v === "boolean") return leaf(key, String(v));
  return `<${key}/>`;
}

function element(key: string, node: Record<string, unknown>): string {
  let attrs = "";
  let inner = "";
  for (const k of Object.keys(node)) {
    const v = node[k];
    if (v === undefined) continue;
    if (k === "#text") {
      if (typeof v !== "string") throw new NotPlain();
      inner += escapeValue(v);
    } else if (k.startsWith("@_")) {
      const name = k.slice(2);
      if ((typeof v === "string" || typeof v === "number") && isName(name))
        attrs += ` ${name}="${escapeValue(String(v))}"`;
    } else if (k === "__proto__") {
      // The sanitizer's copy turns this key into the copy's prototype, which the library's builder then reads
      // `#text` through: leave such a tree (no parse of ours makes one) to them.
      throw new NotPlain();
    } else if (isName(k)) {
      if (Array.isArray(v)) for (const item of v) inner += value(k, item);
      else inner += value(k, v);
    }
  }
  return inner === "" ? `<${key}${attrs}/>` : `<${key}${attrs}>${inner}</${key}>`;
}

/** `<root …>` with the tree inside, as the full builder writes it; undefined = use the full builder. */
export function fastBuildXml(root: string, tree: Record<string, unknown>): string | undefined {
  try {
    return element(root, tree);
  } catch (e) {
    if (e instanceof NotPlain) return undefined;
    throw e;
  }
}
