"""The timebase plugin's side of a recording: its probe file's format, and the adapter
that hands it to the plugin (``probes=`` in the raw directory; stamps land in qemu.log)."""

from __future__ import annotations

import os
from pathlib import Path

from tracekit.errors import ConfigError
from tracekit.probes.program import CaptureProgram
from tracekit.probes.resolve import ResolvedProbe, ResolvedProbeSet

__all__ = ["MAX_CAPTURES", "MAX_LOADS", "MAX_NAME", "PluginStamps", "plugin_probe_file"]

#: tk_timebase.c's limits (MAX_CAPTURES, MAX_NAME - 1, MAX_LOADS): one TKP + TKV pair
#: fits its fixed line buffer.
MAX_CAPTURES = 48
MAX_NAME = 31
MAX_LOADS = 8


def plugin_probe_file(probes: ResolvedProbeSet, hyp_vector: int | None = None) -> str:
    """The timebase plugin's input: probe PCs, ``m PC`` for pointer sites and ``c PC ...``
    capture programs (probes/program.py) at each probe's stamp address.

    ``hyp_vector`` (the kernel VA of the nVHE host vector): the plugin places the hyp
    probes itself (``h`` and ``k`` lines, tk_timebase.c relocate_hyp) instead of waiting
    for the recorder to learn their EL2 addresses at a debugger stop (record/hyp.py)."""
    in_plugin = hyp_vector is not None
    lines = [f"h {hyp_vector:x}\n"] if in_plugin else []
    lines += [
        f"k {p.stamp_address:x}\n" if in_plugin and p.spec.hyp else f"{p.stamp_address:x}\n"
        for p in probes.probes
    ]
    lines += [f"m {pc:x}\n" for p in probes.probes for _, pc, _ in p.pointer_sites]
    lines += [c.line(p.stamp_address) for p in probes.probes for c in _checked(p)]
    return "".join(lines)


def _checked(probe: ResolvedProbe) -> tuple[CaptureProgram, ...]:
    """The probe's capture programs, refused here (before QEMU starts) where the plugin
    would have to drop them."""
    programs = probe.programs
    if len(programs) > MAX_CAPTURES:
        raise ConfigError(
            f"probe {probe.name}: {len(programs)} plugin-read values, the plugin reads at most"
            f" {MAX_CAPTURES} per probe",
            hint="capture fewer values, or record without --plugin-values",
        )
    for c in programs:
        if len(c.name) > MAX_NAME or len(c.loads) > MAX_LOADS:
            raise ConfigError(
                f"probe {probe.name}: capture {c.name} exceeds the plugin's limits (names of"
                f" at most {MAX_NAME} characters, at most {MAX_LOADS} pointer loads)",
                hint="shorten it, or record without --plugin-values",
            )
    return programs


class PluginStamps:
    """tk_timebase (vm/plugin/) as a :class:`~tracekit.record.peers.StampStream`: both of
    its files live in the raw directory, so a crash leaves them for ``tracekit export``."""

    def __init__(self, raw_dir: Path) -> None:
        self._raw_dir = raw_dir

    @property
    def probe_file(self) -> Path:
        return self._raw_dir / "probes.txt"

    @property
    def log_file(self) -> Path:
        return self._raw_dir / "qemu.log"

    def set_probes(self, text: str) -> None:
        """Replaced whole, never rewritten in place: the plugin re-reads the file at every
        translation flush, and QEMU 7.2 runs the flush of a debugger stop on its own
        thread, so it can come while the nVHE relocation rewrites the file; a truncated
        file read then left the plugin without probes until the next flush (seen in a
        clean clone: a vCPU's kvm_arch_vcpu_postcreate stamp, and every stamp after it
        until the next stop, missing)."""
        tmp = self.probe_file.with_name(self.probe_file.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.probe_file)

    def written(self) -> int:
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0
