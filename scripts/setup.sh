#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 (bookworm) or 13 (trixie) machine: Debian
# packages, the .venv, guest assets. Called by `make setup` (and so by `make demo` and
# `make test`). Safe to run again: each step checks first and does nothing when its result
# is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
# make test: --debug-info (the kernel's debug info, for explain's source lines) and
# --extra-kernel FAMILY (a second pinned kernel, for the kernel matrix of the e2e tier),
# --newer-qemu (a QEMU with plugin API >= 4 beside the host's, unpacked into the cache
# from <codename>-backports when the host's QEMU is older: the QEMU matrix of the e2e tier),
# --linux-l2 (the Linux-L2 stack of configs/linux-l2.toml: Debian's arm64 QEMU and L2's
# root in L1's initramfs, for the linux-mmio / linux-pci scenarios).
GUEST_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --debug-info) GUEST_ARGS+=(--debug-info); shift ;;
        --extra-kernel) GUEST_ARGS+=(--extra-kernel "${2:?}"); shift 2 ;;
        --newer-qemu) GUEST_ARGS+=(--newer-qemu); shift ;;
        --linux-l2) GUEST_ARGS+=(--linux-l2); shift ;;
        *) echo "usage: $0 [--debug-info] [--extra-kernel FAMILY] [--newer-qemu] [--linux-l2]" >&2; exit 2 ;;
    esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------
# configs/host-packages.txt lists them per release (a few names differ between 12 and 13).
. /etc/os-release
release="${VERSION_CODENAME:-unknown}"
case "$release" in
    bookworm|trixie) ;;
    *) say "warning: $PRETTY_NAME is not Debian 12 or 13; using Debian 13's package names"
       release=trixie ;;
esac
PACKAGES=()
while read -r name releases _; do
    case "$name" in ''|'#'*) continue ;; esac
    case ",$releases," in *",$release,"*) PACKAGES+=("$name") ;; esac
done < configs/host-packages.txt
missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get update"
    $SUDO apt-get update -q
    say "installing ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}"
fi

# --- Python virtual environment ---------------------------------------------------------
PY="${PYTHON:-python3}"
stamp=.venv/.tracekit-installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "creating .venv and installing tracekit (editable) with dev tools"
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi

# --- Guest assets (cached; rebuilt only when inputs change) ------------------------------
# The guest's arm64 packages come from the suite pinned in configs/guest.toml through a
# private apt state in the cache: the host's apt configuration is not changed.
say "guest assets"
.venv/bin/tracekit guest build "${GUEST_ARGS[@]}"
