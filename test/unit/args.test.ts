// Claim: the shared argv parser takes the vendor's flag styles (--flag value, --flag=value, bare and =true|false
// booleans, repeated list flags), keeps positionals in order, and refuses typos, missing values, bad booleans and
// conflicting repeats with a message that says what to type instead.
import { describe, expect, test } from "bun:test";
import { type FlagSpec, flagBool, flagList, flagString, formatFlags, parseArgs } from "../../src/cli/args.ts";

const specs: FlagSpec[] = [
  { name: "broker-url", kind: "string", value: "URL", help: "upstream broker" },
  { name: "external-pcoip-ip", kind: "list", value: "IP", help: "public address" },
  { name: "enable-security-gateway", kind: "boolean", help: "relay" },
  { name: "self-signed", kind: "boolean", help: "generate" },
  { name: "help", kind: "boolean", help: "this text" },
];

function parsed(argv: string[]) {
  const r = parseArgs(argv, specs);
  if (!r.ok) throw new Error(r.error);
  return r.args;
}

function error(argv: string[]): string {
  const r = parseArgs(argv, specs);
  return r.ok ? "(parsed)" : r.error;
}

describe("accepted forms", () => {
  test("values, booleans, repeats and positionals together", () => {
    const a = parsed([
      "install",
      "--broker-url",
      "https://b",
      "--external-pcoip-ip=1.2.3.4",
      "extra",
      "--external-pcoip-ip",
      "2001:db8::1",
      "--enable-security-gateway=false",
      "--self-signed",
    ]);
    expect(a.positional).toEqual(["install", "extra"]);
    expect(flagString(a, "broker-url")).toBe("https://b");
    expect(flagList(a, "external-pcoip-ip")).toEqual(["1.2.3.4", "2001:db8::1"]);
    expect(flagBool(a, "enable-security-gateway")).toBe(false);
    expect(flagBool(a, "self-signed")).toBe(true);
  });

  test("boolean spellings (rows: argv → value)", () => {
    const rows: [string[], boolean][] = [
      [["--self-signed"], true],
      [["--self-signed=true"], true],
      [["--self-signed=TRUE"], true],
      [["--self-signed=1"], true],
      [["--self-signed=yes"], true],
      [["--self-signed=false"], false],
      [["--self-signed=0"], false],
      [["--self-signed=no"], false],
      [["--self-signed", "true"], true],
      [["--self-signed", "false"], false],
    ];
    for (const [argv, want] of rows) expect(flagBool(parsed(argv), "self-signed"), argv.join(" ")).toBe(want);
    // Only the words true/false are taken as the next word's value: anything else stays positional.
    expect(parsed(["--self-signed", "yes"]).positional).toEqual(["yes"]);
  });

  test("values may be empty, contain '=' or start with one dash", () => {
    expect(flagString(parsed(["--broker-url="]), "broker-url")).toBe("");
    expect(flagString(parsed(["--broker-url=https://b/?a=b"]), "broker-url")).toBe("https://b/?a=b");
    expect(flagString(parsed(["--broker-url", "-"]), "broker-url")).toBe("-");
  });

  test("absent flags read as undefined or an empty list", () => {
    const a = parsed([]);
    expect(flagString(a, "broker-url")).toBeUndefined();
    expect(flagBool(a, "self-signed")).toBeUndefined();
    expect(flagList(a, "external-pcoip-ip")).toEqual([]);
  });

  test("-- ends the flags; -h is --help; negative numbers are positional", () => {
    const a = parsed(["--", "--self-signed", "x"]);
    expect(a.positional).toEqual(["--self-signed", "x"]);
    expect(flagBool(a, "self-signed")).toBeUndefined();
    expect(flagBool(parsed(["-h"]), "help")).toBe(true);
    expect(parsed(["-5"]).positional).toEqual(["-5"]);
  });

  test("the same value twice is harmless", () => {
    expect(flagString(parsed(["--broker-url=https://b", "--broker-url", "https://b"]), "broker-url")).toBe(
      "https://b",
    );
  });
});

describe("refusals (rows: argv → message)", () => {
  const rows: [string[], string][] = [
    [["--broker-ur", "x"], "unknown option --broker-ur (did you mean --broker-url?)"],
    [["--Self-Signed"], "unknown option --Self-Signed (did you mean --self-signed?)"],
    [["--docker-compose"], "unknown option --docker-compose"],
    [["--broker-url"], "--broker-url needs a value (URL)"],
    [["--broker-url", "--self-signed"], "--broker-url needs a value (URL)"],
    [["--self-signed=maybe"], "--self-signed=maybe: must be true or false"],
    [
      ["--broker-url=https://a", "--broker-url=https://b"],
      '--broker-url is given twice ("https://a" and "https://b"): give it once',
    ],
    [["--self-signed", "--self-signed=false"], "--self-signed is given twice with different values"],
    [["-x"], "unknown option -x: options are spelled with two dashes (--name)"],
  ];
  for (const [argv, message] of rows) {
    test(argv.join(" "), () => {
      expect(error(argv)).toBe(message);
    });
  }
});

test("help text lists each flag with its value and whether it repeats", () => {
  const text = formatFlags(specs);
  expect(text).toContain("--broker-url URL");
  expect(text).toContain("--external-pcoip-ip IP (repeatable)");
  expect(text).toContain("--self-signed[=true|false]");
  expect(text.split("\n")).toHaveLength(specs.length);
});
