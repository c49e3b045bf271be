"""The pure newc writer produces archives the real cpio tool reads."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tracekit.guest import initramfs

pytestmark = pytest.mark.integration


def test_cpio_lists_our_archive(tmp_path: Path) -> None:
    data = initramfs.build_newc(
        [
            initramfs.directory("bin"),
            initramfs.file("bin/x", b"abc", 0o755),
            initramfs.symlink("bin/sh", "x"),
        ]
    )
    out = subprocess.run(["cpio", "-it"], input=data, capture_output=True, check=True)
    assert out.stdout.decode().split() == ["bin", "bin/x", "bin/sh"]
