"""Faults during a real recording: each ends in bounded time with a one-line reason, a
non-zero exit code, a readable partial trace, and no QEMU/GDB process or socket left."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_tracekit, start_tracekit
from tests.sockets import descendants
from tests.trace_check import assert_trace_ok

pytestmark = pytest.mark.e2e


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _stamps(log: Path, enough: int) -> int:
    """TKP lines in the plugin's log, counted up to ``enough``."""
    seen = 0
    with log.open(errors="replace") as fh:
        for line in fh:
            if line.startswith("TKP "):
                seen += 1
                if seen >= enough:
                    break
    return seen


class Recording:
    def __init__(self, tmp: Path, *extra: str) -> None:
        self.out = tmp / "fault.pftrace"
        self.proc = start_tracekit(
            "record", "--scenario", "mixed", "--count", "200", "-o", str(self.out), *extra
        )
        self.seen: set[int] = set()
        self.runtime: Path | None = None
        self.started = time.time()

    def children(self) -> dict[str, int]:
        pids = descendants(self.proc.pid)
        self.seen.update(pids)
        found = {}
        for p in pids:
            name = comm(p)
            if name.startswith("qemu-system"):
                found["qemu"] = p
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
                m = re.search(r"unix:(/[^,\x00]+)/qmp\.sock", cmd)
                if m:
                    self.runtime = Path(m.group(1))
            elif name.startswith("gdb"):
                found["gdb"] = p
        return found

    def wait_for_hits(self, n: int = 20, timeout: float = 300) -> dict[str, int]:
        """Until the plugin has stamped ``n`` probe hits (L2 runs; KVM's probes do not
        fire before) with QEMU and GDB both up. Stamps, not GDB hits: with plugin-read
        values (QEMU 10's default) a recording makes no debugger stop at all."""
        log = self.out.with_suffix(".raw") / "qemu.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kids = self.children()
            if log.exists() and _stamps(log, n) >= n and len(kids) == 2:
                return kids
            assert self.proc.poll() is None, self.proc.communicate()[1]
            time.sleep(0.2)
        raise AssertionError("the recording captured nothing")

    def finish(self, timeout: float = 120) -> tuple[int, str, float]:
        start = time.monotonic()
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err, time.monotonic() - start


def check_aftermath(rec: Recording, rc: int, err: str, want: str) -> dict[str, Any]:
    assert rc != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) <= 2 and want in err, err  # the error (wrapped at most once)
    assert "Traceback" not in err
    leftovers = [
        p
        for p in rec.seen
        if Path(f"/proc/{p}").exists() and comm(p).startswith(("qemu-system", "gdb"))
    ]
    assert leftovers == [], leftovers
    assert rec.runtime is not None and not rec.runtime.exists(), "runtime dir/sockets left"
    # A child that aborted (GDB does, when QEMU vanishes mid-exchange) left no core file.
    cores = [c for c in Path.cwd().glob("core*") if c.stat().st_mtime >= rec.started]
    assert cores == [], cores
    summary = run_tracekit("summary", str(rec.out), "--json")
    assert summary.returncode == 0, summary.stderr
    data: dict[str, Any] = json.loads(summary.stdout)
    assert data["incomplete_reason"], "the partial trace must say it is incomplete"
    assert sum(c["complete_chains"] + c["partial_chains"] for c in data["classes"].values()) >= 0
    assert (rec.out.with_suffix(".raw") / "events.jsonl").exists()
    assert_trace_ok(rec.out)  # the partial trace is a whole, valid trace of what was seen
    return data


def test_qemu_killed(tmp_path: Path, guest_assets: object) -> None:
    rec = Recording(tmp_path)
    kids = rec.wait_for_hits()
    os.kill(kids["qemu"], signal.SIGKILL)
    rc, err, took = rec.finish()
    assert took < 30
    data = check_aftermath(rec, rc, err, "QEMU exited")
    assert "QEMU exited" in data["incomplete_reason"]


def test_gdb_killed(tmp_path: Path, guest_assets: object) -> None:
    rec = Recording(tmp_path)
    kids = rec.wait_for_hits()
    os.kill(kids["gdb"], signal.SIGKILL)
    rc, err, took = rec.finish()
    assert took < 30
    check_aftermath(rec, rc, err, "GDB")


def test_ctrl_c_once_stops_cleanly(tmp_path: Path, guest_assets: object) -> None:
    rec = Recording(tmp_path)
    rec.wait_for_hits()
    rec.proc.send_signal(signal.SIGINT)
    rc, err, took = rec.finish()
    assert rc == 130 and took < 30
    data = check_aftermath(rec, rc, err, "interrupted")
    assert "Ctrl-C" in data["incomplete_reason"]


def test_guest_hang_is_detected(tmp_path: Path, guest_assets: object) -> None:
    rec = Recording(tmp_path, "--stall-timeout", "5")
    kids = rec.wait_for_hits()
    os.kill(kids["qemu"], signal.SIGSTOP)  # nothing progresses any more
    # The stall watchdog's own line proves it fired (the run's deadline would say
    # "timeout"); no wall-time bound: attaching GDB to the stopped QEMU for stall.txt took
    # up to 126 s on a machine running a second test suite beside this one.
    rc, err, _ = rec.finish(timeout=300)
    check_aftermath(rec, rc, err, "no progress")


def test_l1_kernel_panic(tmp_path: Path, guest_assets: object) -> None:
    # tracekit.fault=panic makes L1's init crash the kernel (sysrq c) while L2 runs.
    rec = Recording(tmp_path, "--kernel-arg", "tracekit.fault=panic")
    while rec.proc.poll() is None:  # watch the children (for the leftover checks)
        rec.children()
        time.sleep(0.1)
    rc, err, _ = rec.finish(timeout=300)
    data = check_aftermath(rec, rc, err, "panicked")
    assert "Kernel panic" in data["incomplete_reason"]


def test_ctrl_c_twice_stops_now(tmp_path: Path, guest_assets: object) -> None:
    rec = Recording(tmp_path)
    rec.wait_for_hits()
    rec.proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    rec.proc.send_signal(signal.SIGINT)
    rc, err, took = rec.finish()
    assert rc == 130 and took < 30
    check_aftermath(rec, rc, err, "interrupted")


def test_three_recordings_at_once_do_not_interfere(tmp_path: Path, guest_assets: object) -> None:
    procs = []
    for i in range(3):
        out = tmp_path / f"c{i}.pftrace"
        procs.append(
            (
                out,
                start_tracekit(
                    "record", "--scenario", "ipi", "--count", "10", "--json", "-o", str(out)
                ),
            )
        )
    runtimes = set()
    for out, proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-2000:]
        summary = json.loads(stdout)
        assert summary["classes"]["ipi"]["complete_chains"] == 10
        assert_trace_ok(out)
        meta = json.loads((out.with_suffix(".raw") / "meta.json").read_text())
        sock = next(a for a in meta["qemu_argv"] if a.startswith("unix:") and "qmp" in a)
        runtimes.add(Path(sock[5:].split(",")[0]).parent)
    assert len(runtimes) == 3 and not any(r.exists() for r in runtimes)
