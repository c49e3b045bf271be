"""Every program tracekit and its tests run is installed by set-up, on this machine.

A green CI can hide a missing install step (a program left on the machine by earlier
work). This finds the programs the code runs — configs/tools.toml and every literal
``subprocess`` argv in tracekit/ and tests/ — asks dpkg which package provides each, and
requires that package to be listed in configs/host-packages.txt for this Debian release
(or to be essential, i.e. on every Debian system).
"""

from __future__ import annotations

import ast
import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tracekit.config import load_tools
from tracekit.guest.debian import host_codename

_RUNNERS = {"run", "Popen", "check_output", "check_call", "call", "_run"}


def literal_programs(roots: list[Path]) -> dict[str, str]:
    """program -> first file that runs it, from ``run([...])``-style calls."""
    found: dict[str, str] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                first = node.args[0]
                if name in _RUNNERS and isinstance(first, ast.List) and first.elts:
                    head = first.elts[0]
                    if isinstance(head, ast.Constant) and isinstance(head.value, str):
                        found.setdefault(head.value, str(path.relative_to(REPO)))
    return found


def listed_packages(release: str) -> set[str]:
    packages = set()
    for line in (REPO / "configs" / "host-packages.txt").read_text().splitlines():
        words = line.split()
        if words and not words[0].startswith("#") and release in words[1].split(","):
            packages.add(words[0])
    return packages


def owning_package(program: str) -> str | None:
    path = shutil.which(program)
    if path is None:
        return None
    candidates = [path, os.path.realpath(path)]
    # merged /usr: dpkg may know /bin/x for what PATH finds as /usr/bin/x
    candidates += [c.removeprefix("/usr") for c in candidates if c.startswith("/usr/")]
    for candidate in candidates:
        proc = subprocess.run(
            ["dpkg", "-S", candidate], capture_output=True, text=True, check=False
        )
        if proc.returncode == 0:
            return proc.stdout.split(":", 1)[0].split(",")[0].strip()
    return None


def is_essential(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Essential} ${Priority}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.split()[:1] == ["yes"] or "required" in proc.stdout.split()


@pytest.mark.unit
def test_the_scanner_finds_literal_argv() -> None:
    programs = literal_programs([REPO / "tracekit", REPO / "tests"])
    assert "bpftool" in programs and "dpkg" in programs


@pytest.mark.integration
def test_every_program_comes_from_a_listed_package() -> None:
    release = host_codename()
    listed = listed_packages(release)
    assert listed, f"configs/host-packages.txt lists nothing for {release!r}"
    tools = load_tools(env={})
    programs = {getattr(tools, f.name): "configs/tools.toml" for f in dataclasses.fields(tools)}
    programs |= literal_programs([REPO / "tracekit", REPO / "tests"])
    programs["make"] = "Makefile"
    problems = []
    for program, where in sorted(programs.items()):
        package = owning_package(program)
        if package is None:
            problems.append(f"{program} ({where}): not installed, or not from a Debian package")
        elif package not in listed and not is_essential(package):
            problems.append(f"{program} ({where}): from {package}, which set-up does not install")
    assert not problems, "; ".join(problems)


@pytest.mark.integration
def test_the_trace_processor_finds_its_libraries() -> None:
    binary = REPO.parent / "shared" / "tools" / "trace_processor_shell"
    assert binary.exists(), f"{binary} is missing (the shared tools folder beside the repo)"
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True)
    missing = [line.strip() for line in proc.stdout.splitlines() if "not found" in line]
    assert not missing, f"set-up lacks libraries of trace_processor_shell: {missing}"
