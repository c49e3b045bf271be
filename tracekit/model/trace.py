"""A trace read back, as plain data: what ``summary`` and ``explain`` compute from (pure).

``export/reader.py`` fills it from a ``.pftrace``; the model never imports the exporter.
``summary`` reads only :attr:`TraceContent.table` (``model/table.py``); ``explain`` walks
the slices and instants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracekit.model.table import ChainTable

__all__ = ["Slice", "TraceContent"]


@dataclass(frozen=True)
class Slice:
    track: str
    name: str
    start: int
    end: int
    args: dict[str, Any]
    depth: int


@dataclass
class TraceContent:
    tracks: dict[int, str] = field(default_factory=dict)
    groups: dict[int, str] = field(default_factory=dict)
    slices: list[Slice] = field(default_factory=list)
    instants: list[Slice] = field(default_factory=list)
    counters: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    flows_started: set[int] = field(default_factory=set)
    flows_terminated: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    packets: int = 0
    #: The chain table the trace's annotations hold (empty for a trace without one).
    table: ChainTable = field(default_factory=ChainTable)
    #: What the trace was read from, for messages (a path, or "trace").
    source: str = "trace"

    def unterminated_flows(self) -> set[int]:
        return self.flows_started - self.flows_terminated
