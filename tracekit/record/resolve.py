"""Step 1, resolve: the kernel's probe set -> addresses and GDB expressions, the plugin
built for this QEMU, and a clean raw directory holding the plugin's probe file."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracekit.config import ToolPaths
from tracekit.errors import EnvironmentProblem, TracekitError
from tracekit.guest.assets import GuestAssets
from tracekit.kernel.btf import load_btf_from_file
from tracekit.kernel.kallsyms import SymbolTable
from tracekit.probes.resolve import ResolvedProbeSet, resolve_probes
from tracekit.probes.select import choose_probe_set
from tracekit.probes.spec import ProbeSet, load_probe_set
from tracekit.record.options import RecordOptions
from tracekit.record.peers import StampStream
from tracekit.vm.plugin import ensure_plugin, qemu_plugin_api

__all__ = [
    "PLUGIN_VALUES_API",
    "Resolution",
    "plugin_values_by_default",
    "prepare_raw_dir",
    "resolve",
    "resolve_for",
]

log = logging.getLogger(__name__)

#: Files of an earlier recording to the same output that this one rewrites.
STALE = ("hits.jsonl", "qemu.log", "events.jsonl", "console.log")


@dataclass(frozen=True)
class Resolution:
    """What a recording needs to know before it launches anything."""

    probe_set_name: str
    probe_set: ProbeSet
    probes: ResolvedProbeSet
    symbols: SymbolTable
    #: The timebase plugin (.so) built for this QEMU's plugin API.
    plugin: Path
    #: file:line of probe locations when `guest build --debug-info` cached them.
    probe_lines: dict[str, str]


def _offset_resolver(assets: GuestAssets) -> Callable[[str], int]:
    layout = json.loads(Path(assets.layout).read_text())
    btf_cache: list[Any] = []

    def offset_of(member: str) -> int:
        if member in layout:
            return int(layout[member]["offset"])
        if not btf_cache:
            btf_cache.append(load_btf_from_file(assets.image_path))
        return int(btf_cache[0].member_offset(member))

    return offset_of


#: The first plugin API whose plugins can read registers and guest memory by virtual
#: address (qemu_plugin_read_memory_vaddr is new in API 4, QEMU 9.2).
PLUGIN_VALUES_API = 4


def plugin_values_by_default(qemu: str) -> bool:
    """Whether ``record`` has the plugin read the values (no debugger stop) when neither
    ``--plugin-values`` nor ``--no-plugin-values`` is given: whenever this QEMU's plugins
    can (QEMU >= 9.2). GDB stays attached, the reference ``--read-values`` checks against.

    :raises EnvironmentProblem: the QEMU cannot be run or is not supported.
    """
    return qemu_plugin_api(qemu) >= PLUGIN_VALUES_API


def resolve_for(
    assets: GuestAssets,
    pset: ProbeSet,
    kvm_mode: str = "vhe",
    *,
    read_values: bool = False,
    plugin_values: bool = False,
) -> tuple[ResolvedProbeSet, SymbolTable]:
    symbols = SymbolTable.from_json(Path(assets.symbols).read_text())
    image = assets.image_path.read_bytes()
    resolved = resolve_probes(
        pset,
        symbols,
        image,
        _offset_resolver(assets),
        kvm_mode,
        read_values=read_values,
        plugin_values=plugin_values,
    )
    return resolved, symbols


def _probe_lines(assets: GuestAssets, probes: ResolvedProbeSet) -> dict[str, str]:
    from tracekit.guest.debuginfo import load_lines

    lines = load_lines(assets.image_path.parent)
    return {p.location: lines[p.location] for p in probes.probes if p.location in lines}


def resolve(opts: RecordOptions, assets: GuestAssets, tools: ToolPaths) -> Resolution:
    # Every recording checks the kernel against the probe set: never record with probes
    # written for another kernel (probes/select.py).
    name = choose_probe_set(assets.kernel_release, assets.kernel_family, opts.probe_set)
    api = qemu_plugin_api(tools.qemu)
    if opts.plugin_values and api < PLUGIN_VALUES_API:
        raise EnvironmentProblem(
            f"--plugin-values needs a QEMU whose TCG plugin API is >= {PLUGIN_VALUES_API}"
            f" (QEMU >= 9.2); {tools.qemu} speaks API {api}",
            hint="record without --plugin-values (GDB reads the values at stops), or select"
            " QEMU 10.0 with TRACEKIT_QEMU=PATH",
        )
    pset = load_probe_set(name)
    probes, symbols = resolve_for(
        assets,
        pset,
        opts.profile.kvm_mode,
        read_values=opts.read_values,
        plugin_values=opts.plugin_values,
    )
    for probe, why in probes.skipped:
        log.warning("probe %s skipped: %s", probe, why)
    for probe, used in probes.fallbacks_used:
        log.warning("probe %s uses fallback symbol %s", probe, used)
    plugin = ensure_plugin(tools, api)
    return Resolution(name, pset, probes, symbols, plugin, _probe_lines(assets, probes))


def prepare_raw_dir(raw_dir: Path, output: Path, stamps: StampStream, probe_file: str) -> None:
    """Empty the raw directory of an earlier recording's files, and tell the plugin its
    probes (``probe_file``: record/stamps.py)."""
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        for stale in STALE:
            (raw_dir / stale).unlink(missing_ok=True)
        stamps.set_probes(probe_file)
    except OSError as exc:
        raise TracekitError(
            f"cannot write the recording to {raw_dir}: {exc.strerror}",
            hint="choose a writable --output",
        ) from None
