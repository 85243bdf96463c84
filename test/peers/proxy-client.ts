/**
 * A client that talks the way an L4 load balancer's back-end connection does: a PROXY protocol header, then the
 * client's bytes (TLS or plain HTTP). `coalesce` puts the header and the ClientHello in one write — what HAProxy
 * does when the client's hello is already buffered — so the server must not lose the bytes after the header.
 */
import * as net from "node:net";
import { Duplex } from "node:stream";
import * as tls from "node:tls";

export interface ProxiedRequest {
  readonly port: number;
  readonly host?: string;
  /** Bytes sent first (a PROXY header, or anything a hostile peer would send); may be empty. */
  readonly header: Uint8Array;
  /** TLS after the header (the CM listener); absent: plain HTTP (the redirect/health listener). */
  readonly tls?: { readonly ca: string; readonly serverName?: string };
  readonly coalesce?: boolean;
  /** The HTTP request text; default GET /pcoip-broker/xml with Connection: close. */
  readonly request?: string;
  readonly timeoutMs?: number;
}

/** Sends the header and one request; resolves with everything received until the server closed (or timed out). */
export function proxiedRequest(
  o: ProxiedRequest,
): Promise<{ text: string; closedWithoutAnswer: boolean; fingerprint?: string }> {
  const request = o.request ?? "GET /pcoip-broker/xml HTTP/1.1\r\nHost: cm\r\nConnection: close\r\n\r\n";
  return new Promise((resolve) => {
    let text = "";
    let fingerprint: string | undefined;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve({ text, closedWithoutAnswer: text === "", ...(fingerprint ? { fingerprint } : {}) });
    };
    const timer = setTimeout(finish, o.timeoutMs ?? 5000);
    const sock = net.connect(o.port, o.host ?? "127.0.0.1");
    sock.on("error", finish);
    sock.on("close", finish);
    sock.on("connect", () => {
      if (!o.tls) {
        if (o.coalesce === false) {
          sock.write(o.header);
          setTimeout(() => sock.write(request), 30);
        } else sock.write(Buffer.concat([o.header, Buffer.from(request)]));
        sock.on("data", (d: Buffer) => {
          text += d.toString("latin1");
        });
        return;
      }
      if (o.coalesce === false && o.header.length > 0) {
        sock.write(o.header);
        setTimeout(() => startTls(o.tls!, false), 30);
      } else startTls(o.tls!, true);
    });
    const startTls = (opts: NonNullable<ProxiedRequest["tls"]>, prepend: boolean) => {
      let first = prepend;
      const wire = new Duplex({
        read() {},
        write(chunk: Buffer, _enc, cb) {
          const out = first ? Buffer.concat([o.header, chunk]) : chunk;
          first = false;
          sock.write(out, () => cb());
        },
      });
      sock.on("data", (d: Buffer) => wire.push(d));
      sock.on("end", () => wire.push(null));
      const t = tls.connect({ socket: wire, ca: opts.ca, servername: opts.serverName ?? "localhost" }, () => {
        fingerprint = t.getPeerCertificate().fingerprint256;
        t.write(request);
      });
      t.on("data", (d: Buffer) => {
        text += d.toString("latin1");
      });
      t.on("error", finish);
      t.on("end", finish);
    };
  });
}
