"""``tracekit check``: a trace as the Perfetto UI sees it, through Perfetto's own parser.

``summary`` reads traces back with tracekit's own reader; this asks the independent one
(``trace_processor_shell``, the parser the UI runs as WebAssembly) and checks what a user
would notice: import errors or data loss, slices left open, and whether each chain's flow
arrows lead through its phases in order to the guest's acknowledgement. The queries run
in :class:`TraceProcessorRunner` (the I/O); :func:`evaluate` judges their rows (pure).

Chains are the slices holding a chain row of the table (``tracekit.row``,
``model/table.py``); a trace without the table is the same one-line error as for
``summary`` (re-export it).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracekit.errors import EnvironmentProblem, TraceFileError
from tracekit.export.perfetto import END_MARKER
from tracekit.model.table import CHAIN_ROW, META_ARG, ROW_ARG, VERSION_ARG, phase_of, require_schema

__all__ = ["QUERIES", "TraceCheck", "TraceProcessorRunner", "evaluate", "find_trace_processor"]

#: Debug annotations as the trace processor's args table names them: "debug." first, and a
#: "." inside the name becomes "_" (tracekit.row -> debug.tracekit_row; Perfetto v56).
_ROW, _META, _VERSION = (
    "debug." + name.replace(".", "_") for name in (ROW_ARG, META_ARG, VERSION_ARG)
)
#: What the checks ask the trace processor.
QUERIES = {
    # The recording instant and the chain table version it names (model/table.py).
    "recording": f"select extract_arg(arg_set_id, '{_VERSION}') as version from slice"
    f" where extract_arg(arg_set_id, '{_META}') is not null",
    # The UI shows these as import errors (stats with severity error / data_loss).
    "stats": "select name, idx, severity, source, value from stats"
    " where value > 0 and severity in ('error', 'data_loss')",
    "open_slices": "select id, ts, name from slice where dur < 0",
    "chain_slices": "select s.id, s.ts, s.dur, s.name,"
    f" extract_arg(s.arg_set_id, '{_ROW}') as row,"
    " extract_arg(s.arg_set_id, 'debug.chain') as chain,"
    " extract_arg(s.arg_set_id, 'debug.class') as cls,"
    " extract_arg(s.arg_set_id, 'debug.complete') as complete"
    " from slice s where extract_arg(s.arg_set_id, 'debug.chain') is not null",
    "flows": "select f.slice_out, f.slice_in, b.ts as in_ts, b.name as in_name"
    " from flow f join slice b on b.id = f.slice_in",
    "end": "select extract_arg(arg_set_id, 'debug.chains') as chains from slice"
    f" where name = '{END_MARKER}'",
}
#: The delivery phases, in the order every chain goes through them. A (the source) starts
#: before E ends, because its queue precedes the list-register write inside E: first for
#: virtual and IPI chains, after the exit the timer caused for a hardware chain, and even
#: after E started when another CPU's flush began just before the source queued
#: (docs/phases.md, rule 4).
DELIVERY = ("B", "C", "D", "E", "F")
ACK_PREFIX = "L2 acknowledges INTID"


@dataclass(frozen=True)
class TraceCheck:
    name: str
    ok: bool
    detail: str


def _phase(name: object) -> str | None:
    return phase_of(str(name))


def _chain_problems(
    chain: int,
    slices: Sequence[Mapping[str, Any]],
    nxt: Mapping[int, tuple[int, int, str]],
    is_target: set[int],
) -> list[str]:
    """Follow the flow arrows from the chain's first phase slice; what is wrong with it."""
    phases = [s for s in slices if _phase(s["name"])]
    if not phases:
        return []
    ids = {int(s["id"]) for s in phases}
    starts = [int(s["id"]) for s in phases if int(s["id"]) not in is_target]
    if len(starts) != 1:
        return [f"chain {chain}: {len(starts)} flow starts among its phase slices (one expected)"]
    by_id = {int(s["id"]): s for s in phases}
    walk, cur, seen_ack = [starts[0]], starts[0], False
    last_ts = int(by_id[cur]["ts"])
    while cur in nxt:
        cur, ts, name = nxt[cur]
        if ts < last_ts:
            return [f"chain {chain}: a flow arrow goes back in time (to {name!r})"]
        last_ts = ts
        if name.startswith(ACK_PREFIX):
            seen_ack = True
            break
        if cur not in ids:
            return [f"chain {chain}: a flow arrow leaves the chain (to {name!r})"]
        walk.append(cur)
    letters = [str(_phase(by_id[i]["name"])) for i in walk]
    problems = []
    if len(walk) != len(phases):
        problems.append(f"chain {chain}: flows reach {len(walk)} of its {len(phases)} phases")
    delivery = [p for p in letters if p != "A"]
    if delivery != [p for p in DELIVERY if p in delivery] or len(set(letters)) != len(letters):
        problems.append(f"chain {chain}: phases linked as {'→'.join(letters)}")
    if "A" in letters and "E" in letters:
        a = by_id[walk[letters.index("A")]]
        e = by_id[walk[letters.index("E")]]
        if int(a["ts"]) > int(e["ts"]) + int(e["dur"]):
            problems.append(f"chain {chain}: A starts after E ended ({'→'.join(letters)})")
    if not seen_ack:
        problems.append(f"chain {chain}: the flow does not end at the guest's acknowledgement")
    return problems


