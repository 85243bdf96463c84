// Claim: every pcoip-client example of PROTOCOL.md §2 decodes to the expected typed value and re-encodes to a
// document that decodes the same; real-broker quirks (§10) parse; the envelope rules of §2.1 refuse bad requests
// as typed errors; a relay passes unknown elements through and changes only the fields it overrides.
import { describe, expect, test } from "bun:test";
import {
  buildAllocateResourceResp,
  buildAuthenticateResp,
  buildBrokerResponse,
  buildByeResp,
  buildClientRequest,
  buildErrorResp,
  buildGetResourceListResp,
  buildHelloResp,
  isCompleteTarget,
  parseBrokerResponse,
  parseClientRequest,
} from "../../src/protocol/broker.ts";
import { result } from "../../src/protocol/results.ts";
import type {
  AllocateResourceResp,
  AuthenticateResp,
  BrokerResponse,
  ClientRequest,
  GetResourceListResp,
  HelloResp,
  ParseResult,
  ProductInfo,
} from "../../src/protocol/types.ts";
import { child, parseXml, XML_DECLARATION } from "../../src/protocol/xml.ts";

// ---- the examples of PROTOCOL.md §2, verbatim ------------------------------------------------------------

const HELLO = `<?xml version="1.0" encoding="UTF-8"?>
<pcoip-client version="2.1">
  <hello>
    <client-info>
      <product-name>Teradici PCoIP Desktop Client</product-name>
      <product-version>23.01.2</product-version>
      <platform>Ubuntu 22.04 linux x86_64</platform>
      <locale>en_US</locale>
      <hostname>laptop-17</hostname>
      <serial-number>02:42:ac:11:00:02</serial-number>
      <device-name>laptop-17</device-name>
      <pcoip-unique-id>02:42:ac:11:00:02</pcoip-unique-id>
    </client-info>
    <caps>
      <cap>CAP_NO_AUTHENTICATION</cap>
      <cap>CAP_DIALOG_AUTHENTICATION</cap>
    </caps>
    <server-address>
      <ip-address>203.0.113.10</ip-address>
      <hostname>cm.example.net</hostname>
    </server-address>
  </hello>
</pcoip-client>`;

const HELLO_RESP = `<?xml version="1.0" encoding="UTF-8"?>
<pcoip-client version="2.1">
  <hello-resp>
    <brokers-info>
      <broker-info>
        <product-name>Example Broker</product-name>
        <product-version>1.0.0</product-version>
        <platform>linux</platform>
        <locale>en_US</locale>
        <ip-address>10.0.0.5</ip-address>
        <hostname>broker.corp.example</hostname>
      </broker-info>
    </brokers-info>
    <pcm-info>
      <product-name>Example Connection Manager</product-name>
      <product-version>0.1.0</product-version>
      <platform>linux</platform>
      <ip-address>10.0.1.7</ip-address>
      <hostname>cm.example.net</hostname>
    </pcm-info>
    <next-authentication>
      <authentication-methods>
        <method>AUTHENTICATE_VIA_PASSWORD</method>
      </authentication-methods>
      <domains>
        <domain>corp.example</domain>
      </domains>
    </next-authentication>
  </hello-resp>
</pcoip-client>`;

const AUTHENTICATE = `<pcoip-client version="2.1">
  <authenticate method="password">
    <username>alice</username>
    <password>correct horse</password>
    <domain>corp.example</domain>
  </authenticate>
</pcoip-client>`;

const AUTHENTICATE_RESP = `<pcoip-client version="2.1">
  <authenticate-resp method="password">
    <result>
      <result-id>AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD</result-id>
      <result-str>User authentication failed. Please re-enter username, password, and/or domain.</result-str>
    </result>
  </authenticate-resp>
</pcoip-client>`;

// §2.4 gives the request only in prose (protocols/protocol PCOIP, resource-types/resource-type DESKTOP).
const GET_RESOURCE_LIST = `<pcoip-client version="2.1">
  <get-resource-list>
    <protocols><protocol>PCOIP</protocol></protocols>
    <resource-types><resource-type>DESKTOP</resource-type></resource-types>
  </get-resource-list>
</pcoip-client>`;

