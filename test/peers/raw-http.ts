/**
 * A raw TCP/TLS client for tests that must see (and send) exact bytes: header spelling, chunk framing, bare LF.
 * Writes only after the TLS handshake (Bun drops writes made before it completes).
 */
import type { Socket } from "bun";

export interface RawConnection {
  /** Sends bytes; resolves once they are handed to the socket. */
  send(data: string | Uint8Array): void;
  /** Everything received so far, as latin1 text. */
  received(): string;
  /** Resolves when the received text matches, or rejects after `timeoutMs`. */
  waitFor(pred: (text: string) => boolean, timeoutMs?: number): Promise<string>;
  /** Resolves when the server closed the connection (or after timeoutMs with false). */
  closed(timeoutMs?: number): Promise<boolean>;
  readonly peerCertificate: () => unknown;
  end(): void;
}

export async function rawConnect(opts: {
  port: number;
  hostname?: string;
  tls?: boolean;
  ca?: string;
  serverName?: string;
}): Promise<RawConnection> {
  let text = "";
  let isClosed = false;
  const waiters = new Set<() => void>();
  const notify = () => {
    for (const w of [...waiters]) w();
  };
  let ready!: () => void;
  let failed!: (e: Error) => void;
  const handshake = new Promise<void>((res, rej) => {
    ready = res;
    failed = rej;
  });
  const socket: Socket<undefined> = await Bun.connect({
    hostname: opts.hostname ?? "127.0.0.1",
    port: opts.port,
    ...(opts.tls === false
      ? {}
      : {
          tls: {
            ca: opts.ca,
            rejectUnauthorized: opts.ca !== undefined,
            serverName: opts.serverName ?? "localhost",
          },
        }),
    socket: {
      open() {
        if (opts.tls === false) ready();
      },
      handshake(_s, ok, err) {
        if (ok || opts.ca === undefined) ready();
        else failed(new Error(`TLS handshake failed: ${err?.message ?? "unknown"}`));
      },
      data(_s, d) {
        text += Buffer.from(d).toString("latin1");
        notify();
      },
      close() {
        isClosed = true;
        ready();
        notify();
      },
      error() {
        isClosed = true;
        notify();
      },
    },
  });
  await handshake;
  const waitUntil = (pred: () => boolean, timeoutMs: number): Promise<boolean> =>
    new Promise((resolve) => {
      if (pred()) return resolve(true);
      const t = setTimeout(() => {
        waiters.delete(check);
        resolve(false);
      }, timeoutMs);
      const check = () => {
        if (pred()) {
          clearTimeout(t);
          waiters.delete(check);
          resolve(true);
        }
      };
      waiters.add(check);
    });
  return {
    send(data) {
      socket.write(data);
    },
    received: () => text,
    async waitFor(pred, timeoutMs = 5000) {
      if (!(await waitUntil(() => pred(text) || isClosed, timeoutMs)) || !pred(text)) {
        throw new Error(
          `raw client: expected bytes did not arrive; got ${JSON.stringify(text.slice(0, 500))}`,
        );
      }
      return text;
    },
    closed: (timeoutMs = 5000) => waitUntil(() => isClosed, timeoutMs),
    peerCertificate: () =>
      (socket as unknown as { getPeerCertificate?: () => unknown }).getPeerCertificate?.(),
    end() {
      socket.end();
    },
  };
}

/** Number of complete chunked HTTP responses in `text` (each ends with the last-chunk marker). */
export function countResponses(text: string): number {
  return text.split("\r\n0\r\n\r\n").length - 1;
}

/** Whether a plain TCP connect to hostname:port succeeds (it is closed at once): a listener is there. */
export function tcpAccepts(hostname: string, port: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    Bun.connect({
      hostname,
      port,
      socket: {
        open: (s) => {
          s.end();
          resolve(true);
        },
        data: () => {},
        connectError: () => resolve(false),
        error: () => resolve(false),
      },
    }).catch(() => resolve(false));
  });
}