def evaluate(
    rows: Mapping[str, Sequence[Mapping[str, Any]]], source: str = "trace"
) -> list[TraceCheck]:
    """Judge the rows of :data:`QUERIES` (pure). A trace whose chain table this tracekit
    cannot read (not tracekit's, or written before the table) is a TraceFileError saying
    what to do, as ``summary`` says it: its chains could not be told."""
    recording = rows["recording"]
    version = recording[0]["version"] if recording else None
    require_schema(bool(recording), version if version.__class__ is int else 0, source)
    checks = []
    stats = rows["stats"]
    checks.append(
        TraceCheck(
            "imports without errors or data loss",
            not stats,
            "; ".join(f"{r['name']}[{r['idx']}] = {r['value']} ({r['severity']})" for r in stats)
            or "0 error / data-loss stats",
        )
    )
    open_slices = rows["open_slices"]
    checks.append(
        TraceCheck(
            "no slice left open",
            not open_slices,
            ", ".join(f"{r['name']!r} at {r['ts']}" for r in open_slices[:5])
            or "every slice has an end",
        )
    )
    nxt = {int(f["slice_out"]): (int(f["slice_in"]), int(f["in_ts"]), str(f["in_name"]))
           for f in rows["flows"]}  # fmt: skip
    is_target = {int(f["slice_in"]) for f in rows["flows"]}
    by_chain: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    heads: dict[int, Mapping[str, Any]] = {}
    for s in rows["chain_slices"]:
        chain = int(s["chain"])
        if s["row"] == CHAIN_ROW:
            heads[chain] = s
        else:
            by_chain[chain].append(s)
    problems: list[str] = []
    for chain, slices in sorted(by_chain.items()):
        problems += _chain_problems(chain, slices, nxt, is_target)
    checks.append(
        TraceCheck(
            "each chain's flow leads through its phases to the acknowledgement",
            not problems,
            "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
            if problems
            else f"{len(by_chain)} chains",
        )
    )
    end = rows["end"]
    whole = len(end) == 1 and end[0]["chains"] is not None and int(end[0]["chains"]) == len(heads)
    checks.append(
        TraceCheck(
            "the trace is whole (its end marker counts every chain)",
            whole,
            f"end marker: {end[0]['chains']} chains, {len(heads)} in the trace"
            if end
            else "no end marker: the trace was cut short (or not written by tracekit)",
        )
    )
    incomplete = [
        c
        for c, head in heads.items()
        if head.get("complete") in (1, True, "1", "true")
        and {_phase(s["name"]) for s in by_chain[c]} != set("ABCDEF")
    ]
    checks.append(
        TraceCheck(
            "complete chains have all six phases",
            not incomplete,
            f"chains {sorted(incomplete)[:10]} lack phases"
            if incomplete
            else f"{len(heads)} chains",
        )
    )
    return checks


def find_trace_processor(explicit: str | None = None) -> str:
    """The trace_processor_shell to use: ``explicit``, else ``$TRACEKIT_TRACE_PROCESSOR``."""
    path = explicit or os.environ.get("TRACEKIT_TRACE_PROCESSOR")
    if not path or not os.path.isfile(path):
        raise EnvironmentProblem(
            "this needs Perfetto's trace_processor_shell binary, which no package registry ships",
            hint="download it where you can and pass --trace-processor PATH or set "
            "TRACEKIT_TRACE_PROCESSOR; `tracekit summary` works without it",
        )
    return path


class TraceProcessorRunner:
    """Runs :data:`QUERIES` on one trace with ``perfetto.trace_processor`` (the adapter)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def rows(self, trace: Path) -> dict[str, list[dict[str, Any]]]:
        if not trace.is_file():
            raise TraceFileError(f"trace file {trace} does not exist")
        from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig

        try:
            with TraceProcessor(
                trace=str(trace), config=TraceProcessorConfig(bin_path=self.binary)
            ) as tp:
                return {
                    key: [dict(r.__dict__) for r in tp.query(sql)] for key, sql in QUERIES.items()
                }
        except Exception as exc:  # the client raises bare Exceptions for a failed load
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            said = next((line for line in lines if "Traceback" not in line), type(exc).__name__)
            raise TraceFileError(
                f"Perfetto's trace processor cannot load {trace}: {said[:200]}",
                hint="is it a tracekit .pftrace?",
            ) from None

    def check(self, trace: Path) -> list[TraceCheck]:
        return evaluate(self.rows(trace), str(trace))
