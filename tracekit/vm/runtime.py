"""A private runtime directory per QEMU instance (mode 0700): sockets, logs, console.

Nothing listens beyond this machine: QMP and the GDB stub are unix sockets in here, so
concurrent recordings never share a port or a file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RuntimeDir"]


@dataclass(frozen=True)
class RuntimeDir:
    path: Path

    @classmethod
    def create(cls, prefix: str = "tracekit-") -> RuntimeDir:
        base = os.environ.get("XDG_RUNTIME_DIR")
        path = Path(
            tempfile.mkdtemp(prefix=prefix, dir=base if base and os.path.isdir(base) else None)
        )
        os.chmod(path, 0o700)
        return cls(path)

    @property
    def qmp_socket(self) -> Path:
        return self.path / "qmp.sock"

    @property
    def gdb_socket(self) -> Path:
        return self.path / "gdb.sock"

    @property
    def console_log(self) -> Path:
        return self.path / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.path / "qemu.log"

    @property
    def qemu_stderr(self) -> Path:
        return self.path / "qemu.stderr"

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
