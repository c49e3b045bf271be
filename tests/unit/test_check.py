"""``tracekit check``'s judgement of the trace processor's rows (pure; the real binary runs
on every trace the suite writes: tests/trace_check.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tracekit.errors import TraceFileError
from tracekit.export.check import QUERIES, evaluate
from tracekit.model.table import SCHEMA_VERSION

pytestmark = pytest.mark.unit


def rows(
    order: str = "ABCDEF", *, ack: bool = True, **extra: Any
) -> dict[str, list[dict[str, Any]]]:
    """One chain (id 7) whose phase slices are linked in ``order`` (time increasing)."""
    names = {"A": "A source: interrupt raised", "B": "B guest exit to EL2",
             "C": "C EL2 -> host kernel", "D": "D handle_exit (IRQ)",
             "E": "E inject: flush to list registers", "F": "F guest entry"}  # fmt: skip
    slices = [{"id": 100, "ts": 0, "dur": 900, "name": "INTID 40 -> vCPU1 #7", "row": "chain",
               "chain": 7, "cls": "virtual", "complete": 1}]  # fmt: skip
    slices += [
        {"id": i, "ts": 10 * i, "dur": 5, "name": names[p], "row": None, "chain": 7,
         "cls": None, "complete": None}
        for i, p in enumerate(order, start=1)
    ]  # fmt: skip
    flows = [
        {"slice_out": i, "slice_in": i + 1, "in_ts": 10 * (i + 1), "in_name": names[order[i]]}
        for i in range(1, len(order))
    ]
    if ack:
        flows.append({"slice_out": len(order), "slice_in": 200, "in_ts": 10 * len(order) + 5,
                      "in_name": "L2 acknowledges INTID 40"})  # fmt: skip
    base = {"recording": [{"version": SCHEMA_VERSION}], "stats": [], "open_slices": [],
            "chain_slices": slices, "flows": flows}  # fmt: skip
    return base | {"end": [{"chains": 1}]} | extra


def failed(r: dict[str, list[dict[str, Any]]]) -> list[str]:
    return [c.name for c in evaluate(r) if not c.ok]


def test_a_good_chain_passes() -> None:
    assert failed(rows()) == []
    assert failed(rows("BCADEF")) == [], "a hardware chain: the timer's A after its exit"


def test_a_source_queued_while_another_cpus_flush_began_passes() -> None:
    """E (the flush) started, then A queued on another CPU before the LRs were written."""
    r = rows("BCDEAF")
    e = next(s for s in r["chain_slices"] if s["name"].startswith("E "))
    e["dur"] = 100  # A starts 10 ns after E started: inside it
    assert failed(r) == []
    e["dur"] = 5  # E ended before A started: impossible
    assert failed(r) == ["each chain's flow leads through its phases to the acknowledgement"]


@pytest.mark.parametrize("order", ["ABDCEF", "AEBCDF", "BCDEAF"])
def test_phases_out_of_order_fail(order: str) -> None:
    assert failed(rows(order)) == [
        "each chain's flow leads through its phases to the acknowledgement"
    ]


def test_a_flow_that_does_not_reach_the_ack_fails() -> None:
    assert failed(rows(ack=False)) == [
        "each chain's flow leads through its phases to the acknowledgement"
    ]


def test_a_complete_chain_without_a_phase_fails() -> None:
    assert "complete chains have all six phases" in failed(rows("ABCDE"))


def test_import_errors_and_open_slices_fail() -> None:
    bad = rows(
        stats=[{"name": "proto_parse_error", "idx": None, "severity": "error", "value": 3}],
        open_slices=[{"id": 5, "ts": 99, "name": "D handle_exit"}],
    )
    assert failed(bad) == ["imports without errors or data loss", "no slice left open"]


def test_a_trace_cut_short_fails() -> None:
    assert failed(rows(end=[])) == ["the trace is whole (its end marker counts every chain)"]
    assert failed(rows(end=[{"chains": 2}])) == [
        "the trace is whole (its end marker counts every chain)"
    ]


def test_a_chain_is_its_row_not_its_title() -> None:
    r = rows()
    r["chain_slices"][0]["name"] = "any title"  # titles may change: the row tells
    assert failed(r) == []
    r["chain_slices"][0]["row"] = None  # no row: no chain, so the end marker's 1 is wrong
    assert failed(r) == ["the trace is whole (its end marker counts every chain)"]


@pytest.mark.parametrize(
    ("recording", "says"),
    [
        ([{"version": None}], "was written by an older tracekit and has no chain table; "
         "re-export it with `tracekit export out/x.raw`"),
        ([], "is a Perfetto trace but not one written by tracekit"),
    ],
    ids=["before the table", "another tool's"],
)  # fmt: skip
def test_a_trace_without_the_table_is_one_line_saying_what_to_do(
    recording: list[dict[str, Any]], says: str
) -> None:
    with pytest.raises(TraceFileError) as err:
        evaluate(rows(recording=recording), "out/x.pftrace")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_the_queries_name_the_tables_annotations_as_the_trace_processor_does() -> None:
    """Its args table writes "tracekit.row" as debug.tracekit_row (Perfetto v56; the real
    binary runs these on every trace the suite writes)."""
    assert "'debug.tracekit_row'" in QUERIES["chain_slices"]
    assert "'debug.tracekit_table'" in QUERIES["recording"]
