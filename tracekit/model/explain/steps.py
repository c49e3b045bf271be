"""The records of a walk (:class:`Step`, :class:`Explanation`) and :class:`Walk`, which
gathers the steps as the phase builders find them (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tracekit.model.explain.index import TraceIndex
from tracekit.model.trace import Slice

__all__ = ["Explanation", "Step", "Walk", "hex_value"]


@dataclass(frozen=True)
class Step:
    n: int
    phase: str
    t_ns: int
    #: Since the previous step (None for the first).
    dt_ns: int | None
    l1_cpu: int | None
    vcpu: int | None
    #: Kernel function (a probe), or what QEMU or the guest did.
    function: str
    #: ``function+0x..`` where the recording has it.
    location: str
    #: ``kernel`` (an L1 kernel function), ``gic`` (QEMU's GIC model), ``guest`` (L2).
    kind: str
    what: str
    #: The name in the 32-bit study note, where one exists.
    original: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)
    #: ``file:line`` in the kernel source (when the recording had debug info).
    source_line: str = ""


@dataclass(frozen=True)
class Explanation:
    chain: Mapping[str, Any]
    steps: tuple[Step, ...]
    #: (phase, what its absence means) for a partial chain.
    missing: tuple[tuple[str, str], ...]
    #: What the order of the steps tells (e.g. the vCPU had left the guest before A).
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": dict(self.chain),
            "steps": [asdict(s) | {"values": dict(s.values)} for s in self.steps],
            "missing": [{"phase": p, "meaning": m} for p, m in self.missing],
            "notes": list(self.notes),
        }


def hex_value(v: Any) -> str:
    return f"{int(v) & 0xFFFFFFFFFFFFFFFF:#x}" if isinstance(v, int) else str(v)


class Walk:
    """The steps of one chain's walk in the order the builders add them (``explain_chain``
    then orders them by time and numbers them)."""

    def __init__(self, index: TraceIndex, names: Mapping[str, str]) -> None:
        self.index = index
        self.names = names
        self.steps: list[Step] = []

    def add(
        self,
        phase: str,
        inst: Slice | None,
        *,
        t: int | None = None,
        cpu: int | None,
        vcpu: int | None,
        kind: str = "kernel",
        what: str,
        function: str | None = None,
        key: str | None = None,
    ) -> None:
        if inst is None and t is None:
            return
        at = inst.start if inst is not None else int(t or 0)
        name = function or (inst.name if inst is not None else "")
        location = self.index.locations.get(name, name) if kind == "kernel" else ""
        prev = self.steps[-1].t_ns if self.steps else None
        values = {k: v for k, v in (inst.args if inst else {}).items() if k != "phase"}
        self.steps.append(
            Step(
                len(self.steps) + 1,
                phase,
                at,
                None if prev is None else at - prev,
                cpu,
                vcpu,
                name,
                location,
                kind,
                what,
                self.names.get(key or name, ""),
                values,
                self.index.lines.get(location, "") if kind == "kernel" else "",
            )
        )

    def first(self, cpu: int | None, start: int, end: int, *names: str) -> Slice | None:
        """The first probe hit on ``cpu`` in [start, end] named one of ``names`` (a name
        ending in ``*`` matches as a prefix)."""
        if cpu is None:
            return None
        exact = {n for n in names if not n.endswith("*")}
        prefixes = tuple(n[:-1] for n in names if n.endswith("*"))
        for x in self.index.window(self.index.probe.get(cpu, []), start, end):
            if x.name in exact or (prefixes and x.name.startswith(prefixes)):
                return x
        return None
