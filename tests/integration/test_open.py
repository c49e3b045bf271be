"""`tracekit open` serves the trace on 127.0.0.1 with the Perfetto UI's CORS header."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tracekit.export.serve import UI_ORIGIN, serve_once

pytestmark = pytest.mark.integration


def test_serves_once_on_loopback_with_cors(tmp_path: Path) -> None:
    trace = tmp_path / "t.pftrace"
    trace.write_bytes(b"\x0a\x00" * 10)
    ready = threading.Event()
    result: list[bool] = []
    port = 19001 + (int(time.time()) % 500)
    th = threading.Thread(
        target=lambda: result.append(serve_once(trace, port, timeout=20, on_ready=ready.set))
    )
    th.start()
    assert ready.wait(10)
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/t.pftrace", headers={"Origin": UI_ORIGIN}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.read() == trace.read_bytes()
        assert resp.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    th.join(20)
    assert result == [True]
