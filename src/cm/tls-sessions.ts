/**
 * TLS sessions the CM keeps as a client, so its next connection to the same server resumes instead of running a
 * full handshake (issue 21): the server skips its signature (an agent's RSA key is the costly half of a
 * handshake) and both sides skip the certificate. One session per server (host, port, name sent in SNI), the
 * newest; at most `max` servers, the least recently used forgotten first.
 *
 * Only sessions of connections the caller accepted are kept (`keep`, after judging): a session proves the server
 * holds the keys of a connection whose certificate was judged, as any TLS client's resumption does. A connection
 * that failed drops its server's session, so a server that lost its ticket keys gets a full handshake next time.
 */
export interface TlsSessionCache {
  /** The session to offer to `key`'s server, if one is kept. */
  get(key: string): Buffer | undefined;
  /** Keeps `session` as `key`'s newest: call it only for a connection that was accepted. */
  keep(key: string, session: Buffer): void;
  /** Forgets `key`'s session (its connection failed). */
  drop(key: string): void;
  readonly size: number;
}

export function createTlsSessionCache(max = 4096): TlsSessionCache {
  const sessions = new Map<string, Buffer>();
  const keep = (key: string, session: Buffer) => {
    sessions.delete(key);
    sessions.set(key, session);
    if (sessions.size > max) sessions.delete(sessions.keys().next().value as string);
  };
  return {
    get(key) {
      const s = sessions.get(key);
      if (s) {
        // Most recently used last.
        sessions.delete(key);
        sessions.set(key, s);
      }
      return s;
    },
    keep,
    drop(key) {
      sessions.delete(key);
    },
    get size() {
      return sessions.size;
    },
  };
}