const GET_RESOURCE_LIST_RESP = `<pcoip-client version="2.1">
  <get-resource-list-resp>
    <result>
      <result-id>LIST_SUCCESSFUL</result-id>
      <result-str>Successfully retrieved the list of resources</result-str>
    </result>
    <resource>
      <resource-name>CAD workstation 3</resource-name>
      <resource-id>ws-0003</resource-id>
      <resource-type session-type="VDI">DESKTOP</resource-type>
      <resource-state>UNKNOWN</resource-state>
      <protocols>
        <protocol is-default="true">PCOIP</protocol>
      </protocols>
    </resource>
  </get-resource-list-resp>
</pcoip-client>`;

const ALLOCATE_RESOURCE = `<pcoip-client version="2.1">
  <allocate-resource>
    <resource-id>ws-0003</resource-id>
    <protocol>PCOIP</protocol>
    <client-info>
      <ip-address>192.168.1.23</ip-address>
      <mac-address>02:42:ac:11:00:02</mac-address>
    </client-info>
  </allocate-resource>
</pcoip-client>`;

const CONNECT_TAG = `SCS1${"Ab+/".repeat(25)}`;
const ALLOCATE_RESOURCE_RESP = `<pcoip-client version="2.1">
  <allocate-resource-resp>
    <result>
      <result-id>ALLOC_SUCCESSFUL</result-id>
      <result-str>Successfully allocated remote workstation</result-str>
    </result>
    <target>
      <ip-address>203.0.113.10</ip-address>
      <hostname>ws-0003.corp.example</hostname>
      <sni>ws-0003.corp.example</sni>
      <port>4172</port>
      <session-id>2305843009213693957</session-id>
      <connect-tag>${CONNECT_TAG}</connect-tag>
    </target>
    <resource-id>ws-0003</resource-id>
    <protocol>PCOIP</protocol>
  </allocate-resource-resp>
</pcoip-client>`;

const BYE = "<pcoip-client version='2.1'><bye/></pcoip-client>";

// ---- helpers ----------------------------------------------------------------------------------------------

function must<T>(r: ParseResult<T>): T {
  if (!r.ok) throw new Error(`expected a message, got ${r.error.kind}: ${r.error.detail}`);
  return r.msg;
}

/** A message without `node`, member by member of a union. */
type Typed<T> = T extends unknown ? Omit<T, "node"> : never;

/** The typed fields only: `node` is checked where it matters. */
function typed<T extends { node?: unknown }>(m: T): Typed<T> {
  const { node: _node, ...rest } = m;
  return rest as Typed<T>;
}

function errorOf<T>(r: ParseResult<T>) {
  if (r.ok) throw new Error("expected an error, got a message");
  return r.error;
}

const BROKER_INFO: ProductInfo = {
  productName: "Example Broker",
  productVersion: "1.0.0",
  platform: "linux",
  locale: "en_US",
  ipAddress: "10.0.0.5",
  hostname: "broker.corp.example",
};
const PCM_INFO: ProductInfo = {
  productName: "Example Connection Manager",
  productVersion: "0.1.0",
  platform: "linux",
  ipAddress: "10.0.1.7",
  hostname: "cm.example.net",
};

// ---- golden: requests -------------------------------------------------------------------------------------

