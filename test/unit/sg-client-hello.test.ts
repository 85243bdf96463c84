// Claim: the SNI reader finds the server name in any well-formed ClientHello however it is split across reads
// and TLS records, asks for exactly the bytes it still needs, and turns everything else (old formats, garbage,
// oversize, lying lengths) into a named refusal — never a throw.
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { parseClientHello } from "../../src/sg/client-hello.ts";

const u16 = (n: number) => [(n >> 8) & 0xff, n & 0xff];
const u24 = (n: number) => [(n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff];
const ascii = (s: string) => [...s].map((c) => c.charCodeAt(0));

/** server_name extension for one host_name (RFC 6066 §3). */
function serverNameExt(name: string): number[] {
  const host = ascii(name);
  return [
    ...[0x00, 0x00], //                       extension type: server_name (0)
    ...u16(2 + 3 + host.length), //           extension length
    ...u16(3 + host.length), //               server_name_list length
    0x00, //                                  name_type: host_name
    ...u16(host.length), //                   host_name length
    ...host, //                               host_name
  ];
}

/** supported_versions extension offering TLS 1.3 and 1.2 (a hello with extensions but no SNI). */
const SUPPORTED_VERSIONS = [
  ...[0x00, 0x2b], //                         extension type: supported_versions (43)
  ...u16(5), //                               extension length
  0x04, //                                    versions length
  ...[0x03, 0x04, 0x03, 0x03], //             TLS 1.3, TLS 1.2
];

/** A ClientHello handshake message (header included) with the given extensions block, or none at all. */
function clientHello(extensions: number[] | null): Uint8Array {
  const body = [
    ...[0x03, 0x03], //                       client_version: TLS 1.2 (1.3 rides in supported_versions)
    ...new Array(32).fill(0x11), //           random
    0x20, //                                  session_id length 32 (TLS 1.3 middlebox compatibility)
    ...new Array(32).fill(0x22), //           session_id
    ...u16(4), //                             cipher_suites length
    ...[0x13, 0x01, 0xc0, 0x2f], //           TLS_AES_128_GCM_SHA256, ECDHE_RSA_AES_128_GCM_SHA256
    0x01, //                                  compression_methods length
    0x00, //                                  null compression
    ...(extensions === null ? [] : [...u16(extensions.length), ...extensions]),
  ];
  return new Uint8Array([
    0x01, //                                  msg_type: client_hello
    ...u24(body.length), //                   length
    ...body,
  ]);
}

/** Wraps handshake bytes in TLS records, cutting the fragment at the given offsets. */
function records(
  handshake: Uint8Array,
  cuts: number[] = [],
  version: [number, number] = [0x03, 0x01],
): Uint8Array {
  const out: number[] = [];
  const edges = [0, ...cuts, handshake.length];
  for (let i = 0; i < edges.length - 1; i++) {
    const frag = handshake.subarray(edges[i]!, edges[i + 1]!);
    out.push(
      0x16, //                                content type: handshake
      ...version, //                          legacy record version (3.1 is what real clients send)
      ...u16(frag.length), //                 fragment length
      ...frag,
    );
  }
  return new Uint8Array(out);
}

const HELLO = clientHello([...serverNameExt("Agent-7.Corp.Example"), ...SUPPORTED_VERSIONS]);

describe("well-formed hellos", () => {
  test("one record: the SNI, lower-cased", () => {
    expect(parseClientHello(records(HELLO))).toEqual({ kind: "hello", sni: "agent-7.corp.example" });
  });

  test("old record versions: SSL 3.0 and TLS 1.0 record layers are read", () => {
    expect(parseClientHello(records(HELLO, [], [0x03, 0x00]))).toMatchObject({ sni: "agent-7.corp.example" });
    expect(parseClientHello(records(HELLO, [], [0x03, 0x03]))).toMatchObject({ sni: "agent-7.corp.example" });
  });

  test("the SNI split across two records", () => {
    const inName = HELLO.length - SUPPORTED_VERSIONS.length - 8; // a cut inside "...Corp.Example"
    expect(parseClientHello(records(HELLO, [inName]))).toEqual({
      kind: "hello",
      sni: "agent-7.corp.example",
    });
  });

  test("the handshake header itself split across records, and a hello in many small records", () => {
    expect(parseClientHello(records(HELLO, [2]))).toMatchObject({ sni: "agent-7.corp.example" });
    const cuts = Array.from({ length: Math.floor(HELLO.length / 7) }, (_, i) => (i + 1) * 7);
    expect(parseClientHello(records(HELLO, cuts))).toMatchObject({ sni: "agent-7.corp.example" });
  });

  test("no SNI: extensions without server_name, and a hello with no extensions at all", () => {
    expect(parseClientHello(records(clientHello(SUPPORTED_VERSIONS)))).toEqual({
      kind: "hello",
      sni: undefined,
    });
    expect(parseClientHello(records(clientHello(null)))).toEqual({ kind: "hello", sni: undefined });
  });

  test("bytes after the hello (the next records) do not matter", () => {
    const wire = records(HELLO);
    const more = new Uint8Array([...wire, 0x14, 0x03, 0x03, 0x00, 0x01, 0x01]); // change_cipher_spec
    expect(parseClientHello(more)).toMatchObject({ sni: "agent-7.corp.example" });
  });
});

describe("incomplete input asks for what is missing", () => {
  test("byte at a time: every prefix needs more, never more than the rest, until the last byte", () => {
    const wire = records(HELLO, [40, 41, 100]); // four records, one of them 1 byte
    for (let n = 0; n < wire.length; n++) {
      const r = parseClientHello(wire.subarray(0, n));
      expect(r.kind).toBe("need");
      if (r.kind === "need") {
        expect(r.need).toBeGreaterThan(0);
        expect(n + r.need).toBeLessThanOrEqual(wire.length);
      }
    }
    expect(parseClientHello(wire)).toMatchObject({ sni: "agent-7.corp.example" });
  });

  test("a short record length: the record ends before the hello, the next record is awaited", () => {
    // record length 0x0010 although the hello is longer: the rest must come in further records
    const wire = new Uint8Array([0x16, 0x03, 0x01, ...u16(16), ...HELLO.subarray(0, 16)]);
    expect(parseClientHello(wire)).toEqual({ kind: "need", need: 5 });
  });
});

describe("refusals", () => {
  test("plain HTTP and SSH are not TLS", () => {
    expect(parseClientHello(new Uint8Array(ascii("GET / HTTP/1.1\r\n")))).toEqual({
      kind: "invalid",
      invalid: "not_tls",
    });
    expect(parseClientHello(new Uint8Array(ascii("SSH-2.0-OpenSSH_9.6\r\n")))).toMatchObject({
      invalid: "not_tls",
    });
  });

  test("an SSLv2-format hello", () => {
    const v2 = new Uint8Array([
      ...[0x80, 0x2e], //                     2-byte header, high bit set: length 46
      0x01, //                                msg_type: CLIENT-HELLO
      ...[0x00, 0x02], //                     version SSL 2.0
      ...new Array(41).fill(0), //            cipher specs, session id, challenge lengths and data
    ]);
    expect(parseClientHello(v2)).toEqual({ kind: "invalid", invalid: "sslv2_hello" });
  });

  test("record versions outside 3.0–3.4", () => {
    const wire = records(HELLO, [], [0x02, 0x00]);
    expect(parseClientHello(wire)).toMatchObject({ invalid: "bad_record_version" });
    expect(parseClientHello(records(HELLO, [], [0x03, 0x05]))).toMatchObject({
      invalid: "bad_record_version",
    });
  });

  test("a zero-length record and a record over 16384 bytes", () => {
    expect(parseClientHello(new Uint8Array([0x16, 0x03, 0x01, 0x00, 0x00]))).toMatchObject({
      invalid: "bad_record_length",
    });
    expect(parseClientHello(new Uint8Array([0x16, 0x03, 0x01, 0x40, 0x01]))).toMatchObject({
      invalid: "bad_record_length",
    });
  });

  test("a handshake that is not a ClientHello", () => {
    // record header | msg_type 2 (server_hello) ...
    const wire = new Uint8Array([0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00]);
    expect(parseClientHello(wire)).toMatchObject({ invalid: "not_client_hello" });
  });

  test("an alert record in the middle of the hello", () => {
    const first = records(HELLO.subarray(0, 30));
    const alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]; // alert: fatal, handshake_failure
    expect(parseClientHello(new Uint8Array([...first, ...alert]))).toMatchObject({
      invalid: "interleaved_record",
    });
  });

  test("a hello over the 16 KiB peek limit, however it is sent", () => {
    const padding = [0x00, 0x15, ...u16(17_000), ...new Array(17_000).fill(0)]; // padding extension (21)
    const huge = clientHello([...serverNameExt("agent.example"), ...padding]);
    expect(parseClientHello(records(huge, [16_000]))).toMatchObject({ invalid: "too_large" });
    // Known from the first 9 bytes: a declared length of 16 MiB is refused without waiting for it.
    const liar = new Uint8Array([0x16, 0x03, 0x01, 0x40, 0x00, 0x01, ...u24(0xffffff)]);
    expect(parseClientHello(liar)).toMatchObject({ invalid: "too_large" });
    // A narrower limit applies too.
    expect(parseClientHello(records(HELLO), 100)).toMatchObject({ invalid: "too_large" });
  });

  test("lengths inside the hello that run past its end", () => {
    const broken = Uint8Array.from(HELLO);
    broken[4 + 2 + 32] = 0x40; // session_id length 64 (> 32)
    expect(parseClientHello(records(broken))).toMatchObject({ invalid: "malformed" });
    const short = clientHello([...serverNameExt("agent.example")]);
    const cut = Uint8Array.from(short);
    cut[3] = cut[3]! - 4; // handshake length 4 shorter than its content: extensions overrun the message
    expect(parseClientHello(records(cut.subarray(0, cut.length - 4)))).toMatchObject({
      invalid: "malformed",
    });
  });

  test("an SNI with control or non-ASCII bytes", () => {
    const evil = clientHello(serverNameExt('agent\n{"x":1}'));
    expect(parseClientHello(records(evil))).toMatchObject({ invalid: "bad_sni" });
    const utf8 = clientHello(serverNameExt("agënt.example"));
    expect(parseClientHello(records(utf8))).toMatchObject({ invalid: "bad_sni" });
  });

  test("garbage never throws and never claims a hello", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
        const r = parseClientHello(bytes);
        expect(["need", "invalid", "hello"]).toContain(r.kind);
      }),
      { numRuns: 3000 },
    );
    // Well-formed framing around random hello bodies: still a value, never a throw.
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 400 }), (body) => {
        const msg = new Uint8Array([0x01, ...u24(body.length), ...body]);
        const r = parseClientHello(records(msg));
        expect(r.kind === "hello" || r.kind === "invalid").toBe(true);
      }),
      { numRuns: 3000 },
    );
  });
});
