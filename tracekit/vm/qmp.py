"""A synchronous facade over ``qemu.qmp``'s asyncio QMPClient.

The recorder's main loop is synchronous (it multiplexes GDB/MI and the console), so the
QMP client runs on its own event loop in a background thread. Events of interest are kept
in a thread-safe list. ``quit`` racing the socket's EOF is treated as success (a known
cross-client behaviour: the reply and the EOF arrive together).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, QMPClient, QMPError

from tracekit.errors import VMError

__all__ = ["Monitor"]

log = logging.getLogger(__name__)
T = TypeVar("T")

WATCHED_EVENTS = ("STOP", "RESUME", "SHUTDOWN", "GUEST_PANICKED", "RESET")


class Monitor:
    """One QMP connection to a running QEMU."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qmp", daemon=True)
        self._thread.start()
        self._client = QMPClient("tracekit")
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._listener_task: concurrent.futures.Future[None] | None = None
        self.version: str = "unknown"

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise VMError(f"QMP did not answer within {timeout:.0f} s") from None

    def connect(self, timeout: float = 20.0, alive: Callable[[], bool] = lambda: True) -> None:
        """Connect once QEMU has made its socket; ``alive`` says whether QEMU still runs
        (a QEMU that exits at start-up never makes it: no need to wait the timeout)."""
        deadline = time.monotonic() + timeout
        while not self.socket_path.exists():
            if not alive():
                raise VMError(f"QEMU exited before it opened its QMP socket {self.socket_path}")
            if time.monotonic() > deadline:
                raise VMError(f"QMP socket {self.socket_path} did not appear in {timeout:.0f} s")
            time.sleep(0.02)
        while True:
            try:
                self._run(self._client.connect(str(self.socket_path)), timeout)
                break
            except (QMPError, OSError) as exc:
                # QEMU binds its socket before it listens on it (socket_listen, util/
                # qemu-sockets.c): in between, a connect is refused. Seen on a loaded
                # machine; retry while QEMU runs and time is left.
                # qemu.qmp wraps the socket's error in ConnectError (its ``exc``).
                cause = exc.exc if isinstance(exc, ConnectError) else exc
                refused = isinstance(cause, ConnectionRefusedError)
                if not refused or not alive() or time.monotonic() > deadline:
                    raise VMError(f"cannot connect to QMP at {self.socket_path}: {exc}") from None
                time.sleep(0.05)
        greeting: Any = self._client.greeting
        v: dict[str, Any] = dict(greeting.QMP.version["qemu"]) if greeting else {}
        self.version = f"{v.get('major')}.{v.get('minor')}.{v.get('micro')}"
        self._listener_task = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)

    async def _listen(self) -> None:
        with self._client.listener(WATCHED_EVENTS) as listener:
            async for event in listener:
                with self._lock:
                    self._events.append(dict(event))
                log.debug("QMP event %s", event.get("event"))

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        try:
            return self._run(self._client.execute(cmd, args), timeout)
        except QMPError as exc:
            raise VMError(f"QMP {cmd} failed: {exc}") from None

    def quit(self) -> None:
        """Ask QEMU to exit; EOF or a closed connection counts as success."""
        try:
            self._run(self._client.execute("quit"), 5.0)
        except (QMPError, EOFError, VMError, OSError):
            pass

    def close(self) -> None:
        if self._listener_task is not None:
            self._listener_task.cancel()
        try:
            self._run(self._client.disconnect(), 5.0)
        except Exception:  # the peer may be gone already; closing must not fail
            pass

        async def _drain() -> None:
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        try:
            self._run(_drain(), 2.0)
        except Exception:  # best effort; the loop is going away
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=2)
        self._loop.close()
