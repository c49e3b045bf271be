"""The QEMUs the suite runs against: the host's (TRACEKIT_QEMU or PATH), and one with TCG
plugin API 4 (QEMU 10.0) for plugin-read values."""

from __future__ import annotations

import os

import pytest


def qemu10() -> str:
    from tracekit.config import load_tools
    from tracekit.errors import TracekitError
    from tracekit.guest.newer_qemu import cached_newer_qemu
    from tracekit.vm.plugin import qemu_plugin_api

    cached = cached_newer_qemu()
    candidates = [load_tools().qemu, os.environ.get("TRACEKIT_QEMU10", ""), str(cached or "")]
    for qemu in filter(None, candidates):
        try:
            if qemu_plugin_api(qemu) >= 4:
                return qemu
        except TracekitError:
            continue
    pytest.fail(
        "no QEMU with TCG plugin API 4 (QEMU 10.0) for --plugin-values: the host's QEMU is"
        " older, $TRACEKIT_QEMU10 is not set to one and none is cached: run"
        " `make setup-test` (it calls `tracekit guest build --newer-qemu`, which unpacks"
        " bookworm-backports' QEMU 10 into the cache on Debian 12) or set TRACEKIT_QEMU10=PATH",
        pytrace=False,
    )