describe("golden requests (PROTOCOL.md §2.2–2.6)", () => {
  const cases: [string, string, Typed<ClientRequest>][] = [
    [
      "hello",
      HELLO,
      {
        op: "hello",
        clientInfo: {
          productName: "Teradici PCoIP Desktop Client",
          productVersion: "23.01.2",
          platform: "Ubuntu 22.04 linux x86_64",
          locale: "en_US",
          hostname: "laptop-17",
          serialNumber: "02:42:ac:11:00:02",
          deviceName: "laptop-17",
          pcoipUniqueId: "02:42:ac:11:00:02",
        },
        caps: ["CAP_NO_AUTHENTICATION", "CAP_DIALOG_AUTHENTICATION"],
        serverAddress: { ipAddress: "203.0.113.10", hostname: "cm.example.net" },
        isProbe: false,
      },
    ],
    [
      "authenticate",
      AUTHENTICATE,
      {
        op: "authenticate",
        method: "password",
        username: "alice",
        password: "correct horse",
        domain: "corp.example",
      },
    ],
    [
      "get-resource-list",
      GET_RESOURCE_LIST,
      { op: "get-resource-list", protocols: ["PCOIP"], resourceTypes: ["DESKTOP"] },
    ],
    [
      "allocate-resource",
      ALLOCATE_RESOURCE,
      {
        op: "allocate-resource",
        resourceId: "ws-0003",
        protocol: "PCOIP",
        clientIpAddress: "192.168.1.23",
        clientMacAddress: "02:42:ac:11:00:02",
      },
    ],
    ["bye", BYE, { op: "bye" }],
  ];

  for (const [name, xml, expected] of cases) {
    test(`${name}: parse gives the typed value; build → parse gives it again, node included`, () => {
      const msg = must(parseClientRequest(xml));
      expect(typed(msg)).toEqual(expected);
      for (const root of ["pcoip-client", "pcoip-broker"] as const) {
        const rebuilt = buildClientRequest(msg, root);
        expect(rebuilt.startsWith(`${XML_DECLARATION}\n<${root} version="2.1">`)).toBe(true);
        expect(must(parseClientRequest(rebuilt, { roots: [root] }))).toEqual(msg);
      }
    });
  }

  test("the probe hello (QueryBrokerClient) is flagged", () => {
    const probe = HELLO.replace("Teradici PCoIP Desktop Client", "QueryBrokerClient");
    const msg = must(parseClientRequest(probe));
    expect(msg.op === "hello" && msg.isProbe).toBe(true);
  });

  test("missing optional fields read as empty strings and empty lists", () => {
    const msg = must(parseClientRequest("<pcoip-client version='2.1'><hello/></pcoip-client>"));
    expect(typed(msg)).toEqual({
      op: "hello",
      clientInfo: {
        productName: "",
        productVersion: "",
        platform: "",
        locale: "",
        hostname: "",
        serialNumber: "",
        deviceName: "",
        pcoipUniqueId: "",
      },
      caps: [],
      serverAddress: { ipAddress: "", hostname: "" },
      isProbe: false,
    });
    expect(msg.node).toEqual({});
  });

  test("unknown child elements are ignored (and kept in node)", () => {
    const xml = AUTHENTICATE.replace(
      "<domain>",
      "<x-vendor:otp xmlns:x-vendor='urn:x'>123456</x-vendor:otp><domain>",
    );
    const msg = must(parseClientRequest(xml));
    expect(msg.op === "authenticate" && msg.password).toBe("correct horse");
    expect(msg.node["x-vendor:otp"]).toEqual({ "#text": "123456", "@_xmlns:x-vendor": "urn:x" });
  });
});

// ---- golden: responses ------------------------------------------------------------------------------------

