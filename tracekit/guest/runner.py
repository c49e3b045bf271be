"""Run one L2 scenario inside L1, untraced, and collect its ground truth."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracekit.config import MachineProfile, ScenarioSpec, ToolPaths
from tracekit.errors import GroundTruthError, ScenarioError, VMError
from tracekit.guest.assets import GuestAssets
from tracekit.model.ground_truth import GROUND_TRUTH_PREFIX, GroundTruth, parse_ground_truth_line
from tracekit.vm.argv import LaunchSpec, build_argv
from tracekit.vm.qemu import QemuProcess
from tracekit.vm.runtime import RuntimeDir

__all__ = [
    "GuestRunResult",
    "ScenarioRequest",
    "run_scenario",
    "scenario_kernel_args",
    "validate_request",
]

log = logging.getLogger(__name__)

READY = "TRACEKIT-L1-READY "
DONE = "TRACEKIT-L1-DONE "
L1_ERROR = "TRACEKIT-L1-ERROR "


@dataclass(frozen=True)
class ScenarioRequest:
    scenario: ScenarioSpec
    count: int
    vcpus: int


@dataclass(frozen=True)
class GuestRunResult:
    ground_truth: GroundTruth
    ready: dict[str, Any]
    wall_boot_s: float
    wall_total_s: float
    #: Host seconds from L1's ready line to the ground truth (the scenario itself).
    wall_scenario_s: float
    console_log: Path


def validate_request(spec: ScenarioSpec, count: int | None, vcpus: int) -> ScenarioRequest:
    n = spec.default_count if count is None else count
    if n < 1 or n > 100_000:
        raise ScenarioError(f"--count {n} is out of range", hint="use 1..100000")
    if vcpus < spec.min_vcpus or vcpus > 8:
        raise ScenarioError(
            f"scenario {spec.name!r} needs {spec.min_vcpus}..8 vCPUs, got {vcpus}",
            hint=f"use --vcpus {max(spec.min_vcpus, 2)}",
        )
    return ScenarioRequest(spec, n, vcpus)


def scenario_kernel_args(req: ScenarioRequest, *, hold: bool = False) -> tuple[str, ...]:
    args = (
        f"tracekit.scenario={req.scenario.name}",
        f"tracekit.count={req.count}",
        f"tracekit.vcpus={req.vcpus}",
    )
    return (*args, "tracekit.hold=1") if hold else args


def parse_ready(line: str) -> dict[str, Any]:
    try:
        data = json.loads(line[len(READY) :])
    except json.JSONDecodeError:
        raise VMError(f"L1 printed a malformed ready line: {line[:80]!r}") from None
    return dict(data)


def wait_for_l1(qemu: QemuProcess, profile: MachineProfile) -> dict[str, Any]:
    """Until L1's ready line (its /init: KVM up in the profile's mode); its contents.

    :raises VMError: L1 reported an error, did not boot in time, or came up wrong.
    """
    line = qemu.wait_for_line([READY, L1_ERROR], profile.boot_timeout_s, deadline_what="L1 to boot")
    if line.startswith(L1_ERROR):
        raise VMError("L1: " + line[len(L1_ERROR) :])
    ready = parse_ready(line)
    check_ready(ready, profile)
    return ready


def check_ready(ready: dict[str, Any], profile: MachineProfile) -> None:
    if ready.get("dev_kvm") != "yes":
        raise VMError(
            "L1 booted without /dev/kvm",
            hint="the kernel needs KVM and QEMU needs virtualization=on",
        )
    if ready.get("kvm_mode") != profile.kvm_mode:
        raise VMError(
            f"L1 KVM came up in {ready.get('kvm_mode')!r} mode, "
            f"the machine profile {profile.name!r} expects {profile.kvm_mode!r}"
        )


def run_scenario(
    req: ScenarioRequest,
    profile: MachineProfile,
    assets: GuestAssets,
    tools: ToolPaths,
    *,
    on_phase: Callable[[str], None] = lambda _p: None,
    keep_runtime: bool = False,
) -> GuestRunResult:
    """Boot L1, run the scenario in L2, return its ground truth; QEMU always ends."""
    runtime = RuntimeDir.create()
    spec = LaunchSpec(
        qemu=tools.qemu,
        kernel=assets.image_path,
        initrd=assets.initramfs_path,
        kernel_args=scenario_kernel_args(req),
        qmp=False,
    )
    start = time.monotonic()
    try:
        with QemuProcess(build_argv(profile, spec, runtime), runtime) as qemu:
            on_phase("booting L1")
            ready = wait_for_l1(qemu, profile)
            boot_s = time.monotonic() - start
            on_phase(f"running scenario {req.scenario.name} in L2")
            line = qemu.wait_for_line(
                [GROUND_TRUTH_PREFIX, DONE],
                req.scenario.timeout_s,
                deadline_what=f"the {req.scenario.name} ground truth",
            )
            if line.startswith(DONE):
                raise GroundTruthError(
                    f"the L2 VMM ended without a ground-truth line ({line[len(DONE) :]})",
                    hint=f"see {runtime.console_log}",
                )
            truth = parse_ground_truth_line(line)
            scenario_s = time.monotonic() - start - boot_s
            with contextlib.suppress(VMError):
                qemu.wait_for_line([DONE], 30, deadline_what="L1 to finish")
            total = time.monotonic() - start
            result = GuestRunResult(truth, ready, boot_s, total, scenario_s, runtime.console_log)
    except BaseException:
        # Keep the runtime directory: the error message points at its console log.
        raise
    if not keep_runtime:
        runtime.remove()
    return result
