"""Build (once, cached by source hash) the tk_timebase TCG plugin with the host compiler."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from tracekit.config import ToolPaths, cache_dir
from tracekit.errors import EnvironmentProblem

__all__ = ["PLUGIN_SOURCE", "ensure_plugin"]

PLUGIN_SOURCE = Path(__file__).with_name("tk_timebase.c")


def ensure_plugin(tools: ToolPaths, cache: Path | None = None) -> Path:
    src = PLUGIN_SOURCE.read_bytes()
    digest = hashlib.sha256(src).hexdigest()[:16]
    out = (cache or cache_dir()) / "plugin" / digest / "tk_timebase.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    argv = [
        tools.host_gcc,
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-fvisibility=hidden",
        "-o",
        str(tmp),
        str(PLUGIN_SOURCE),
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise EnvironmentProblem(
            f"{tools.host_gcc} not found; it builds the TCG plugin", hint="apt-get install gcc"
        ) from None
    if proc.returncode != 0:
        raise EnvironmentProblem(
            "building the TCG timebase plugin failed: " + proc.stderr.strip().splitlines()[-1][:200]
        )
    tmp.replace(out)
    return out
