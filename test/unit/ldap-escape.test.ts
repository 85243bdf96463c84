// Claim: text a client types can never change the structure of an LDAP filter (RFC 4515) or DN (RFC 4514):
// each special character is escaped, and parsing the result gives back exactly one value equal to the input.
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { EqualityFilter, FilterParser } from "ldapts";
import {
  escapeDnValue,
  escapeFilterValue,
  fillTemplate,
  firstRdnValue,
} from "../../src/cm/auth/ldap-escape.ts";

describe("escapeFilterValue (RFC 4515)", () => {
  test.each([
    ["alice", "alice"],
    ["*", "\\2a"],
    [")(", "\\29\\28"],
    ["\\", "\\5c"],
    ["a\0b", "a\\00b"],
    ["alice)(uid=*", "alice\\29\\28uid=\\2a"],
    ["*)(|(objectClass=*", "\\2a\\29\\28|\\28objectClass=\\2a"],
    ["Zoë 日本", "Zoë 日本"],
  ])("%p → %p", (input, want) => {
    expect(escapeFilterValue(input)).toBe(want);
  });

  test("the escaped value parses as one equality filter whose value is the input (any string)", () => {
    fc.assert(
      fc.property(fc.string({ unit: "grapheme", maxLength: 40 }), (s) => {
        const f = FilterParser.parseString(`(uid=${escapeFilterValue(s)})`);
        expect(f).toBeInstanceOf(EqualityFilter);
        expect((f as EqualityFilter).attribute).toBe("uid");
        expect((f as EqualityFilter).value).toBe(s);
      }),
      { numRuns: 300 },
    );
  });

  test("an unescaped injection would have widened the filter (the property above is not vacuous)", () => {
    expect(FilterParser.parseString("(uid=*)")).not.toBeInstanceOf(EqualityFilter);
    expect(() => FilterParser.parseString("(uid=alice)(uid=*)")).toThrow();
  });
});

describe("escapeDnValue (RFC 4514)", () => {
  test.each([
    ["alice", "alice"],
    ["Smith, John", "Smith\\, John"],
    ['a"b+c;d<e>f\\g=h', 'a\\"b\\+c\\;d\\<e\\>f\\\\g\\=h'],
    [" lead", "\\ lead"],
    ["trail ", "trail\\ "],
    ["#hash", "\\#hash"],
    ["mid#dle", "mid#dle"],
    ["a\0b", "a\\00b"],
    ["x\\ ", "x\\\\\\ "],
    [" ", "\\ "],
  ])("%p → %p", (input, want) => {
    expect(escapeDnValue(input)).toBe(want);
  });

  test("the escaped value reads back as the first RDN's value, and the DN keeps its other RDNs", () => {
    fc.assert(
      fc.property(fc.string({ unit: "grapheme", minLength: 1, maxLength: 40 }), (s) => {
        const dn = `uid=${escapeDnValue(s)},ou=people,dc=corp,dc=example`;
        expect(firstRdnValue(dn)).toBe(s);
        expect(unescapedSpecials(escapeDnValue(s))).toEqual([]);
      }),
      { numRuns: 300 },
    );
  });
});

/** Characters with DN syntax meaning that are not consumed by a preceding backslash (scanned independently). */
function unescapedSpecials(v: string): string[] {
  const out: string[] = [];
  let lastEscaped = false;
  for (let i = 0; i < v.length; i++) {
    lastEscaped = false;
    if (v[i] === "\\") {
      if (i + 1 >= v.length) out.push("dangling backslash");
      i++;
      lastEscaped = true;
      continue;
    }
    if (',+;"<>=\0'.includes(v[i]!)) out.push(v[i]!);
  }
  if (v.startsWith(" ") || v.startsWith("#")) out.push("leading");
  if (v.endsWith(" ") && !lastEscaped) out.push("trailing space");
  return out;
}

describe("firstRdnValue", () => {
  test.each([
    ["cn=cad-users,ou=groups,dc=corp,dc=example", "cad-users"],
    ["CN=Smith\\, John,OU=Users,DC=corp,DC=example", "Smith, John"],
    ["cn=caf\\c3\\a9,dc=x", "café"],
    ["cn=a\\2Cb,dc=x", "a,b"],
    ["cn=x+uid=y,dc=x", undefined],
    ["not a dn", undefined],
    ["cn=,dc=x", undefined],
  ])("%p → %p", (dn, want) => {
    expect(firstRdnValue(dn)).toBe(want);
  });
});

describe("fillTemplate", () => {
  test("fills known placeholders with the given (already escaped) values, leaves others", () => {
    expect(fillTemplate("{user}@{domain}", { user: "alice", domain: "corp.example" })).toBe(
      "alice@corp.example",
    );
    expect(fillTemplate("(&(uid={user})(x={other}))", { user: escapeFilterValue("a*") })).toBe(
      "(&(uid=a\\2a)(x={other}))",
    );
  });

  test("a value that looks like a placeholder is not expanded again", () => {
    expect(fillTemplate("uid={user},dc={domain}", { user: "{domain}", domain: "x" })).toBe(
      "uid={domain},dc=x",
    );
  });
});
