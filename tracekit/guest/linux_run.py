"""Run one Linux-L2 scenario (issue 15), untraced: L1 boots, QEMU with KVM boots L2 Linux.

The L1 QEMU is started as :mod:`tracekit.guest.runner` starts it (same machine profile,
same console protocol up to ``TRACEKIT-L1-READY``); then ``guests/linux-l2/init-l1``
prints ``TRACEKIT-L2-QEMU-START`` and runs the inner QEMU, whose stdout is L2's console:
L2's ``/init`` prints ``TRACEKIT-L2-INIT`` first and its report (gzip + base64) between
``TRACEKIT-L2-REPORT-BEGIN`` / ``-END`` last. Host times are taken when each line arrives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracekit.config import LinuxL2Config, MachineProfile, ToolPaths
from tracekit.errors import VMError
from tracekit.guest.linux_l2 import LinuxL2Assets
from tracekit.guest.runner import DONE, L1_ERROR, wait_for_l1
from tracekit.model.l2report import (
    REPORT_BEGIN,
    REPORT_END,
    L2Report,
    decode_report,
    parse_report,
)
from tracekit.vm.argv import LaunchSpec, build_argv
from tracekit.vm.qemu import QemuProcess
from tracekit.vm.runtime import RuntimeDir

__all__ = ["LinuxRunResult", "run_linux_l2"]

QEMU_START = "TRACEKIT-L2-QEMU-START "
QEMU_EXIT = "TRACEKIT-L2-QEMU-EXIT "
QEMU_STDERR = "TRACEKIT-L2-QEMU-STDERR "
L2_INIT = "TRACEKIT-L2-INIT"
L2_ERROR = "TRACEKIT-L2-ERROR "
L2_STEP = "TRACEKIT-L2-STEP "
#: L2 wrote its report to its disk (L1 prints it once the inner QEMU exited).
L2_REPORT_ON_DISK = "TRACEKIT-L2-REPORT-ON-DISK"


@dataclass(frozen=True)
class LinuxRunResult:
    scenario: str
    report: L2Report
    ready: dict[str, Any]
    #: Host seconds from launching L1's QEMU.
    wall_l1_ready_s: float
    wall_qemu_start_s: float
    wall_l2_init_s: float
    wall_report_s: float
    wall_total_s: float
    #: L1's uptime when the inner QEMU started and when it exited (L1's clock).
    l1_qemu_start_s: float
    l1_qemu_exit_s: float | None
    #: L2's uptime at its /init.
    l2_init_uptime_s: float
    l2_errors: tuple[str, ...]
    console_log: Path
    #: (step, host seconds since launch) when each of L2's step lines arrived.
    wall_steps: tuple[tuple[str, float], ...] = ()

    @property
    def inner_to_init_s(self) -> float:
        """Host seconds from the inner QEMU's start to L2's /init."""
        return self.wall_l2_init_s - self.wall_qemu_start_s


def _json_tail(line: str, prefix: str) -> dict[str, Any]:
    try:
        return dict(json.loads(line[len(prefix) :]))
    except (ValueError, TypeError):
        return {}


def _inner_failure(qemu: QemuProcess, line: str, what: str) -> VMError:
    """The inner QEMU ended before ``what``: its exit code, stderr and L2's last lines."""
    rc = _json_tail(line, QEMU_EXIT).get("rc", "?") if line.startswith(QEMU_EXIT) else "?"
    stderr: list[str] = []
    try:
        qemu.wait_for_line(
            [DONE],
            30,
            on_line=lambda s: (
                stderr.append(s[len(QEMU_STDERR) :]) if s.startswith(QEMU_STDERR) else None
            ),
            deadline_what="L1 to finish",
        )
    except VMError:
        pass
    l2_tail = [s for s in qemu.console_tail if not s.startswith("TRACEKIT-")][-3:]
    said = " | ".join(stderr[-3:]) or "no stderr"
    return VMError(
        f"the inner QEMU exited (code {rc}) before {what}: {said}; L2 said: "
        f"{' | '.join(l2_tail) or 'nothing'}",
        hint=f"see the L1 console in {qemu.runtime.console_log}",
    )


