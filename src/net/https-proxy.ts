/**
 * A CONNECT tunnel through an HTTP forward proxy (RFC 9110 §9.3.6), for broker traffic only: the CM opens TCP to
 * the proxy, asks `CONNECT broker:443`, and on a 2xx runs its own TLS and HTTP/1.1 inside the tunnel, so the
 * broker conversation (headers, keep-alive, cookies) is byte-for-byte what it would be without a proxy.
 *
 * Every expected failure is a value naming the cause and the fix: the proxy's name does not resolve, refuses,
 * times out, closes; answers 407 (credentials missing or wrong); asks only for NTLM / Negotiate (not supported);
 * refuses the tunnel (403: port not allowed) or cannot reach the broker itself (502/503/504). The password
 * goes on the wire in `Proxy-Authorization` and nowhere else.
 */
import { connect, type Socket } from "node:net";
import { describeProxy, type ProxySettings } from "./proxy-env.ts";

/** Largest CONNECT answer head accepted (status line + headers). */
const MAX_HEAD_BYTES = 16 * 1024;

export type ProxyFailureKind =
  | "proxy_dns"
  | "proxy_refused"
  | "proxy_timeout"
  | "proxy_closed"
  | "proxy_auth"
  | "proxy_ntlm"
  | "proxy_denied"
  | "proxy_upstream"
  | "proxy_bad_response";

export interface ProxyFailure {
  readonly kind: ProxyFailureKind;
  /** The proxy's HTTP status, when it answered. */
  readonly status?: number;
  readonly timeout: boolean;
  readonly cause: string;
  readonly fix: string;
}

export interface TunnelOptions {
  readonly proxy: ProxySettings;
  /** The destination as the proxy should dial it (host name or IP, without brackets). */
  readonly host: string;
  readonly port: number;
  /** For connecting to the proxy and getting its answer to CONNECT. */
  readonly timeoutMs: number;
}

export type TunnelResult =
  | { readonly ok: true; readonly socket: Socket }
  | { readonly ok: false; readonly failure: ProxyFailure };

/** The `Proxy-Authorization` value for basic auth (RFC 7617, UTF-8). */
export function basicProxyAuthorization(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`, "utf8").toString("base64")}`;
}

/** The CONNECT request head (exported for tests that check what goes to the proxy). */
export function connectRequest(proxy: ProxySettings, host: string, port: number): string {
  const authority = `${host.includes(":") ? `[${host}]` : host}:${port}`;
  const lines = [`CONNECT ${authority} HTTP/1.1`, `Host: ${authority}`];
  if (proxy.username !== undefined) {
    lines.push(`Proxy-Authorization: ${basicProxyAuthorization(proxy.username, proxy.password ?? "")}`);
  }
  // Some proxies close the tunnel when the client says nothing about the connection; be explicit.
  lines.push("Proxy-Connection: keep-alive");
  return `${lines.join("\r\n")}\r\n\r\n`;
}

/**
 * Opens a tunnel to `host:port` through `proxy`. On success the socket is connected end to end and nothing has
 * been read past the proxy's answer; run TLS on it (`tls.connect({ socket })`).
 */
export function openTunnel(opts: TunnelOptions): Promise<TunnelResult> {
  const { proxy, host, port } = opts;
  const where = describeProxy(proxy);
  return new Promise((resolve) => {
    let done = false;
    let head = Buffer.alloc(0);
    const socket = connect({ host: proxy.host, port: proxy.port });
    const finish = (r: TunnelResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("error", onError);
      socket.off("close", onClose);
      if (!r.ok) socket.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => {
      finish(
        failure("proxy_timeout", true, `the proxy ${where} did not answer within ${opts.timeoutMs} ms`, {
          fix: "check that the proxy address and port are right and that this host may reach it",
        }),
      );
    }, opts.timeoutMs);
    const onError = (e: Error & { code?: string }) => finish(connectError(e, where));
    const onClose = () =>
      finish(
        failure("proxy_closed", false, `the proxy ${where} closed the connection before answering CONNECT`, {
          fix: "check the proxy's log; it may limit who can use it (e.g. tinyproxy's Allow)",
        }),
      );
    const onData = (d: Buffer) => {
      head = Buffer.concat([head, d]);
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) {
        if (head.length > MAX_HEAD_BYTES) {
          finish(
            failure("proxy_bad_response", false, `the proxy ${where} sent an over-long answer to CONNECT`, {
              fix: "check that HTTPS_PROXY names an HTTP proxy",
            }),
          );
        }
        return;
      }
      const answer = parseHead(head.subarray(0, end).toString("latin1"));
      const rest = head.subarray(end + 4);
      if (!answer) {
        finish(
          failure("proxy_bad_response", false, `the proxy ${where} did not answer CONNECT with HTTP`, {
            fix: "check that HTTPS_PROXY names an HTTP proxy, not a SOCKS or TLS port",
          }),
        );
        return;
      }
      if (answer.status >= 200 && answer.status < 300) {
        if (rest.length > 0) {
          // The broker speaks only after our ClientHello, so bytes here mean the proxy is not tunnelling.
          finish(
            failure("proxy_bad_response", false, `the proxy ${where} sent data before the tunnel was used`, {
              fix: "check that HTTPS_PROXY names an HTTP proxy",
            }),
          );
          return;
        }
        finish({ ok: true, socket });
        return;
      }
      finish({ ok: false, failure: refusal(answer, proxy, where, `${host}:${port}`) });
    };
    socket.on("data", onData);
    socket.on("error", onError);
    socket.on("close", onClose);
    socket.once("connect", () => {
      socket.write(connectRequest(proxy, host, port));
    });
  });
}

