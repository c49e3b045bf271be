"""`tracekit explain` on the recorded fixture (mixed, count 5): one walk per class, the
kick outcomes, and bad choices named with what exists."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from tests.unit.test_export_and_summary import build
from tracekit.config import load_original_names
from tracekit.errors import ConfigError
from tracekit.export.reader import parse_trace
from tracekit.model.explain import PHASE_ORDER, TraceIndex, explain_chain, kicks, select_chain
from tracekit.render.explain import render_explanation

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parents[1] / "data" / "golden"


@pytest.fixture(scope="module")
def index() -> TraceIndex:
    return TraceIndex(parse_trace(build()))


@pytest.mark.parametrize("cls", ["hardware", "virtual", "ipi"])
def test_one_walk_per_class(index: TraceIndex, cls: str) -> None:
    e = explain_chain(index, select_chain(index, None, cls, 1, None), load_original_names())
    phases = [s.phase for s in e.steps]
    assert set(PHASE_ORDER) <= set(phases) and phases[-1] == "ack"
    times = [s.t_ns for s in e.steps]
    assert times == sorted(times)
    assert all(e.chain["start_ns"] <= t <= e.chain["ack_ns"] for t in times)
    assert all(s.dt_ns == (None if s.n == 1 else s.t_ns - e.steps[s.n - 2].t_ns) for s in e.steps)
    kernel = [s for s in e.steps if s.kind == "kernel"]
    assert kernel and all(s.location for s in kernel)  # function(+offset) from kallsyms
    assert any(s.original for s in e.steps)
    assert not e.missing
    data = e.to_json()
    assert [st["t_ns"] for st in data["steps"]] == times
    assert {"phase", "t_ns", "function", "l1_cpu"} <= set(data["steps"][0])


def test_virtual_walk_golden(index: TraceIndex) -> None:
    """The text a user reads, reviewable as a diff (regenerate: tests/golden.py)."""
    e = explain_chain(index, select_chain(index, None, "virtual", 1, 40), load_original_names())
    console = Console(width=140, file=io.StringIO(), force_terminal=False, color_system=None)
    console.print(render_explanation(e))
    assert console.file.getvalue() == (GOLDEN / "mixed5.explain-virtual.txt").read_text()  # type: ignore[attr-defined]


def test_partial_chain_says_what_is_missing() -> None:
    import json

    from tests.unit.test_export_and_summary import RAW
    from tracekit.export.perfetto import export_events
    from tracekit.model.events import read_events
    from tracekit.probes.spec import load_probe_set

    with (RAW / "events.jsonl").open() as fh:
        events = [e for e in read_events(fh) if e.role != "lr_write"]
    buf = io.BytesIO()
    export_events(
        buf, events, load_probe_set().decoder, json.loads((RAW / "meta.json").read_text())
    )
    idx = TraceIndex(parse_trace(buf.getvalue()))
    e = explain_chain(idx, min(idx.chains), load_original_names())
    missing = dict(e.missing)
    assert "E" in missing and "list-register" in missing["E"]
    assert e.steps and e.steps[0].phase == "A", "what was recorded is still walked"


def test_kicks_on_two_cpus(index: TraceIndex) -> None:
    k = kicks(index)
    assert k["l1_cpus"] == 2 and k["kicks"] > 0
    assert sum(r["count"] for r in k["by_outcome"]) == k["kicks"]
    assert {r["outcome"] for r in k["by_outcome"]} <= {
        "IPI sent", "in guest, no IPI seen", "wakes it from the halt", "request only"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"chain": 999},
            r"no chain 999 in the trace \(chains 0\.\.34; classes hardware, ipi, virtual\)",
        ),
        ({"cls": "msi"}, "no chain of class 'msi'"),
        ({"intid": 77}, r"no chain for INTID 77 in the trace \(INTIDs 1, 27, 30, 40, 41\)"),
        ({"cls": "ipi", "nth": 9}, "--nth 9 is out of range"),
    ],
)
def test_bad_choices_name_what_exists(index: TraceIndex, kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    args = {"chain": None, "cls": None, "nth": 1, "intid": None} | kwargs
    with pytest.raises(ConfigError, match=message):
        select_chain(index, args["chain"], args["cls"], args["nth"], args["intid"])


def test_original_names_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "names.toml"
    bad.write_text('[names]\nhandle_exitt = "x"\n')
    with pytest.raises(ConfigError, match="did you mean 'handle_exit'"):
        load_original_names(bad)


def test_chains_and_exits_are_found_by_their_rows_not_their_titles(index: TraceIndex) -> None:
    """The titles the exporter gives chain and exit slices may change (model/table.py)."""
    import dataclasses

    from tracekit.model.table import ROW_ARG

    content = parse_trace(build())
    content.slices = [
        dataclasses.replace(s, name=f"row {n}") if ROW_ARG in s.args else s
        for n, s in enumerate(content.slices)
    ]
    retitled = TraceIndex(content)
    assert retitled.rows == index.rows and len(retitled.rows) == 35
    assert retitled.chains.keys() == index.chains.keys()
    assert {v: len(x) for v, x in retitled.exits.items()} == {
        v: len(x) for v, x in index.exits.items()
    }
    assert retitled.halts.keys() == index.halts.keys() and any(index.halts.values())
    assert kicks(retitled) == kicks(index)
    chain = select_chain(index, None, "virtual", 1, None)
    names = load_original_names()
    assert explain_chain(retitled, chain, names).steps == explain_chain(index, chain, names).steps
