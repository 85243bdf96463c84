#!/usr/bin/env bash
# The peers the SG benchmarks compare against (nginx stream, haproxy mode tcp, socat), from Debian. Installs
# only what is missing; needs root (these machines run as root). The Debian packages start their daemons from
# the postinst scripts: a policy-rc.d that exits 101 forbids it, so nothing but the benchmarks' own instances
# (on loopback, foreground, stopped by the scripts) ever runs.
set -euo pipefail
want=(nginx libnginx-mod-stream haproxy socat gcc libc6-dev)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "peers-install: missing Debian packages: ${missing[*]} (install them as root: apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "peers-install: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Keep an operator's own policy-rc.d: move it aside and put it back afterwards.
saved=""
if [ -e /usr/sbin/policy-rc.d ]; then
  saved="$(mktemp)"
  cp -p /usr/sbin/policy-rc.d "$saved"
fi
restore() {
  if [ -n "$saved" ]; then mv -f "$saved" /usr/sbin/policy-rc.d; else rm -f /usr/sbin/policy-rc.d; fi
}
trap restore EXIT
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# A system without a service manager can still have started nothing; a stray daemon would skew every figure.
for d in nginx haproxy; do
  if pgrep -x "$d" >/dev/null 2>&1 && [ -f "/run/$d.pid" ]; then
    echo "peers-install: a system $d is running (pid $(cat "/run/$d.pid")); stop it before benchmarking" >&2
  fi
done
