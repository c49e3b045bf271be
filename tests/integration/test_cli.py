"""The CLI as a user runs it: a real process, exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import subprocess

import pytest

from tests.cli import run_tracekit

pytestmark = pytest.mark.integration


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_tracekit(*args, env=env)


def test_help() -> None:
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("doctor", "guest"):
        assert cmd in out.stdout


def test_doctor_ok() -> None:
    out = run("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "QEMU" in out.stdout and "OK" in out.stdout


def test_doctor_names_fix_for_missing_gdb() -> None:
    out = run("doctor", env={"TRACEKIT_GDB": "/nonexistent/gdb-multiarch"})
    assert out.returncode == 2
    fixes = [ln.strip() for ln in out.stdout.splitlines() if ln.startswith("  ")]
    assert "apt-get install -y gdb-multiarch" in fixes
    assert "Traceback" not in out.stderr


def test_unknown_scenario_is_one_line_exit_2() -> None:
    out = run("guest", "run", "--scenario", "timre")
    assert out.returncode == 2
    assert "unknown scenario 'timre'" in out.stderr
    assert "did you mean 'timer'" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_machine_config_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "m.toml"
    bad.write_text("name = 'x'\nunknown_key = 1\n")
    out = run("guest", "run", "--machine", str(bad))
    assert out.returncode == 2
    assert "unknown key 'unknown_key'" in out.stderr
    assert "Traceback" not in out.stderr
