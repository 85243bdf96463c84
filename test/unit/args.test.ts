// Claim: the shared argv parser takes the vendor's flag styles and refuses typos with a did-you-mean.
import { expect, test } from "bun:test";
import { flagBool, flagList, flagString, parseArgs } from "../../src/cli/args.ts";

const specs = [
  { name: "broker-url", kind: "string", help: "" },
  { name: "external-pcoip-ip", kind: "list", help: "" },
  { name: "enable-security-gateway", kind: "boolean", help: "" },
  { name: "self-signed", kind: "boolean", help: "" },
] as const;

test("values, booleans, repeats and positionals", () => {
  const r = parseArgs(
    [
      "install",
      "--broker-url",
      "https://b",
      "--external-pcoip-ip=1.2.3.4",
      "--external-pcoip-ip",
      "2001:db8::1",
      "--enable-security-gateway=false",
      "--self-signed",
    ],
    specs,
  );
  expect(r.ok).toBe(true);
  if (!r.ok) return;
  expect(r.args.positional).toEqual(["install"]);
  expect(flagString(r.args, "broker-url")).toBe("https://b");
  expect(flagList(r.args, "external-pcoip-ip")).toEqual(["1.2.3.4", "2001:db8::1"]);
  expect(flagBool(r.args, "enable-security-gateway")).toBe(false);
  expect(flagBool(r.args, "self-signed")).toBe(true);
});

test("errors: unknown flag with did-you-mean, missing value, bad boolean", () => {
  expect(parseArgs(["--broker-ur", "x"], specs)).toEqual({
    ok: false,
    error: "unknown option --broker-ur (did you mean --broker-url?)",
  });
  expect(parseArgs(["--broker-url"], specs)).toEqual({ ok: false, error: "--broker-url needs a value" });
  expect(parseArgs(["--self-signed=maybe"], specs)).toEqual({
    ok: false,
    error: "--self-signed=maybe: must be true or false",
  });
});