describe("golden responses (PROTOCOL.md §2.2–2.6)", () => {
  const cases: [string, string, BrokerResponse][] = [
    [
      "hello-resp",
      HELLO_RESP,
      {
        op: "hello-resp",
        brokers: [BROKER_INFO],
        pcm: PCM_INFO,
        authenticationMethods: ["AUTHENTICATE_VIA_PASSWORD"],
        domains: ["corp.example"],
      },
    ],
    [
      "authenticate-resp",
      AUTHENTICATE_RESP,
      {
        op: "authenticate-resp",
        method: "password",
        result: result("AUTH_FAILED_UNKNOWN_USERNAME_OR_PASSWORD"),
      },
    ],
    [
      "get-resource-list-resp",
      GET_RESOURCE_LIST_RESP,
      {
        op: "get-resource-list-resp",
        result: result("LIST_SUCCESSFUL"),
        resources: [
          {
            resourceName: "CAD workstation 3",
            resourceId: "ws-0003",
            resourceType: "DESKTOP",
            sessionType: "VDI",
            resourceState: "UNKNOWN",
            protocols: [{ name: "PCOIP", isDefault: true }],
          },
        ],
      },
    ],
    [
      "allocate-resource-resp",
      ALLOCATE_RESOURCE_RESP,
      {
        op: "allocate-resource-resp",
        result: result("ALLOC_SUCCESSFUL"),
        target: {
          ipAddress: "203.0.113.10",
          hostname: "ws-0003.corp.example",
          sni: "ws-0003.corp.example",
          port: 4172,
          sessionId: "2305843009213693957",
          connectTag: CONNECT_TAG,
        },
        resourceId: "ws-0003",
        protocol: "PCOIP",
      },
    ],
    ["bye-resp", "<pcoip-client version='2.1'><bye-resp/></pcoip-client>", { op: "bye-resp" }],
  ];

  for (const [name, xml, expected] of cases) {
    test(`${name}: parse gives the typed value; the built-in build and the relay build both parse back`, () => {
      const msg = must(parseBrokerResponse(xml));
      expect(typed(msg)).toEqual(expected);
      // Built-in broker: from typed fields alone.
      const fresh = buildBrokerResponse(expected);
      expect(fresh.startsWith(`${XML_DECLARATION}\n<pcoip-client version="2.1"><${name}`)).toBe(true);
      expect(typed(must(parseBrokerResponse(fresh)))).toEqual(expected);
      // Relay: from the parsed message, node and all.
      expect(must(parseBrokerResponse(buildBrokerResponse(msg)))).toEqual(msg);
    });
  }

  test("the per-operation builders write the PROTOCOL.md layout exactly", () => {
    const list = `${XML_DECLARATION}\n<pcoip-client version="2.1"><get-resource-list-resp><result><result-id>LIST_SUCCESSFUL</result-id><result-str>Successfully retrieved the list of resources</result-str></result><resource><resource-name>CAD workstation 3</resource-name><resource-id>ws-0003</resource-id><resource-type session-type="VDI">DESKTOP</resource-type><resource-state>UNKNOWN</resource-state><protocols><protocol is-default="true">PCOIP</protocol></protocols></resource></get-resource-list-resp></pcoip-client>`;
    const parsed = must(parseBrokerResponse(GET_RESOURCE_LIST_RESP)) as GetResourceListResp;
    expect(buildGetResourceListResp(typed(parsed) as GetResourceListResp)).toBe(list);
    expect(buildByeResp()).toBe(`${XML_DECLARATION}\n<pcoip-client version="2.1"><bye-resp/></pcoip-client>`);
    const auth = buildAuthenticateResp({
      op: "authenticate-resp",
      method: "password",
      result: result("AUTH_SUCCESSFUL_AND_COMPLETE"),
    });
    expect(auth).toBe(
      `${XML_DECLARATION}\n<pcoip-client version="2.1"><authenticate-resp method="password"><result><result-id>AUTH_SUCCESSFUL_AND_COMPLETE</result-id><result-str>User authentication successful</result-str></result></authenticate-resp></pcoip-client>`,
    );
  });

  test("a failed allocation carries only a result, no target", () => {
    const xml = buildAllocateResourceResp({
      op: "allocate-resource-resp",
      result: result("ALLOC_FAILED_NO_LICENSE"),
    });
    expect(xml).not.toContain("<target");
    const msg = must(parseBrokerResponse(xml));
    expect(msg.op === "allocate-resource-resp" && msg.target).toBeUndefined();
  });

  test("an empty resource list, no domains, an incomplete-auth next step", () => {
    const empty: GetResourceListResp = {
      op: "get-resource-list-resp",
      result: result("LIST_FAILED_NO_ENTITLEMENT"),
      resources: [],
    };
    expect(typed(must(parseBrokerResponse(buildGetResourceListResp(empty))))).toEqual(empty);
    const hello: HelloResp = { op: "hello-resp", brokers: [], authenticationMethods: [], domains: [] };
    expect(buildHelloResp(hello)).toContain("<domains/>");
    expect(typed(must(parseBrokerResponse(buildHelloResp(hello))))).toEqual(hello);
    const step: AuthenticateResp = {
      op: "authenticate-resp",
      result: result("AUTH_SUCCESSFUL_AND_INCOMPLETE"),
      nextAuthenticationMethods: ["AUTHENTICATE_VIA_DIALOG"],
    };
    expect(typed(must(parseBrokerResponse(buildAuthenticateResp(step))))).toEqual(step);
  });

  test("error-resp has the SPEC §3 layout and escapes its text", () => {
    const xml = buildErrorResp({ resultId: "PROTOCOL_ERROR_MALFORMED_REQUEST", resultStr: "a < b & c" });
    expect(xml).toBe(
      `${XML_DECLARATION}\n<pcoip-client version="2.1"><error-resp><result><result-id>PROTOCOL_ERROR_MALFORMED_REQUEST</result-id><result-str>a &lt; b &amp; c</result-str></result></error-resp></pcoip-client>`,
    );
    expect(parseXml(xml).ok).toBe(true);
  });
});

// ---- real broker quirks (§10) -----------------------------------------------------------------------------

