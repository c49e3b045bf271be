#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: Debian packages, the .venv, guest assets.
# Called by `make setup` (and so by `make demo` and `make test`). Safe to run again: each
# step checks first and does nothing when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------
# qemu-system-arm: qemu-system-aarch64 (7.2); gdb-multiarch: the GDB that drives its stub;
# gcc-aarch64-linux-gnu + libc6-dev-arm64-cross: the static L2 VMM; gcc: the TCG plugin;
# python3-venv: the .venv; make: the guest build.
PACKAGES=(qemu-system-arm gdb-multiarch gcc-aarch64-linux-gnu libc6-dev-arm64-cross
          gcc make python3-venv ca-certificates)
missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
need_update=0
# The L1 kernel and busybox are arm64 .debs fetched with `apt-get download`.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    say "adding the arm64 dpkg architecture"
    $SUDO dpkg --add-architecture arm64
    need_update=1
fi
if ! apt-cache policy linux-image-cloud-arm64:arm64 2>/dev/null | grep -q "Candidate: [0-9]"; then
    need_update=1
fi
if [ ${#missing[@]} -gt 0 ] || [ $need_update -eq 1 ]; then
    say "apt-get update"
    $SUDO apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
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
say "guest assets"
.venv/bin/tracekit guest build
