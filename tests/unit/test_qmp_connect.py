"""The QMP adapter waits out QEMU's bind-before-listen window (vm/qmp.py, Monitor.connect).

A real unix socket stands in for QEMU: bound (so the path exists) but not listening yet,
so a connect is refused, as it was once on a loaded machine; it starts listening a moment
later and speaks the QMP greeting and capabilities negotiation.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from tracekit.errors import VMError
from tracekit.vm.qmp import Monitor

pytestmark = pytest.mark.unit

GREETING = {"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": ""},
                    "capabilities": []}}  # fmt: skip


def _serve_after(sock: socket.socket, delay: float) -> None:
    time.sleep(delay)
    sock.listen(1)
    conn, _ = sock.accept()
    with conn:
        conn.sendall(json.dumps(GREETING).encode() + b"\r\n")
        buf = b""
        while b"\n" not in buf and b"}" not in buf:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
        request = json.loads(buf.decode().strip().splitlines()[0])
        reply = {"return": {}, "id": request.get("id")}
        conn.sendall(json.dumps(reply).encode() + b"\r\n")
        time.sleep(0.5)


def test_a_refused_connect_before_qemu_listens_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))  # the path exists, nobody listens: connect() is refused
    server = threading.Thread(target=_serve_after, args=(sock, 0.3), daemon=True)
    server.start()
    monitor = Monitor(path)
    try:
        monitor.connect(timeout=10)
        assert monitor.version == "10.0.2"
    finally:
        monitor.close()
        sock.close()


def test_a_socket_that_never_listens_gives_up_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    monitor = Monitor(path)
    try:
        with pytest.raises(VMError, match="cannot connect to QMP"):
            monitor.connect(timeout=0.5)
    finally:
        monitor.close()
        sock.close()