describe("what a real broker sends (PROTOCOL.md §10)", () => {
  test("single-quoted lower-case declaration, newline before the root, `<bye-resp />`", () => {
    const xml =
      "<?xml version='1.0' encoding='utf-8'?>\n<pcoip-client version=\"2.1\"><bye-resp /></pcoip-client>\n";
    expect(typed(must(parseBrokerResponse(xml)))).toEqual({ op: "bye-resp" });
  });

  test("broker-info/ip-address N/A is taken as is", () => {
    const xml = HELLO_RESP.replace("<ip-address>10.0.0.5</ip-address>", "<ip-address>N/A</ip-address>");
    const msg = must(parseBrokerResponse(xml));
    expect(msg.op === "hello-resp" && msg.brokers[0]?.ipAddress).toBe("N/A");
  });

  test("resource ids that are list positions stay strings, verbatim", () => {
    const xml = GET_RESOURCE_LIST_RESP.replace(
      "<resource-id>ws-0003</resource-id>",
      "<resource-id>0</resource-id>",
    );
    const msg = must(parseBrokerResponse(xml));
    expect(msg.op === "get-resource-list-resp" && msg.resources[0]?.resourceId).toBe("0");
  });

  test("a failure with the broker's own result id and no target (misspelling included) passes through", () => {
    const xml = `<?xml version='1.0' encoding='utf-8'?>
<pcoip-client version="2.1"><allocate-resource-resp><result><result-id>FAILED_ANOTHER_SESION_STARTED</result-id><result-str>busy</result-str></result></allocate-resource-resp></pcoip-client>`;
    const msg = must(parseBrokerResponse(xml));
    expect(typed(msg)).toEqual({
      op: "allocate-resource-resp",
      result: { resultId: "FAILED_ANOTHER_SESION_STARTED", resultStr: "busy" },
    });
    expect(isCompleteTarget(msg.op === "allocate-resource-resp" ? msg.target : undefined)).toBe(false);
  });

  test("replies under a pcoip-broker root are accepted; other roots and a non-PCoIP error body are not", () => {
    expect(must(parseBrokerResponse("<pcoip-broker version='2.1'><bye-resp/></pcoip-broker>")).op).toBe(
      "bye-resp",
    );
    const body = "<error><title>500 Internal Server Error</title><description>x</description></error>";
    expect(errorOf(parseBrokerResponse(body)).kind).toBe("wrong_root");
    expect(errorOf(parseBrokerResponse("<html><body>502</body></html>")).kind).toBe("wrong_root");
  });

  test("a response without result/result-id, or with a port that is not a number, is invalid_message", () => {
    const noResult = "<pcoip-client version='2.1'><authenticate-resp method='password'/></pcoip-client>";
    expect(errorOf(parseBrokerResponse(noResult))).toMatchObject({
      kind: "invalid_message",
      operation: "authenticate-resp",
    });
    const badPort = ALLOCATE_RESOURCE_RESP.replace("<port>4172</port>", "<port>http</port>");
    expect(errorOf(parseBrokerResponse(badPort)).kind).toBe("invalid_message");
    const bigPort = ALLOCATE_RESOURCE_RESP.replace("<port>4172</port>", "<port>65536</port>");
    expect(errorOf(parseBrokerResponse(bigPort)).kind).toBe("invalid_message");
  });

  test("an incomplete target (no connect-tag, no port) parses, and is reported incomplete", () => {
    const xml = ALLOCATE_RESOURCE_RESP.replace(`<connect-tag>${CONNECT_TAG}</connect-tag>`, "").replace(
      "<port>4172</port>",
      "",
    );
    const msg = must(parseBrokerResponse(xml)) as AllocateResourceResp;
    expect(msg.target).toMatchObject({ ipAddress: "203.0.113.10", port: 0, connectTag: "" });
    expect(isCompleteTarget(msg.target)).toBe(false);
    const full = must(parseBrokerResponse(ALLOCATE_RESOURCE_RESP)) as AllocateResourceResp;
    expect(isCompleteTarget(full.target)).toBe(true);
  });
});

// ---- envelope refusals (§2.1) -----------------------------------------------------------------------------

