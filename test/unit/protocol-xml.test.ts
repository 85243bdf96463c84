// Claim: the XML layer refuses DTDs, entity declarations, processing instructions, oversize, over-deep and
// malformed input as typed errors (never a throw), decodes only XML's own references, and escapes every value.
import { describe, expect, test } from "bun:test";
import {
  buildXml,
  children,
  MAX_DEPTH,
  MAX_DOCUMENT_BYTES,
  MAX_ELEMENTS,
  parseXml,
  text,
  XML_DECLARATION,
} from "../../src/protocol/xml.ts";

function kindOf(xml: string): string {
  const r = parseXml(xml);
  return r.ok ? "ok" : r.error.kind;
}

describe("refused markup", () => {
  test("XXE: an external entity in a DOCTYPE is refused before any parsing", () => {
    const xxe = `<?xml version="1.0"?>
<!DOCTYPE pcoip-client [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<pcoip-client version="2.1"><bye>&xxe;</bye></pcoip-client>`;
    const r = parseXml(xxe);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.error.kind).toBe("forbidden_markup");
      expect(r.error.detail).toContain("DOCTYPE");
    }
  });

  test("billion laughs is refused as forbidden markup", () => {
    const lol = [
      '<?xml version="1.0"?>',
      "<!DOCTYPE lolz [",
      ' <!ENTITY lol "lol">',
      ...Array.from({ length: 9 }, (_, i) => ` <!ENTITY lol${i + 1} "${`&lol${i || ""};`.repeat(10)}">`),
      "]>",
      "<lolz>&lol9;</lolz>",
    ].join("\n");
    expect(kindOf(lol)).toBe("forbidden_markup");
  });

  test("a bare ENTITY, ELEMENT or lower-case doctype declaration is refused", () => {
    expect(kindOf('<!ENTITY a "b"><a/>')).toBe("forbidden_markup");
    expect(kindOf("<a><!ELEMENT a ANY></a>")).toBe("forbidden_markup");
    expect(kindOf("<!doctype a><a/>")).toBe("forbidden_markup");
  });

  test("processing instructions other than the leading declaration are refused", () => {
    expect(kindOf('<?xml-stylesheet href="x"?><a/>')).toBe("forbidden_markup");
    expect(kindOf("<a><?php echo 1; ?></a>")).toBe("forbidden_markup");
    expect(kindOf('<a/><?xml version="1.0"?>')).toBe("forbidden_markup");
    expect(kindOf('<?xml version="1.0"?><a/>')).toBe("ok");
  });

  test("markup-like text inside CDATA or comments is just text", () => {
    const r = parseXml("<a><!-- <!DOCTYPE x> --><b><![CDATA[<!DOCTYPE x> & <?pi?>]]></b></a>");
    expect(r.ok && text(r.msg.node, "b")).toBe("<!DOCTYPE x> & <?pi?>");
  });
});

describe("size, depth and element limits, each crossed", () => {
  const padTo = (bytes: number) => {
    const head = "<a>";
    const tail = "</a>";
    return head + "x".repeat(bytes - head.length - tail.length) + tail;
  };

  test(`${MAX_DOCUMENT_BYTES} bytes pass, one more is too_large`, () => {
    expect(kindOf(padTo(MAX_DOCUMENT_BYTES))).toBe("ok");
    expect(kindOf(padTo(MAX_DOCUMENT_BYTES + 1))).toBe("too_large");
  });

  test("the limit counts UTF-8 bytes, not characters", () => {
    const xml = `<a>${"é".repeat(40000)}</a>`; // 40,007 characters, 80,007 bytes
    expect(xml.length).toBeLessThan(MAX_DOCUMENT_BYTES);
    expect(kindOf(xml)).toBe("too_large");
  });

  const nest = (depth: number) => "<e>".repeat(depth) + "</e>".repeat(depth);

  test(`nesting ${MAX_DEPTH} deep passes, ${MAX_DEPTH + 1} is too_large`, () => {
    expect(kindOf(nest(MAX_DEPTH))).toBe("ok");
    expect(kindOf(nest(MAX_DEPTH + 1))).toBe("too_large");
    expect(kindOf(`${"<e>".repeat(MAX_DEPTH - 1)}<e/>${"</e>".repeat(MAX_DEPTH - 1)}`)).toBe("ok");
    expect(kindOf(`${"<e>".repeat(MAX_DEPTH)}<e/>${"</e>".repeat(MAX_DEPTH)}`)).toBe("too_large");
  });

  test("a depth bomb (thousands of levels) is too_large, not a stack overflow", () => {
    expect(kindOf(nest(8000))).toBe("too_large");
  });

  test(`${MAX_ELEMENTS} elements pass, one more is too_large`, () => {
    const many = (n: number) => `<r>${"<a/>".repeat(n - 1)}</r>`;
    expect(kindOf(many(MAX_ELEMENTS))).toBe("ok");
    expect(kindOf(many(MAX_ELEMENTS + 1))).toBe("too_large");
  });
});

