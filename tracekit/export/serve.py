"""Serve one trace file on 127.0.0.1 for the Perfetto UI (CORS for the UI's origin)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from pathlib import Path

from tracekit.errors import TracekitError

__all__ = ["UI_ORIGIN", "serve_once"]

UI_ORIGIN = "https://ui.perfetto.dev"


def serve_once(
    trace: Path,
    port: int,
    *,
    timeout: float | None = None,
    on_ready: Callable[[], None] = lambda: None,
) -> bool:
    """Serve ``trace`` until it has been fetched once (True) or ``timeout`` (False)."""
    data = trace.read_bytes()
    fetched = threading.Event()
    name = "/" + trace.name

    class Handler(http.server.BaseHTTPRequestHandler):
        def _cors(self) -> None:
            self.send_header("Access-Control-Allow-Origin", UI_ORIGIN)
            self.send_header("Access-Control-Allow-Methods", "GET, OPTIONS")
            self.send_header("Cache-Control", "no-cache")

        def do_OPTIONS(self) -> None:
            self.send_response(204)
            self._cors()
            self.end_headers()

        def do_GET(self) -> None:
            if self.path.split("?")[0] != name:
                self.send_response(404)
                self._cors()
                self.end_headers()
                return
            self.send_response(200)
            self._cors()
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            fetched.set()

        def log_message(self, format: str, *args: object) -> None:
            pass

    try:
        # Loopback only: nothing tracekit opens listens beyond this machine.
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as exc:
        raise TracekitError(
            f"cannot listen on 127.0.0.1:{port}: {exc.strerror}", hint="pass another --port"
        ) from None
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    on_ready()
    try:
        return fetched.wait(timeout)
    finally:
        server.shutdown()
        server.server_close()