describe("requests refused by the envelope rules (PROTOCOL.md §2.1), as values", () => {
  test("wrong root", () => {
    expect(errorOf(parseClientRequest("<pcoip-agent version='1.0'><bye/></pcoip-agent>")).kind).toBe(
      "wrong_root",
    );
    expect(errorOf(parseClientRequest("<pcoip-broker version='2.1'><bye/></pcoip-broker>")).kind).toBe(
      "wrong_root",
    );
    expect(
      must(
        parseClientRequest("<pcoip-broker version='2.1'><bye/></pcoip-broker>", { roots: ["pcoip-broker"] }),
      ).op,
    ).toBe("bye");
  });

  test("no version attribute", () => {
    const e = errorOf(parseClientRequest("<pcoip-client><bye/></pcoip-client>"));
    expect(e.kind).toBe("wrong_root");
    expect(e.detail).toContain("version");
  });

  test("zero operations", () => {
    expect(errorOf(parseClientRequest("<pcoip-client version='2.1'/>")).kind).toBe("no_operation");
    expect(errorOf(parseClientRequest("<pcoip-client version='2.1'>  text only  </pcoip-client>")).kind).toBe(
      "no_operation",
    );
  });

  test("two operations, different or the same", () => {
    expect(
      errorOf(parseClientRequest("<pcoip-client version='2.1'><hello/><bye/></pcoip-client>")).kind,
    ).toBe("invalid_message");
    expect(errorOf(parseClientRequest("<pcoip-client version='2.1'><bye/><bye/></pcoip-client>")).kind).toBe(
      "invalid_message",
    );
  });

  test("an unknown operation names it", () => {
    const e = errorOf(parseClientRequest("<pcoip-client version='2.1'><get-desktops/></pcoip-client>"));
    expect(e).toMatchObject({ kind: "unknown_operation", operation: "get-desktops" });
    const long = `x${"y".repeat(5000)}`;
    const e2 = errorOf(parseClientRequest(`<pcoip-client version='2.1'><${long}/></pcoip-client>`));
    expect(e2.operation?.length).toBeLessThanOrEqual(65);
    expect(e2.detail.length).toBeLessThan(200);
  });

  test("the vendor's dummy POST body, an empty body and garbage are errors, not throws", () => {
    expect(errorOf(parseClientRequest('<?xml version="1.0" encoding="UTF-8"?>')).kind).toBe("not_xml");
    expect(errorOf(parseClientRequest("")).kind).toBe("not_xml");
    expect(errorOf(parseClientRequest('{"json": true}')).kind).toBe("not_xml");
  });

  test("a DOCTYPE in a request is forbidden_markup; an oversize request is too_large", () => {
    expect(errorOf(parseClientRequest(`<!DOCTYPE x>${BYE}`)).kind).toBe("forbidden_markup");
    const big = AUTHENTICATE.replace("correct horse", "p".repeat(70000));
    expect(errorOf(parseClientRequest(big)).kind).toBe("too_large");
  });
});

// ---- escaping -----------------------------------------------------------------------------------------------

describe("escaping and strings", () => {
  const exotic = `<>&"' ]]> & &amp; </password>`;

  test("an exotic password survives buildClientRequest → parseClientRequest", () => {
    const req: ClientRequest = {
      op: "authenticate",
      method: "password",
      username: "alice",
      password: exotic,
      domain: "",
      node: {},
    };
    const xml = buildClientRequest(req);
    expect(xml).not.toContain("]]>");
    const back = must(parseClientRequest(xml));
    expect(back.op === "authenticate" && back.password).toBe(exotic);
  });

  test("the same password sent by a client with entities and CDATA decodes the same", () => {
    const doc = (pw: string) =>
      `<pcoip-client version='2.1'><authenticate method='password'><username>a</username><password>${pw}</password><domain/></authenticate></pcoip-client>`;
    const escaped = "&lt;&gt;&amp;&quot;&apos; ]]&gt; &amp; &amp;amp; &lt;/password&gt;";
    const viaCdata = `<![CDATA[<>&"' ]]]]><![CDATA[> & &amp; </password>]]>`;
    for (const pw of [escaped, viaCdata]) {
      const m = must(parseClientRequest(doc(pw)));
      expect(m.op === "authenticate" && m.password).toBe(exotic);
    }
  });

  test("numeric-looking values stay strings, passwords keep surrounding spaces", () => {
    const xml = AUTHENTICATE.replace("correct horse", "0012")
      .replace("alice", "007")
      .replace("corp.example", "1e3");
    const m = must(parseClientRequest(xml));
    expect(typed(m)).toEqual({
      op: "authenticate",
      method: "password",
      username: "007",
      password: "0012",
      domain: "1e3",
    });
    const spaced = must(parseClientRequest(AUTHENTICATE.replace("correct horse", " pass ")));
    expect(spaced.op === "authenticate" && spaced.password).toBe(" pass ");
  });
});

