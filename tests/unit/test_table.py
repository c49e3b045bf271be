"""The chain table's schema: rows -> annotations -> rows, and summary from rows alone."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tracekit.errors import TraceFileError
from tracekit.export.reader import parse_trace
from tracekit.model.chains import Ack, Chain, Exit, Reconstruction, Span
from tracekit.model.ground_truth import GroundTruth, InterruptCount
from tracekit.model.meta import RecordingMeta
from tracekit.model.summary import summarize_table
from tracekit.model.table import (
    META_ARG,
    META_KEYS,
    ROW_ARG,
    SCHEMA_VERSION,
    VERSION_ARG,
    ChainRow,
    ChainTable,
    ExitRow,
    meta_args,
    read_table,
    table_of,
)

pytestmark = pytest.mark.unit

FULL = {"A": 500, "B": 160, "C": 0, "D": 140, "E": 520, "F": 250}
IPI = ChainRow(
    7, "ipi", 1, 1, "SGI (ICC_SGI1R_EL1 trap)", "sgi", "vgic_v3_dispatch_sgi", 1, "IRQ",
    0, 0, 0, 0x1000002, FULL,
)  # fmt: skip
PARTIAL = ChainRow(8, "hardware", 27, 0, "arch timer", phase_ns={"A": 10, "E": 5, "F": 3})
TRAP = ExitRow(
    1, 0, "TRAP", 2, "sync", 0x82000005, "IABT_LOW", "kvm_handle_guest_abort",
    {"B": 206, "C": 0, "D": 650_905},
)  # fmt: skip
IRQ = ExitRow(0, 1, "IRQ", 1, "irq", None, "", "handle_exit", {"B": 163, "C": 0})


def _via_trace_annotations(args: dict[str, Any]) -> dict[str, Any]:
    """What a reader gets back: the encoder leaves None out."""
    return {k: v for k, v in args.items() if v is not None}


@pytest.mark.parametrize("row", [IPI, PARTIAL], ids=["complete", "partial"])
def test_chain_row_round_trip(row: ChainRow) -> None:
    args = _via_trace_annotations(row.to_args())
    assert args[ROW_ARG] == "chain"
    assert ChainRow.from_args(args) == row


def test_chain_args_keep_the_names_traces_have_always_used() -> None:
    args = _via_trace_annotations(IPI.to_args())
    assert args["phase_D_ns"] == 140 and args["complete"] is True and "missing" not in args
    assert args["sgi1r"] == "0x1000002" and args["source_l1_cpu"] == 1
    partial = PARTIAL.to_args()
    assert partial["complete"] is False and partial["missing"] == "B,C,D"
    assert "source_kind" not in _via_trace_annotations(partial)  # "" is left out


@pytest.mark.parametrize("row", [TRAP, IRQ], ids=["trap", "irq"])
def test_exit_row_round_trip(row: ExitRow) -> None:
    args = _via_trace_annotations(row.to_args())
    assert args[ROW_ARG] == "exit"
    assert ExitRow.from_args(args) == row


def test_exit_row_keeps_the_esr_of_a_trap_only() -> None:
    ex = Exit(0, 1, vector_t=10, guest_exit_t=12, host_resume_t=15, code=1, esr=0x92000046)
    ex.handle_exit_t, ex.d_end = 20, 30
    row = ExitRow.of(ex, "vhe", lambda code, esr: ("IRQ", "", "handle_exit"))
    assert row is not None and row.esr is None and row.phase_ns == {"B": 5, "C": 0, "D": 10}
    assert ExitRow.of(Exit(0, 1), "vhe", lambda c, e: ("?", "", "")) is None  # nothing seen


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"chain": "7"}, "chain is '7'"),
        ({"vcpu": True}, "vcpu is True"),
        ({"phase_A_ns": 1.5}, "phase_A_ns"),
        ({"complete": False}, "disagree"),
        ({"sgi1r": "zz"}, "invalid literal"),
    ],
)
def test_a_malformed_chain_row_is_a_value_error(bad: dict[str, Any], says: str) -> None:
    args = {**_via_trace_annotations(IPI.to_args()), **bad}
    with pytest.raises(ValueError, match=says):
        ChainRow.from_args(args)


def _recording(version: int | None = SCHEMA_VERSION, **meta: Any) -> dict[str, Any]:
    args = meta_args(RecordingMeta(**meta))
    if version is None:
        del args[VERSION_ARG]
    else:
        args[VERSION_ARG] = version
    return args


def test_read_table_collects_rows_sorted_and_reports_bad_ones() -> None:
    slices = [
        PARTIAL.to_args(),
        {"chain": 8},  # a phase slice: not a row
        TRAP.to_args(),
        IPI.to_args(),
        {ROW_ARG: "chain", "chain": 9},
        {ROW_ARG: "nonsense"},
    ]
    table, problems = read_table(
        [{"other": 1}, _recording(scenario="mixed")], map(_via_trace_annotations, slices)
    )
    assert table.meta is not None and table.meta.scenario == "mixed"
    assert table.version == SCHEMA_VERSION
    assert table.chains == (IPI, PARTIAL) and table.exits == (TRAP,)
    assert len(problems) == 2 and "chain row unreadable" in problems[0]
    assert "nonsense" in problems[1]


@pytest.mark.parametrize(
    ("instants", "says"),
    [
        ([], "not one written by tracekit; pass a .pftrace from `tracekit record`"),
        (
            [_recording(None)],
            "older tracekit and has no chain table; re-export it with `tracekit export out/x.raw`",
        ),
        ([_recording(SCHEMA_VERSION + 1)], f"version {SCHEMA_VERSION + 1}"),
    ],
    ids=["other tool", "before the table", "newer"],
)
def test_no_table_is_one_actionable_line(instants: list[dict[str, Any]], says: str) -> None:
    table, _ = read_table(instants, [IPI.to_args()])
    assert table.chains == ()  # rows of an unknown schema are not read
    with pytest.raises(TraceFileError) as err:
        table.required("out/x.pftrace")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_summary_from_rows_alone() -> None:
    sent = (InterruptCount("ipi", 1, 1, "sgi", 1, 1), InterruptCount("hardware", 27, 0, "t", 1, 1))
    gt = GroundTruth("s", 2, 1, True, (), sent, (), 0, 0, {})
    table = ChainTable(
        RecordingMeta(scenario="s", kvm_mode="nvhe", ground_truth=gt),
        SCHEMA_VERSION,
        (IPI, PARTIAL),
        (TRAP, IRQ, TRAP),
    )
    s = summarize_table(table)
    assert s["kvm_mode"] == "nvhe" and s["scenario"] == "s"
    assert s["classes"]["ipi"] == {
        "ground_truth": 1,
        "complete_chains": 1,
        "merged_chains": 0,
        "partial_chains": 0,
        "unacknowledged": 0,
    }
    assert s["classes"]["hardware"]["partial_chains"] == 1
    assert s["phases_seen"] == list("ABCDEF")
    assert s["phase_latency_ns"]["hardware"]["A"]["p50"] == 10
    assert set(s["phase_latency_ns"]["hardware"]) == {"A", "E", "F"}
    assert s["slowest_chains"] == {"ipi": {"chain": 7, "phases_ns": sum(FULL.values())}}
    assert s["time_in_phase_ns"]["A"] == 510
    assert s["exits"]["total"] == 3
    top, irq = s["exits"]["by_reason"]
    assert (top["esr_class"], top["count"], top["d_max_ns"]) == ("IABT_LOW", 2, 650_905)
    assert (irq["exit_code"], irq["handler"], irq["d_p50_ns"]) == ("IRQ", "handle_exit", 0)
    assert "trace_problems" not in s  # only a trace read back has those


def _chain(cid: int, t: int) -> Chain:
    phases = {p: Span(t + i * 10, t + i * 10 + 5) for i, p in enumerate("ABCDEF")}
    return Chain(cid, "hardware", 27, 0, "arch timer", 0, phases, Ack(t + 70, 0, 0, 27),
                 source_kind="timer")  # fmt: skip


def test_table_of_a_reconstruction_is_what_the_exporter_writes() -> None:
    """``record`` summarizes ``table_of`` its reconstruction instead of reading the trace
    back: the table must be the one the exported trace holds."""
    from tests.unit.test_export_and_summary import RAW, build
    from tracekit.model.events import read_events
    from tracekit.model.incremental import reconstruct
    from tracekit.probes.spec import load_probe_set

    with (RAW / "events.jsonl").open() as fh:
        events = list(read_events(fh))
    meta = RecordingMeta.from_json(json.loads((RAW / "meta.json").read_text()), "meta.json")
    decoder = load_probe_set().decoder
    recon = reconstruct(events, decoder, "vhe")
    written = parse_trace(build()).table
    assert table_of(recon, decoder.describe, meta) == written
    assert len(written.chains) == 35 and len(written.exits) == 99


def test_table_of_skips_exits_the_trace_does_not_draw() -> None:
    recon = Reconstruction([_chain(2, 100), _chain(1, 0)], [Exit(0, 0)], [], [], "vhe")
    meta = RecordingMeta.from_json({"scenario": "x", "extra": 1}, "meta.json")
    table = table_of(recon, lambda c, e: ("?", "", ""), meta)
    assert [r.id for r in table.chains] == [1, 2] and table.exits == ()
    assert table.meta is not None and table.meta.scenario == "x" and table.meta.extra == {}
    assert json.loads(meta_args(meta)[META_ARG])["scenario"] == "x"


def test_a_trace_keeps_its_meta_keys_of_the_recording_and_reads_them_typed() -> None:
    """The trace's metadata is ``META_KEYS`` of meta.json (null where it had none); read
    back, those are the RecordingMeta's fields and the rest keep their defaults."""
    from tests.unit.test_export_and_summary import RAW

    meta = RecordingMeta.from_json(json.loads((RAW / "meta.json").read_text()), "meta.json")
    stored = json.loads(meta_args(meta)[META_ARG])
    assert sorted(stored) == sorted(META_KEYS)
    assert {k: stored[k] for k in META_KEYS} == {k: meta.to_json().get(k) for k in META_KEYS}
    table, problems = read_table([meta_args(meta)], [])
    assert problems == [] and table.meta is not None
    assert table.meta.ground_truth == meta.ground_truth and table.meta.probes == ()
    assert table.meta.probe_locations == meta.probe_locations


def test_trace_metadata_of_the_wrong_shape_is_a_problem_not_a_crash() -> None:
    table, problems = read_table([{META_ARG: '{"vcpus": "two"}', VERSION_ARG: 1}], [])
    assert problems == ["recording metadata: 'vcpus' should be an integer, got 'two'"]
    assert table.meta == RecordingMeta(keys=()) and table.version == 1


def test_a_phase_slice_is_told_by_its_titles_first_letter() -> None:
    """The one title convention readers rely on (explain, check): among the slices that
    name a chain, the phase slices are those titled with their letter first."""
    from tests.unit.test_export_and_summary import build
    from tracekit.export.perfetto import PHASE_TITLES
    from tracekit.model.table import phase_of

    assert {p: phase_of(t) for p, t in PHASE_TITLES.items()} == {p: p for p in PHASE_TITLES}
    of_chains = [s for s in parse_trace(build()).slices if "chain" in s.args]
    letters = [phase_of(s.name) for s in of_chains if ROW_ARG not in s.args]
    assert None not in letters and set(letters) == set(PHASE_TITLES)
    assert all(phase_of(s.name) is None for s in of_chains if ROW_ARG in s.args)
