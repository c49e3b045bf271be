"""The raw event: one thing that happened at one instant on one L1 CPU (pure data).

Two sources produce events, merged on one timeline (instructions executed, 1 insn = 1 ns
under ``-icount shift=0``; docs/timebase.md):

* ``probe``: a kernel probe executed (timestamped by the TCG plugin; for ``stop`` probes
  with the values GDB read at the breakpoint);
* ``gic``: a QEMU GICv3 trace event (list-register write, guest acknowledge/EOI, SGI
  generation), timestamped by the plugin's marker on the instruction that raised it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from tracekit.errors import TraceFileError

__all__ = ["RawEvent", "read_events", "write_events"]


@dataclass(frozen=True)
class RawEvent:
    t: int
    cpu: int
    source: str
    name: str
    role: str
    phase: str = ""
    values: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "t": self.t,
                "cpu": self.cpu,
                "src": self.source,
                "name": self.name,
                "role": self.role,
                "phase": self.phase,
                "v": dict(self.values),
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, line: str) -> RawEvent:
        try:
            d = json.loads(line)
            values = {str(k): int(v) for k, v in dict(d.get("v", {})).items()}
            return cls(
                int(d["t"]),
                int(d["cpu"]),
                str(d["src"]),
                str(d["name"]),
                str(d["role"]),
                str(d.get("phase", "")),
                values,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TraceFileError(f"malformed raw event line {line[:60]!r} ({exc})") from None

    def get(self, key: str, default: int | None = None) -> int | None:
        return self.values.get(key, default)


def write_events(events: Iterable[RawEvent], out: IO[str]) -> int:
    n = 0
    for ev in events:
        out.write(ev.to_json() + "\n")
        n += 1
    return n


def read_events(lines: Iterable[str]) -> Iterator[RawEvent]:
    for line in lines:
        if line.strip():
            yield RawEvent.from_json(line)


def as_dict(ev: RawEvent) -> dict[str, Any]:
    return json.loads(ev.to_json())  # type: ignore[no-any-return]