interface Head {
  status: number;
  reason: string;
  headers: [string, string][];
}

function parseHead(text: string): Head | undefined {
  const lines = text.split(/\r?\n/);
  const m = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(lines[0] ?? "");
  if (!m) return undefined;
  const headers: [string, string][] = [];
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    if (colon > 0) headers.push([line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()]);
  }
  return { status: Number(m[1]), reason: m[2] ?? "", headers };
}

/** The schemes a 407 offers (`Proxy-Authenticate: Basic realm="x"`, `NTLM`, `Negotiate`, possibly comma-joined). */
export function authSchemes(values: readonly string[]): string[] {
  const schemes: string[] = [];
  for (const v of values) {
    // A challenge starts with a token not followed by "="; auth-params (realm="…") are skipped.
    for (const part of v.split(",")) {
      const m = /^\s*([A-Za-z0-9!#$%&'*+.^_`|~-]+)(?:\s|$)/.exec(part);
      if (m && !/^\s*[^\s=]+\s*=/.test(part)) schemes.push(m[1]!.toLowerCase());
    }
  }
  return schemes;
}

function refusal(answer: Head, proxy: ProxySettings, where: string, dest: string): ProxyFailure {
  const said = `HTTP ${answer.status}${answer.reason ? ` ${answer.reason}` : ""}`;
  // 407 is the standard answer; tinyproxy 1.11 answers a wrong password with 401 and WWW-Authenticate.
  if (answer.status === 407 || answer.status === 401) {
    const challenge = answer.status === 407 ? "proxy-authenticate" : "www-authenticate";
    const schemes = authSchemes(answer.headers.filter(([n]) => n === challenge).map(([, v]) => v));
    if (schemes.length > 0 && !schemes.includes("basic")) {
      return {
        kind: "proxy_ntlm",
        status: answer.status,
        timeout: false,
        cause: `the proxy ${where} asks for ${schemes.map(schemeName).join(" / ")} authentication, which is not supported (only basic)`,
        fix: "enable basic authentication for this client on the proxy, or exempt the broker address from proxy authentication",
      };
    }
    return {
      kind: "proxy_auth",
      status: answer.status,
      timeout: false,
      cause:
        proxy.username === undefined
          ? `the proxy ${where} requires authentication (${said}) and no credentials are configured`
          : `the proxy ${where} refused the credentials (${said})`,
      fix:
        proxy.username === undefined
          ? "set HTTPS_PROXY_USERNAME and HTTPS_PROXY_PASSWORD in the service's environment file"
          : "check HTTPS_PROXY_USERNAME and HTTPS_PROXY_PASSWORD in the service's environment file",
    };
  }
  // 5xx: the proxy could not reach the broker (tinyproxy says "500 Unable to connect", squid 503, others 502/504).
  if (answer.status >= 500) {
    return {
      kind: "proxy_upstream",
      status: answer.status,
      timeout: answer.status === 504,
      cause: `the proxy ${where} could not reach ${dest} (${said})`,
      fix: "check the broker address and that the proxy may reach it (DNS and firewall on the proxy's side)",
    };
  }
  return {
    kind: "proxy_denied",
    status: answer.status,
    timeout: false,
    cause: `the proxy ${where} refused to open a tunnel to ${dest} (${said})`,
    fix: "allow CONNECT to the broker's host and port on the proxy (e.g. tinyproxy's ConnectPort, squid's SSL_ports)",
  };
}

function schemeName(s: string): string {
  return s === "ntlm" ? "NTLM" : s === "negotiate" ? "Negotiate" : s;
}

function connectError(e: Error & { code?: string }, where: string): TunnelResult {
  switch (e.code) {
    case "ENOTFOUND":
    case "EAI_AGAIN":
    case "EAI_NONAME":
      return failure("proxy_dns", false, `the proxy's name in ${where} does not resolve (${e.code})`, {
        fix: "check the host name in HTTPS_PROXY and this host's DNS",
      });
    case "ECONNREFUSED":
      return failure("proxy_refused", false, `the proxy ${where} refused the connection (ECONNREFUSED)`, {
        fix: "check the port in HTTPS_PROXY and that the proxy is running",
      });
    case "ETIMEDOUT":
      return failure("proxy_timeout", true, `connecting to the proxy ${where} timed out`, {
        fix: "check that this host may reach the proxy (firewall, routing)",
      });
    default:
      return failure("proxy_closed", false, `connecting to the proxy ${where}: ${e.code ?? e.message}`, {
        fix: "check the proxy address in HTTPS_PROXY and that the proxy is running",
      });
  }
}

function failure(
  kind: ProxyFailureKind,
  timeout: boolean,
  cause: string,
  rest: { fix: string },
): { ok: false; failure: ProxyFailure } {
  return { ok: false, failure: { kind, timeout, cause, fix: rest.fix } };
}
