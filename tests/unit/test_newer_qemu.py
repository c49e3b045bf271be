"""Where the newer QEMU of the suite's QEMU matrix comes from (guest/newer_qemu.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracekit.config import load_tools
from tracekit.guest.newer_qemu import cached_newer_qemu, fetch_newer_qemu

pytestmark = pytest.mark.unit


def test_a_host_qemu_with_plugin_api_4_is_the_newer_one(tmp_path: Path) -> None:
    tools = load_tools()
    got = fetch_newer_qemu(tools, 4, cache=tmp_path)
    assert got["binary"] == tools.qemu
    assert not (tmp_path / "qemu").exists()  # nothing fetched


def test_the_cache_manifest_names_an_existing_binary(tmp_path: Path) -> None:
    assert cached_newer_qemu(tmp_path) is None
    root = tmp_path / "qemu"
    root.mkdir()
    binary = root / "10.0.2" / "usr/bin/qemu-system-aarch64"
    (root / "manifest.json").write_text(json.dumps({"binary": str(binary)}))
    assert cached_newer_qemu(tmp_path) is None  # named but not there: not a QEMU
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    assert cached_newer_qemu(tmp_path) == binary
    (root / "manifest.json").write_text("{not json")
    assert cached_newer_qemu(tmp_path) is None
