/** Build identity, stamped by scripts/build.ts through `--define`; source runs report the package version. */
declare const PCOIP_CMSG_VERSION: string | undefined;
declare const PCOIP_CMSG_COMMIT: string | undefined;

export const VERSION: string = typeof PCOIP_CMSG_VERSION === "string" ? PCOIP_CMSG_VERSION : "0.1.0-dev";
export const COMMIT: string = typeof PCOIP_CMSG_COMMIT === "string" ? PCOIP_CMSG_COMMIT : "source";
export const PRODUCT_NAME = "pcoip-cmsg";
