#!/usr/bin/env bash
# Debian packages the test suite and benchmarks talk to as real peers (slapd for LDAP, a forward proxy for the
# upstream-broker tests, systemd-analyze for the unit check, iproute2 for network-namespace tests, openssl for
# test certificates, haproxy as the real load balancer of the multi-node test; rpm, rpmlint, lintian and debootstrap
# for the package tests: rpmbuild and dpkg-deb build the RPM and deb, debootstrap makes the minimal Debian root they
# are installed into; nftables + conntrack for the kernel UDP path). Installs only what is missing; needs root (CI
# and these machines run as root).
set -euo pipefail
want=(openssl iproute2 python3 slapd ldap-utils tinyproxy systemd procps haproxy rpm rpmlint lintian debootstrap nftables conntrack)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: missing Debian packages: ${missing[*]} (install them as root: apt-get install ${missing[*]})" >&2
  # Outside CI the tests that need them skip with this reason; in CI that would hide them, so it is an error.
  [ "${CI:-}" = "true" ] && exit 1
  exit 0
fi
echo "system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Daemons from these packages must not start on their own: the tests start their own instances on loopback.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
