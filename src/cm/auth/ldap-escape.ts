/**
 * Escaping of untrusted text (what the client typed as user name and domain) before it enters an LDAP search
 * filter or a DN, so that no input can change the structure of either: `alice)(uid=*` stays one literal value.
 * Also the reverse direction for group DNs the directory returns (their first RDN value, i.e. the CN).
 */

/**
 * Escapes a value for an LDAP search filter (RFC 4515 §3): `*`, `(`, `)`, `\` and NUL become `\2a`, `\28`,
 * `\29`, `\5c`, `\00`. Everything else, including UTF-8, is allowed verbatim in a filter value.
 *
 * @example escapeFilterValue("alice)(uid=*") // "alice\\29\\28uid=\\2a"
 */
export function escapeFilterValue(value: string): string {
  return value.replace(/[*()\\\0]/g, (c) => `\\${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

/**
 * Escapes a value for one attribute value of a DN (RFC 4514 §2.4): `" + , ; < > \` (and `=`, which RFC 4514
 * allows escaping and some servers mis-parse unescaped) get a backslash; NUL becomes `\00`; a leading space or
 * `#` and a trailing space get a backslash.
 *
 * @example escapeDnValue("Smith, John") // "Smith\\, John"
 */
export function escapeDnValue(value: string): string {
  let out = "";
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    const edge = i === 0 || i === value.length - 1;
    if (c === "\0") out += "\\00";
    else if ('"+,;<>\\='.includes(c) || (c === " " && edge) || (c === "#" && i === 0)) out += `\\${c}`;
    else out += c;
  }
  return out;
}

/**
 * The unescaped value of the first RDN of a DN as the directory returns it, e.g. the CN of a group:
 * `cn=cad-users,ou=groups,dc=corp,dc=example` → `cad-users`; `CN=Smith\, John,OU=x` → `Smith, John`.
 * Returns undefined when the text is not a DN (no `=` in the first RDN) or the RDN is multi-valued (`+`).
 */
export function firstRdnValue(dn: string): string | undefined {
  const eq = dn.indexOf("=");
  if (eq <= 0) return undefined;
  let out = "";
  for (let i = eq + 1; i < dn.length; i++) {
    const c = dn[i]!;
    if (c === "," || c === ";") break;
    if (c === "+") return undefined;
    if (c !== "\\") {
      out += c;
      continue;
    }
    const hex = dn.slice(i + 1, i + 3);
    if (/^[0-9a-fA-F]{2}$/.test(hex)) {
      // A run of \XX escapes is UTF-8 bytes; gather them so multi-byte characters decode whole.
      const bytes: number[] = [];
      while (dn[i] === "\\" && /^[0-9a-fA-F]{2}$/.test(dn.slice(i + 1, i + 3))) {
        bytes.push(Number.parseInt(dn.slice(i + 1, i + 3), 16));
        i += 3;
      }
      i--;
      out += new TextDecoder().decode(new Uint8Array(bytes));
    } else if (i + 1 < dn.length) {
      out += dn[i + 1];
      i++;
    }
  }
  return out === "" ? undefined : out;
}

/**
 * Replaces `{name}` placeholders in a template with already-escaped values; unknown placeholders are left as
 * they are (options validation rejects them before this is ever called).
 *
 * @example fillTemplate("(uid={user})", { user: escapeFilterValue("a*") }) // "(uid=a\\2a)"
 */
export function fillTemplate(template: string, values: Readonly<Record<string, string>>): string {
  return template.replace(/\{(\w+)\}/g, (whole, key: string) => values[key] ?? whole);
}
