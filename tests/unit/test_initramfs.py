from __future__ import annotations

import gzip
import hashlib
import time

import pytest

from tracekit.guest import initramfs

pytestmark = pytest.mark.unit


def _entries() -> list[initramfs.CpioEntry]:
    return [
        initramfs.directory("bin"),
        initramfs.file("bin/hello", b"hi\n", 0o755),
        initramfs.symlink("bin/sh", "busybox"),
        initramfs.file("init", b"#!/bin/sh\n", 0o755),
    ]


def test_newc_layout_is_aligned_and_terminated() -> None:
    data = initramfs.build_newc(_entries())
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data
    # header of bin/hello: mode 0100755, size 3
    idx = data.index(b"bin/hello\0")
    hdr = data[idx - 110 : idx]
    assert hdr[14:22] == b"000081ED"  # mode
    assert hdr[54:62] == b"00000003"  # filesize


def test_deterministic_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    a = initramfs.gzip_deterministic(initramfs.build_newc(_entries()))
    # Another "now": a timestamp leaking into the archive or its gzip header would show.
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)
    b = initramfs.gzip_deterministic(initramfs.build_newc(_entries()))
    assert a == b
    assert a[4:8] == b"\0\0\0\0", "gzip MTIME must be zero"
    assert gzip.decompress(a) == initramfs.build_newc(_entries())
    # Golden digest: a change in the writer must be deliberate.
    digest = hashlib.sha256(initramfs.build_newc(_entries())).hexdigest()[:16]
    assert digest == "a05e6a908b4c7e9a"
