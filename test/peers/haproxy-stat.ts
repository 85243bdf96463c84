/** HAProxy's "show stat" CSV over its stats socket, "" when it does not answer (not started yet, or gone). */
export function haproxyShowStat(socket: string): Promise<string> {
  return new Promise((res) => {
    let out = "";
    Bun.connect({
      unix: socket,
      socket: {
        open: (s) => {
          s.write("show stat\n");
        },
        data: (_s, d) => {
          out += Buffer.from(d).toString();
        },
        close: () => res(out),
        error: () => res(out),
        connectError: () => res(""),
      },
    }).catch(() => res(""));
  });
}