def run_linux_l2(
    scenario: str,
    cfg: LinuxL2Config,
    profile: MachineProfile,
    assets: LinuxL2Assets,
    tools: ToolPaths,
    *,
    on_phase: Callable[[str], None] = lambda _p: None,
    keep_runtime: bool = False,
) -> LinuxRunResult:
    """Boot L1 with the Linux-L2 initramfs, run ``scenario``, return L2's own report."""
    cfg.get(scenario)  # an unknown name is a ScenarioError before anything starts
    if scenario not in assets.scenarios:
        raise VMError(
            f"the cached Linux L2 initramfs has no scenario {scenario!r}",
            hint="run `tracekit guest build --linux-l2`",
        )
    runtime = RuntimeDir.create()
    spec = LaunchSpec(
        qemu=tools.qemu,
        kernel=Path(assets.l1_kernel),
        initrd=assets.l1_initramfs_path,
        kernel_args=(f"tracekit.scenario={scenario}",),
        qmp=False,
    )
    start = time.monotonic()

    def since() -> float:
        return time.monotonic() - start

    with QemuProcess(build_argv(profile, spec, runtime), runtime) as qemu:
        on_phase("booting L1")
        ready = wait_for_l1(qemu, profile)
        t_ready = since()
        line = qemu.wait_for_line(
            [QEMU_START, L1_ERROR, DONE], 60, deadline_what="L1 to start the inner QEMU"
        )
        if not line.startswith(QEMU_START):
            raise VMError("L1: " + line.split(" ", 1)[-1])
        t_qemu = since()
        l1_qemu_start = float(_json_tail(line, QEMU_START).get("uptime_s", 0.0))
        on_phase(f"booting L2 Linux ({scenario})")
        line = qemu.wait_for_line(
            [L2_INIT, QEMU_EXIT], cfg.timeout_s, deadline_what="L2 to reach its /init"
        )
        if line.startswith(QEMU_EXIT):
            raise _inner_failure(qemu, line, "L2 reached its /init")
        t_init = since()
        l2_uptime = float(line.split()[-1]) if len(line.split()) > 1 else 0.0
        on_phase(f"L2 workload ({scenario})")
        errors: list[str] = []
        steps: list[tuple[str, float]] = []

        def note(s: str) -> None:
            if s.startswith(L2_ERROR):
                errors.append(s[len(L2_ERROR) :])
            elif s.startswith(L2_STEP):
                steps.append((s[len(L2_STEP) :].partition(" ")[0], round(since(), 2)))

        line = qemu.wait_for_line(
            [L2_REPORT_ON_DISK, QEMU_EXIT],
            cfg.timeout_s,
            on_line=note,
            deadline_what="L2's report",
        )
        if line.startswith(QEMU_EXIT):
            raise _inner_failure(qemu, line, "L2 wrote its report")
        t_report = since()
        line = qemu.wait_for_line([QEMU_EXIT], 60, deadline_what="L2 to power off")
        l1_exit = _json_tail(line, QEMU_EXIT).get("uptime_s")
        # L1 prints the report from L2's disk once the inner QEMU has exited.
        line = qemu.wait_for_line([REPORT_BEGIN, DONE], 60, deadline_what="L2's report")
        if not line.startswith(REPORT_BEGIN):
            raise VMError("L1 found no report on L2's disk", hint="see the L1 console")
        body: list[str] = []
        qemu.wait_for_line(
            [REPORT_END],
            60,
            on_line=lambda s: body.append(s) if not s.startswith("TRACEKIT-") else None,
            deadline_what="the end of L2's report",
        )
        text = decode_report(body)
        (runtime.path / "l2-report.txt").write_text(text)
        report = parse_report(text)
        try:
            qemu.wait_for_line([DONE], 30, deadline_what="L1 to finish")
        except VMError:
            pass
        total = since()
    result = LinuxRunResult(
        scenario=scenario,
        report=report,
        ready=ready,
        wall_l1_ready_s=t_ready,
        wall_qemu_start_s=t_qemu,
        wall_l2_init_s=t_init,
        wall_report_s=t_report,
        wall_total_s=total,
        l1_qemu_start_s=l1_qemu_start,
        l1_qemu_exit_s=float(l1_exit) if l1_exit is not None else None,
        l2_init_uptime_s=l2_uptime,
        l2_errors=tuple(errors),
        console_log=runtime.console_log,
        wall_steps=tuple(steps),
    )
    if not keep_runtime:
        runtime.remove()
    return result
