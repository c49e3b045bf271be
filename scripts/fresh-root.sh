#!/usr/bin/env bash
# Prove that the README's `make demo` and `make test` set everything up on a fresh Debian:
# run them in a clean debootstrap root entered with chroot. See docs/fresh-root.md.
#
#   scripts/fresh-root.sh SUITE [--ref GITREF] [--only demo|test|both]     (SUITE: bookworm|trixie)
#
# Needs root and debootstrap on a Debian host. TRACEKIT_ROOTS (default /var/tmp/tracekit-roots)
# holds one pristine SUITE.tar per suite (made once) and runs/SUITE-<timestamp>/ per run.
set -euo pipefail

usage() { echo "usage: $0 bookworm|trixie [--ref GITREF] [--only demo|test|both]" >&2; exit 2; }
say() { printf '\033[1m[fresh-root]\033[0m %s\n' "$*"; }

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SUITE="${1:-}"; shift || true
case "$SUITE" in bookworm|trixie) ;; *) usage ;; esac
REF=HEAD ONLY=both
while [ $# -gt 0 ]; do
    case "$1" in
        --ref) REF="${2:?}"; shift 2 ;;
        --only) ONLY="${2:?}"; shift 2 ;;
        *) usage ;;
    esac
done
case "$ONLY" in demo) CMDS=(demo) ;; test) CMDS=(test) ;; both) CMDS=(demo test) ;; *) usage ;; esac
[ "$(id -u)" -eq 0 ] || { echo "run as root (debootstrap, mount, chroot)" >&2; exit 2; }
COMMIT="$(git -C "$REPO" rev-parse --verify "$REF^{commit}")"
ROOTS="${TRACEKIT_ROOTS:-/var/tmp/tracekit-roots}"

# --- Mirror: taken from the host's apt configuration, never written here -------------------
# Prints "URI SUITE" for every deb entry, deb822 (.sources) and one-line (sources.list) alike.
host_entries() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'function flush() { if (deb && on) for (i in s) print uri, s[i]; deb=0; on=1; uri=""; split("", s) }
             BEGIN { on=1 }
             /^[ \t]*#/ { next }
             /^[ \t]*$/ { flush(); next }
             tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb=1 }
             tolower($1) == "uris:" { uri=$2 }
             tolower($1) == "suites:" { for (i = 2; i <= NF; i++) s[i]=$i }
             tolower($1) == "enabled:" && tolower($2) == "no" { on=0 }
             END { flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [options] URI SUITE COMPONENTS...
        sed -E -n 's/^[ \t]*deb[ \t]+(\[[^]]*\][ \t]+)?([^ \t]+)[ \t]+([^ \t]+).*/\2 \3/p' "$f"
    done
}
CODENAME="$(. /etc/os-release && echo "$VERSION_CODENAME")"
uri_for() { host_entries | awk -v s="$1" '$2 == s { print $1; exit }'; }
MIRROR="$(uri_for "$CODENAME")"
[ -n "$MIRROR" ] || { echo "no deb entry for suite $CODENAME in the host's apt sources" >&2; exit 2; }
UPDATES="$(uri_for "$CODENAME-updates")"
SECURITY="$(uri_for "$CODENAME-security")"

# --- Pristine root, made once per suite -----------------------------------------------------
TAR="$ROOTS/$SUITE.tar"
mkdir -p "$ROOTS/runs"
if [ ! -f "$TAR" ]; then
    say "debootstrap $SUITE (once; kept as $TAR)"
    t0=$(date +%s)
    rm -rf "$ROOTS/$SUITE.build"
    debootstrap --variant=minbase --include=git,make,ca-certificates,sudo \
        "$SUITE" "$ROOTS/$SUITE.build" "$MIRROR"
    tar --numeric-owner -C "$ROOTS/$SUITE.build" -cf "$TAR.part" .
    mv "$TAR.part" "$TAR"
    rm -rf "$ROOTS/$SUITE.build"
    say "debootstrap $SUITE took $(( $(date +%s) - t0 )) s"
fi

# --- A fresh root for this run --------------------------------------------------------------
RUN="$ROOTS/runs/$SUITE-$(date +%Y%m%d-%H%M%S)"
ROOT="$RUN/root"
mkdir -p "$ROOT"
tar --numeric-owner -xpf "$TAR" -C "$ROOT"
say "root $ROOT (left in place for inspection; remove it with rm -rf once nothing is mounted)"

# Unmount always, even on failure, so that nothing of the host stays bound into the root.
MOUNTS=(proc sys dev dev/pts dev/shm)
cleanup() {
    local i
    for (( i=${#MOUNTS[@]}-1; i>=0; i-- )); do
        if mountpoint -q "$ROOT/${MOUNTS[i]}"; then
            umount "$ROOT/${MOUNTS[i]}" || umount -l "$ROOT/${MOUNTS[i]}"
        fi
    done
}
trap cleanup EXIT
mount -t proc proc "$ROOT/proc"
mount --bind /sys "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
# A bind of /dev does not carry the host's /dev/shm tmpfs; Python's multiprocessing needs one.
mount -t tmpfs -o mode=1777 shm "$ROOT/dev/shm"

# The registries are reached through a TLS-intercepting proxy: its CA must be trusted inside,
# or pip fails with CERTIFICATE_VERIFY_FAILED.
cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
chroot "$ROOT" update-ca-certificates >/dev/null
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# Every installed Debian system has /etc/hosts naming localhost (the installer writes it);
# debootstrap does not, and without it "localhost" does not resolve (the perfetto client
# the tests use connects to localhost). Give the root what a real machine has.
[ -s "$ROOT/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
    > "$ROOT/etc/hosts"

# apt sources: the same mirror; -updates and security only where the host has them.
{
    echo "deb $MIRROR $SUITE main"
    [ -z "$UPDATES" ] || echo "deb $UPDATES $SUITE-updates main"
    [ -z "$SECURITY" ] || echo "deb $SECURITY $SUITE-security main"
} > "$ROOT/etc/apt/sources.list"

# The repository as a fresh clone, with ../shared beside it as in CI.
git clone -q "$REPO" "$ROOT/root/tracekit"
git -C "$ROOT/root/tracekit" checkout -q --detach "$COMMIT"
if [ -d "$REPO/../shared" ]; then cp -a "$REPO/../shared" "$ROOT/root/shared"; fi
say "$SUITE at $(git -C "$REPO" log -1 --format='%h %s' "$COMMIT" | cut -c1-70)"

# --- The README's commands, in a clean environment ------------------------------------------
# Prints each line as it comes and logs it with the seconds since the command started,
# so that the log shows how long each set-up phase took.
stamp() {
    local t0=$SECONDS line
    while IFS= read -r line || [ -n "$line" ]; do
        printf '%s\n' "$line"
        printf '[+%5ds] %s\n' $(( SECONDS - t0 )) "$line" >> "$1"
    done
}
RESULTS=() failed=0
for cmd in "${CMDS[@]}"; do
    say "$SUITE: make $cmd (log: $RUN/$cmd.log)"
    t0=$(date +%s) rc=0
    chroot "$ROOT" /usr/bin/env -i HOME=/root \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin CI=true LANG=C.UTF-8 \
        bash -lc "cd /root/tracekit && make $cmd" < /dev/null 2>&1 | stamp "$RUN/$cmd.log" \
        || rc=${PIPESTATUS[0]}
    RESULTS+=("$SUITE $cmd: exit $rc in $(( $(date +%s) - t0 )) s")
    [ "$rc" -eq 0 ] || failed=1
done
printf '%s\n' "${RESULTS[@]}" | tee "$RUN/summary.txt"
exit "$failed"
