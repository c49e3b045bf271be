"""A made-up L1 kernel for the fake peers: the real probe set at invented addresses, and
the options, assets and tools a Recorder is built from (no guest build needed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tracekit.config import load_machine, load_scenarios, load_tools
from tracekit.guest.assets import GuestAssets
from tracekit.guest.runner import DONE, READY, validate_request
from tracekit.kernel.kallsyms import SymbolTable
from tracekit.model.ground_truth import GROUND_TRUTH_PREFIX
from tracekit.probes.resolve import ResolvedProbe, ResolvedProbeSet
from tracekit.probes.spec import load_probe_set
from tracekit.record.options import RecordOptions
from tracekit.record.resolve import Resolution

KERNEL_BASE = 0xFFFF800008010000
#: Where the nVHE hyp code sits in the kernel image (its __kvm_nvhe_* symbols).
HYP_BASE = 0xFFFF800009000000
HOST_VECTOR = HYP_BASE + 0x800
#: The EL2 VA this boot chose for the hyp code (a random tag: va_layout.c).
VBAR_EL2 = 0x00007A8F09000800
HYP_DELTA = VBAR_EL2 - HOST_VECTOR
PROBE_SET = "linux-6.1"


def resolution(
    kvm_mode: str = "vhe",
    *,
    skip_entry: frozenset[str] = frozenset(),
    plugin_values: bool = False,
) -> Resolution:
    """``plugin_values``: as record --plugin-values resolves (stop probes read by the
    plugin, no GDB stop)."""
    from tracekit.probes.program import CaptureProgram, world_programs

    pset = load_probe_set(PROBE_SET)
    probes = []
    for i, spec in enumerate(s for s in pset.probes if kvm_mode in s.kvm_modes):
        base = HYP_BASE + 0x1000 if spec.hyp else KERNEL_BASE
        stops = spec.mode == "stop" and not plugin_values
        captures = tuple((name, f"$x{n}") for n, name in enumerate(spec.capture)) if stops else ()
        programs = (
            tuple(CaptureProgram(name, f"x{n}") for n, name in enumerate(spec.capture))
            + world_programs(kvm_mode)
            if plugin_values and spec.mode == "stop"
            else ()
        )
        probes.append(
            ResolvedProbe(
                spec,
                base + 0x40 * i,
                spec.symbol,
                f"{spec.symbol}+{spec.offset:#x}",
                captures,
                skip_entry=spec.name in skip_entry,
                stops=stops,
                programs=programs,
            )
        )
    symbols = SymbolTable.from_dict([[HOST_VECTOR, "t", pset.hyp_host_vector]])
    return Resolution(
        PROBE_SET,
        pset,
        ResolvedProbeSet(tuple(probes), (), ()),
        symbols,
        Path("/nonexistent/tk_timebase.so"),
        {},
    )


def assets(tmp: Path) -> GuestAssets:
    return GuestAssets(
        kernel_package="linux-image-fake",
        kernel_version="6.1.0-fake",
        kernel_release="6.1.0-fake-arm64",
        kernel_family="6.1",
        kernel_banner="Linux version 6.1.0-fake-arm64",
        image=str(tmp / "Image"),
        kernel_config="",
        symbols="",
        layout="",
        symbol_count=1,
        busybox_version="",
        vmm="",
        vmm_hash="",
        initramfs=str(tmp / "initramfs.cpio.gz"),
        built_at=0.0,
    )


def options(tmp: Path, kvm_mode: str = "vhe", **kw: object) -> RecordOptions:
    profile = dataclasses.replace(load_machine(kvm_mode), boot_timeout_s=5)
    catalog = load_scenarios()
    req = validate_request(catalog.get("mixed"), 2, 2)
    opts = RecordOptions(req, profile, tmp / "out" / "t.pftrace", stall_timeout_s=1.0)
    return dataclasses.replace(opts, **kw)  # type: ignore[arg-type]


tools = load_tools


def ready(kvm_mode: str = "vhe") -> str:
    return READY + json.dumps({"dev_kvm": "yes", "kvm_mode": kvm_mode})


def ground_truth() -> str:
    body = {"scenario": "mixed", "vcpus": 2, "count": 2, "ok": True, "interrupts": []}
    return GROUND_TRUTH_PREFIX + json.dumps(body)


def done() -> str:
    return DONE + "{}"
