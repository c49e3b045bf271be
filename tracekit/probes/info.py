"""One resolved probe as a recording keeps it (pure data).

The one shape of a probe after resolution: :meth:`ResolvedProbe.info` makes it, the
recording's ``meta.json`` holds it (``"probes"``, :meth:`ProbeInfo.to_json`), and the merge
reads it back (:meth:`ProbeInfo.from_json`) to stamp events, by ``record`` at its end as
by ``tracekit export RAW`` on a recording of any age.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ProbeInfo"]


@dataclass(frozen=True, kw_only=True)
class ProbeInfo:
    name: str
    #: Where the timebase plugin stamps it (the executed instruction).
    address: int
    phase: str
    #: Its role (a ``Role``'s plain string: events carry it as read from JSON).
    role: str
    #: "stop" (a debugger stop reads its values) or "timing".
    mode: str
    #: Where the debugger breaks (None: at ``address``); ``address`` + 4 with
    #: ``skip_entry``.
    break_address: int | None = None
    skip_entry: bool = False
    #: nVHE hyp code (its addresses are EL2 ones once relocated).
    hyp: bool = False
    #: ``func+0x10`` for humans.
    location: str = ""
    #: Value name -> inference rule (ProbeSpec.infer; model/context.py).
    infer: Mapping[str, str] = field(default_factory=dict)
    #: Constant values every execution implies (ProbeSpec.implies).
    implies: Mapping[str, int] = field(default_factory=dict)
    #: (value name, access pc, offset) of its pointer sites (probes/pointer.py).
    pointers: tuple[tuple[str, int, int], ...] = ()
    #: [start, end) of its function's code, for ``frame`` probes (a queue's call stack
    #: is matched against it: merge.py ``_frame_sources``).
    code: tuple[int, int] | None = None
    #: Names of the values the TCG plugin reads here (``record --plugin-values``), ``@``
    #: ones included; empty: none.
    plugin_values: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Its ``meta.json`` entry, keys in the order recordings always wrote them
        (``plugin_values`` only where the plugin reads values: a default recording's
        entries are what they always were)."""
        out = {
            "name": self.name,
            "address": self.address,
            "break_address": self.address if self.break_address is None else self.break_address,
            "skip_entry": self.skip_entry,
            "hyp": self.hyp,
            "location": self.location,
            "phase": self.phase,
            "role": self.role,
            "mode": self.mode,
            "infer": dict(self.infer),
            "implies": dict(self.implies),
            "pointers": [list(site) for site in self.pointers],
            "code": list(self.code) if self.code else None,
        }
        if self.plugin_values:
            out["plugin_values"] = list(self.plugin_values)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ProbeInfo:
        """From a ``meta.json`` entry (older recordings may lack the optional keys)."""
        code = d.get("code")
        brk = d.get("break_address")
        return cls(
            name=str(d["name"]),
            address=int(d["address"]),
            phase=str(d["phase"]),
            role=str(d["role"]),
            mode=str(d["mode"]),
            break_address=None if brk is None else int(brk),
            skip_entry=bool(d.get("skip_entry", False)),
            hyp=bool(d.get("hyp", False)),
            location=str(d.get("location", "")),
            infer={str(k): str(v) for k, v in dict(d.get("infer") or {}).items()},
            implies={str(k): int(v) for k, v in dict(d.get("implies") or {}).items()},
            pointers=tuple((str(n), int(pc), int(off)) for n, pc, off in d.get("pointers") or []),
            code=(int(code[0]), int(code[1])) if code else None,
            plugin_values=tuple(str(n) for n in d.get("plugin_values") or ()),
        )