describe("malformed documents are not_xml", () => {
  test.each([
    ["empty", ""],
    ["declaration only (the vendor's dummy POST body)", '<?xml version="1.0" encoding="UTF-8"?>'],
    ["plain text", "hello"],
    ["mismatched tags", "<a><b></a></b>"],
    ["unclosed tag", "<a><b></b>"],
    ["unopened close tag", "<a></a></b>"],
    ["text before the root", "x<a/>"],
    ["text after the root", "<a></a>x"],
    ["text after a self-closing root", "<a/>x"],
    ["text after a self-closing root with attributes", '<a v="1"/>x<!-- c -->'],
    ["two roots", "<a></a><b></b>"],
    ["two roots, the second self-closing", "<a>x</a><b/>"],
    ["the same root twice", "<a/><a/>"],
    ["unclosed comment", "<a><!-- </a>"],
    ["unclosed CDATA", "<a><![CDATA[ </a>"],
    ["unquoted attribute", "<a v=1/>"],
    ["attribute without value", "<a v/>"],
    ["duplicate attribute", '<a v="1" v="2"/>'],
    ["bare ampersand", "<a>fish & chips</a>"],
    ["undefined entity", "<a>&nbsp;</a>"],
    ["reference to a non-XML character", "<a>&#0;</a>"],
    ["unclosed declaration", "<?xml version='1.0' <a/>"],
  ])("%s", (_what, xml) => {
    expect(kindOf(xml)).toBe("not_xml");
  });
});

test("error details name the fault and its place, never text from the document (it may be a password)", () => {
  const secret = "s3cr3t";
  const docs = [
    `<a><password>x&${secret};</password></a>`,
    `<a><password>x&#${secret};</password></a>`,
    `<a><password>x<${secret}</password></a>`,
    `<a><password>x</${secret}></password></a>`,
    `<a><password ${secret}>x</password></a>`,
    `<a><password a='1' a='${secret}'>x</password></a>`,
    `<a><${secret}>x</${secret}></a><b/>`,
    `<a><password>${secret}</password></a>${secret}`,
    `<a><password>x&#${"9".repeat(12)};${secret}</password></a>`,
    `<a><constructor>${secret}</constructor><hasOwnProperty/><hasOwnProperty/></a>`,
  ];
  for (const xml of docs) {
    const r = parseXml(xml);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error.detail).not.toContain(secret);
  }
});

test("element and attribute names of Object.prototype pollute nothing and never throw", () => {
  for (const xml of [
    "<a><__proto__><polluted>1</polluted></__proto__></a>",
    "<a __proto__='1'><constructor><prototype>1</prototype></constructor></a>",
    "<a><hasOwnProperty/><hasOwnProperty/><toString>1</toString></a>",
  ]) {
    const r = parseXml(xml);
    expect(typeof r.ok).toBe("boolean");
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    if (r.ok) expect(text(r.msg.node, "__proto__")).toBe("");
  }
});

describe("values", () => {
  test("values stay strings exactly as sent: no number or boolean coercion, no trimming of leaf text", () => {
    const r = parseXml("<a n='0012'><p>0012</p><b>true</b><e>1e3</e><s> pass word </s><x>0x1F</x></a>");
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.msg.node["@_n"]).toBe("0012");
    expect(text(r.msg.node, "p")).toBe("0012");
    expect(text(r.msg.node, "b")).toBe("true");
    expect(text(r.msg.node, "e")).toBe("1e3");
    expect(text(r.msg.node, "s")).toBe(" pass word ");
    expect(text(r.msg.node, "x")).toBe("0x1F");
  });

  test("predefined entities and character references are decoded once", () => {
    const r = parseXml("<a v='&lt;&#x41;&apos;'><t>&amp;lt; &#60; &#x1F600; &quot;</t></a>");
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.msg.node["@_v"]).toBe("<A'");
    expect(text(r.msg.node, "t")).toBe('&lt; < 😀 "');
  });

  test("whitespace between elements is dropped, a newline before the root and a BOM are tolerated", () => {
    const r = parseXml("\uFEFF\n<?xml version='1.0' encoding='utf-8'?>\n<a>\n  <b>1</b>\n  <b>2</b>\n</a>\n");
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.msg.node).toEqual({ b: ["1", "2"] });
  });

  test("repeated elements parse as arrays even when only one is present", () => {
    const r = parseXml("<r><caps><cap>A</cap></caps><x><cap>B</cap></x></r>");
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.msg.node.caps).toEqual({ cap: ["A"] });
    expect(r.msg.node.x).toEqual({ cap: "B" }); // only caps/cap repeats
    expect(children(r.msg.node, "caps").length).toBe(1);
  });
});

describe("building", () => {
  test("starts with the XML declaration and escapes every text and attribute value", () => {
    const nasty = `<>&"' ]]> \r`;
    const xml = buildXml("r", { "@_v": nasty, t: nasty, e: "" });
    expect(xml.startsWith(XML_DECLARATION)).toBe(true);
    expect(xml).not.toContain("]]>");
    expect(xml).toContain("<e/>");
    const r = parseXml(xml);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.msg.node["@_v"]).toBe(nasty);
    expect(text(r.msg.node, "t")).toBe(nasty);
  });

  test("keys that are not XML names are dropped instead of written as broken markup", () => {
    const xml = buildXml("r", { ok: "1", "#__proto__": "x", "bad name": "y", "@_bad attr": "z", "@_a": "1" });
    expect(xml).toBe(`${XML_DECLARATION}\n<r a="1"><ok>1</ok></r>`);
  });

  test('an attribute valued "true" is written with its value, not as a bare name', () => {
    expect(buildXml("p", { "@_is-default": "true", "#text": "PCOIP" })).toContain(
      '<p is-default="true">PCOIP</p>',
    );
  });
});
