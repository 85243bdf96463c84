/**
 * libnftables through bun:ffi: one context (handle) per process, commands as text, JSON output. No process is
 * spawned per session: a command costs ≈ 0.14 ms (docs/FASTPATH.md). The library is Debian's `libnftables1`
 * (pulled in by `nftables`), RHEL's `nftables`.
 */
import { CString, dlopen, FFIType, type Pointer, ptr } from "bun:ffi";

const NFT_CTX_OUTPUT_JSON = 1 << 4;
const LIBRARY_NAMES = ["libnftables.so.1", "libnftables.so"];

export interface Nft {
  /** Runs one batch of commands (one kernel transaction); the error text names what failed. */
  run(commands: string): { ok: true; output: string } | { ok: false; error: string };
  close(): void;
}

type Lib = ReturnType<typeof openLib>;

function openLib(name: string) {
  return dlopen(name, {
    nft_ctx_new: { args: [FFIType.u32], returns: FFIType.ptr },
    nft_ctx_free: { args: [FFIType.ptr], returns: FFIType.void },
    nft_ctx_output_set_flags: { args: [FFIType.ptr, FFIType.u32], returns: FFIType.void },
    nft_ctx_buffer_output: { args: [FFIType.ptr], returns: FFIType.i32 },
    nft_ctx_buffer_error: { args: [FFIType.ptr], returns: FFIType.i32 },
    nft_ctx_get_output_buffer: { args: [FFIType.ptr], returns: FFIType.ptr },
    nft_ctx_get_error_buffer: { args: [FFIType.ptr], returns: FFIType.ptr },
    nft_run_cmd_from_buffer: { args: [FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  });
}

/** Opens the library and one context; the reason when it cannot (library missing). */
export function openNft(): { ok: true; nft: Nft } | { ok: false; error: string } {
  let lib: Lib | undefined;
  const errors: string[] = [];
  for (const name of LIBRARY_NAMES) {
    try {
      lib = openLib(name);
      break;
    } catch (e) {
      errors.push(e instanceof Error ? e.message : String(e));
    }
  }
  if (!lib) return { ok: false, error: `libnftables not found (${errors[0] ?? "dlopen failed"})` };
  const s = lib.symbols;
  const ctx = s.nft_ctx_new(0);
  if (!ctx) return { ok: false, error: "nft_ctx_new failed" };
  s.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON);
  s.nft_ctx_buffer_output(ctx);
  s.nft_ctx_buffer_error(ctx);
  const text = (p: unknown) => (p ? new CString(p as Pointer).toString() : "");
  let closed = false;
  return {
    ok: true,
    nft: {
      run(commands) {
        if (closed) return { ok: false, error: "nft context closed" };
        const buf = Buffer.from(`${commands}\0`);
        const rc = s.nft_run_cmd_from_buffer(ctx, ptr(buf));
        const output = text(s.nft_ctx_get_output_buffer(ctx));
        const error = text(s.nft_ctx_get_error_buffer(ctx)).trim();
        return rc === 0 ? { ok: true, output } : { ok: false, error: error || `nft returned ${rc}` };
      },
      close() {
        if (closed) return;
        closed = true;
        s.nft_ctx_free(ctx);
        lib.close();
      },
    },
  };
}