// ---- relay ----------------------------------------------------------------------------------------------------

describe("relay (upstream broker mode)", () => {
  test("hello goes upstream under pcoip-broker with pcm-info added and unknown elements kept", () => {
    const xml = HELLO.replace("</caps>", "</caps><x-ext a='1'>keep</x-ext>");
    const hello = must(parseClientRequest(xml));
    const up = buildClientRequest(hello, "pcoip-broker", { pcmInfo: PCM_INFO });
    const seen = must(parseClientRequest(up, { roots: ["pcoip-broker"] }));
    expect(typed(seen)).toEqual(typed(hello));
    expect(seen.node["x-ext"]).toEqual({ "#text": "keep", "@_a": "1" });
    expect(seen.node["pcm-info"]).toEqual({
      "product-name": "Example Connection Manager",
      "product-version": "0.1.0",
      platform: "linux",
      "ip-address": "10.0.1.7",
      hostname: "cm.example.net",
    });
  });

  test("a dialog authenticate is relayed untouched: no empty username/password/domain appear", () => {
    const dialog =
      "<pcoip-client version='2.1'><authenticate method='dialog'><answer>123456</answer></authenticate></pcoip-client>";
    const up = buildClientRequest(must(parseClientRequest(dialog)), "pcoip-client");
    expect(up).toBe(
      `${XML_DECLARATION}\n<pcoip-client version="2.1"><authenticate method="dialog"><answer>123456</answer></authenticate></pcoip-client>`,
    );
  });

  test("allocate-resource-resp: overriding target ip-address and port changes only those two", () => {
    const xml = ALLOCATE_RESOURCE_RESP.replace(
      "</target>",
      "<x-vendor v='1'>kept</x-vendor></target>",
    ).replace("<protocol>PCOIP</protocol>", "<protocol>PCOIP</protocol><x-extra/>");
    const resp = must(parseBrokerResponse(xml)) as AllocateResourceResp;
    const out = buildAllocateResourceResp({
      ...resp,
      target: { ...resp.target!, ipAddress: "198.51.100.9", port: 4173 },
    });
    const back = must(parseBrokerResponse(out)) as AllocateResourceResp;
    expect(back.target).toEqual({ ...resp.target!, ipAddress: "198.51.100.9", port: 4173 });
    expect(back.result).toEqual(resp.result);
    expect(child(back.node, "target")?.["x-vendor"]).toEqual({
      "#text": "kept",
      "@_v": "1",
    });
    expect(back.node?.["x-extra"]).toBe("");
    // Exactly two values differ from what the broker sent.
    const before = buildAllocateResourceResp(resp);
    expect(out.replace("198.51.100.9", "203.0.113.10").replace(">4173<", ">4172<")).toBe(before);
  });

  test("hello-resp: the CM's pcm-info replaces the broker's; dropping an optional typed field drops its element", () => {
    const resp = must(parseBrokerResponse(HELLO_RESP)) as HelloResp;
    const mine: ProductInfo = { ...PCM_INFO, productName: "pcoip-cmsg" };
    const out = must(parseBrokerResponse(buildHelloResp({ ...resp, pcm: mine }))) as HelloResp;
    expect(out.pcm).toEqual(mine);
    expect(out.brokers).toEqual(resp.brokers);
    const without = must(parseBrokerResponse(buildHelloResp({ ...resp, pcm: undefined }))) as HelloResp;
    expect(without.pcm).toBeUndefined();
  });

  test("an authenticate-resp without method (after a dialog step) is relayed without one", () => {
    const xml = `<pcoip-client version='2.1'><authenticate-resp><result><result-id>AUTH_SUCCESSFUL_AND_INCOMPLETE</result-id><result-str>next</result-str></result><next-authentication><prompt>Enter code</prompt></next-authentication></authenticate-resp></pcoip-client>`;
    const resp = must(parseBrokerResponse(xml)) as AuthenticateResp;
    expect(resp.method).toBeUndefined();
    expect(resp.nextAuthenticationMethods).toEqual([]);
    expect(buildAuthenticateResp(resp)).toBe(
      `${XML_DECLARATION}\n<pcoip-client version="2.1"><authenticate-resp><result><result-id>AUTH_SUCCESSFUL_AND_INCOMPLETE</result-id><result-str>next</result-str></result><next-authentication><prompt>Enter code</prompt></next-authentication></authenticate-resp></pcoip-client>`,
    );
  });
});
