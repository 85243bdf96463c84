# Shared by the RPM and deb maintainer scripts (scripts/package.ts pastes it in at @COMMON@). POSIX sh only, and
# only what every EL8/EL9 and Debian system has (coreutils, grep, getent from the C library; useradd or
# systemd-sysusers): the packages declare no dependency beyond the C library.
PCOIP_CMSG_LOG=/var/log/pcoip-cmsg/install.log

# One line to the install log beside the journal (the vendor keeps one under /var/log too).
# (No percent signs anywhere in these scripts: rpm would read them as macros.)
pcoip_cmsg_log() {
  mkdir -p /var/log/pcoip-cmsg 2>/dev/null || return 0
  echo "$(date -u -Iseconds) package $PCOIP_CMSG_STEP: $*" >>"$PCOIP_CMSG_LOG" 2>/dev/null || true
}

# The service account and its group, before files owned by the group are unpacked.
pcoip_cmsg_account() {
  if getent passwd pcoip-cmsg >/dev/null 2>&1; then return 0; fi
  if command -v systemd-sysusers >/dev/null 2>&1 &&
    echo 'u pcoip-cmsg - "pcoip-cmsg appliance" /var/lib/pcoip-cmsg /usr/sbin/nologin' | systemd-sysusers - >/dev/null 2>&1 &&
    getent passwd pcoip-cmsg >/dev/null 2>&1; then
    pcoip_cmsg_log "created the system account pcoip-cmsg (systemd-sysusers)"
    return 0
  fi
  getent group pcoip-cmsg >/dev/null 2>&1 || groupadd --system pcoip-cmsg
  useradd --system --gid pcoip-cmsg --home-dir /var/lib/pcoip-cmsg --no-create-home \
    --shell /usr/sbin/nologin --comment "pcoip-cmsg appliance" pcoip-cmsg
  pcoip_cmsg_log "created the system account pcoip-cmsg (useradd)"
}

# /usr/bin/pcoip-cmsg points at the build this CPU runs: the x64-baseline one when the CPU lacks AVX2 (older
# hypervisor baselines), where the default build would die with SIGILL. PCOIP_CMSG_CPUINFO lets tests pretend.
pcoip_cmsg_choose_binary() {
  build=pcoip-cmsg
  if [ -x /usr/libexec/pcoip-cmsg/pcoip-cmsg-baseline ] && ! grep -qw avx2 "${PCOIP_CMSG_CPUINFO:-/proc/cpuinfo}" 2>/dev/null; then
    build=pcoip-cmsg-baseline
  fi
  ln -sfn "../libexec/pcoip-cmsg/$build" /usr/bin/pcoip-cmsg
  pcoip_cmsg_log "/usr/bin/pcoip-cmsg -> /usr/libexec/pcoip-cmsg/$build"
}

pcoip_cmsg_systemd() {
  [ -d /run/systemd/system ]
}
