"""The timebase plugin's side of a recording: its probe file's format, and the adapter
that hands it to the plugin (``probes=`` in the raw directory; stamps land in qemu.log)."""

from __future__ import annotations

from pathlib import Path

from tracekit.probes.resolve import ResolvedProbeSet

__all__ = ["PluginStamps", "plugin_probe_file"]


def plugin_probe_file(probes: ResolvedProbeSet) -> str:
    """The timebase plugin's input: probe PCs, and ``m PC`` for pointer sites."""
    lines = [f"{p.stamp_address:x}\n" for p in probes.probes]
    lines += [f"m {pc:x}\n" for p in probes.probes for _, pc, _ in p.pointer_sites]
    return "".join(lines)


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
        self.probe_file.write_text(text)
