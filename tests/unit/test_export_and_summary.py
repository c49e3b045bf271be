"""The exporter's output parses back, nests, closes its flows, and is deterministic."""

from __future__ import annotations

import difflib
import io
import itertools
import json
from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from rich.console import Console

from tracekit.cli import main
from tracekit.export.dump import dump_trace
from tracekit.export.perfetto import export_trace
from tracekit.export.reader import ParsedTrace, Placement, TrackInfo, parse_trace
from tracekit.model.events import read_events
from tracekit.model.incremental import reconstruct
from tracekit.model.meta import RecordingMeta
from tracekit.model.summary import summarize
from tracekit.model.table import ROW_ARG, VERSION_ARG
from tracekit.model.trace import Slice
from tracekit.probes.spec import load_probe_set
from tracekit.render.summary import render_summary

pytestmark = pytest.mark.unit

DATA = Path(__file__).parents[1] / "data"
RAW = DATA / "raw" / "mixed5"
GOLDEN = DATA / "golden"
#: The exporter's golden: ``dump_trace`` of the mixed5 trace (tests/data/golden/README.md).
TRACE_GOLDEN = GOLDEN / "mixed5.trace.txt"
#: Lines of unified diff shown when the dump differs from the golden.
DIFF_LINES = 80


def build() -> bytes:
    with (RAW / "events.jsonl").open() as fh:
        events = list(read_events(fh))
    meta = RecordingMeta.from_json(json.loads((RAW / "meta.json").read_text()), "meta.json")
    decoder = load_probe_set().decoder
    recon = reconstruct(events, decoder, "vhe")
    buf = io.BytesIO()
    export_trace(buf, recon, events, decoder, meta)
    return buf.getvalue()


def test_trace_is_well_formed() -> None:
    content = parse_trace(build())
    assert content.problems == []
    assert content.flows_started and not content.unterminated_flows()
    groups = set(content.groups.values())
    assert {"L1 host CPUs (KVM)", "L2 guest vCPUs", "QEMU GICv3 (hardware view)"} <= groups
    assert any(g.startswith("Interrupts: hardware") for g in groups)
    names = {s.name for s in content.slices}
    assert "A source: interrupt raised" in names
    assert any(n.startswith("C EL2 -> host kernel (VHE") for n in names)
    assert any(n.startswith("D handle_exit (WFx -> kvm_handle_wfx)") for n in names)
    assert any(t.endswith("list registers in use") for t in content.counters)
    assert any(t.startswith("exits/s:") for t in content.counters)


def test_export_is_deterministic_golden() -> None:
    data = build()
    assert data == build()
    got = dump_trace(parse_trace(data))
    expected = TRACE_GOLDEN.read_text()
    if got != expected:
        diff = difflib.unified_diff(
            expected.splitlines(), got.splitlines(), str(TRACE_GOLDEN.name), "now", lineterm=""
        )
        shown = list(itertools.islice(diff, DIFF_LINES))
        pytest.fail(
            "exporter output changed; if the change is meant, review it and regenerate with "
            "`.venv/bin/python tests/golden.py`. First differences:\n" + "\n".join(shown),
            pytrace=False,
        )


def _placed(
    track: int, packet: int, flows: tuple[int, ...] = (), ends: tuple[int, ...] = ()
) -> Placement:
    return Placement(track, packet, flows, ends)


def test_dump_nests_groups_flows_and_summarizes_long_counters() -> None:
    content = ParsedTrace(packets=12, flows_started={7, 8}, flows_terminated={7})
    content.track_info = {
        1: TrackInfo("zeta", None, 0, True, False),
        2: TrackInfo("alpha", None, 0, True, False),
        3: TrackInfo("cpu", 1, 1, False, False),
        4: TrackInfo("first", 1, 0, False, False),
        5: TrackInfo("rate", 2, 0, False, True),
        6: TrackInfo("orphan", None, 0, False, False),
    }
    content.tracks = {u: t.name for u, t in content.track_info.items()}
    content.slices = [
        Slice("cpu", "inner", 12, 15, {}, 1),  # ends first: the reader's order
        Slice("cpu", "outer", 10, 20, {"n": 1, "meta": '{"b": [1], "a": "x"}'}, 0),
    ]
    content.slice_places = [_placed(3, 5, (8,)), _placed(3, 4, (7,))]
    content.instants = [Slice("cpu", "mark", 14, 14, {"s": "q"}, 2)]
    content.instant_places = [_placed(3, 6, (), (7,))]
    content.counters = {"rate": [(t, float(t % 3)) for t in range(10)]}
    content.counter_uuids = {"rate": 5}
    text = dump_trace(content, counter_limit=4)
    lines = text.splitlines()
    assert lines[:3] == [
        "# tracekit trace dump (format: tracekit/export/dump.py)",
        "# 12 packets, 6 tracks, 2 slices, 1 instants, 10 counter values, 2 flows",
        "problems: 0",
    ]
    body = lines[3:]
    # Groups by name, tracks by rank; the process tracks are headings only.
    heads = [x for x in body if not x.startswith("    ")]
    assert heads[:6] == [
        'group "alpha"',
        '  counter "rate" rank 0: 10 values',
        'group "zeta"',
        '  track "first" rank 0 (empty)',
        '  track "cpu" rank 1',
        "group (none)",
    ]
    i = body.index('  track "cpu" rank 1')
    assert body[i + 1 : i + 9] == [
        "    10 +10 outer {meta=(JSON below), n=1} [flow 0x7]",
        "      meta =",
        "        {",
        '         "a": "x",',
        '         "b": [',
        "          1",
        "         ]",
        "        }",
    ]
    assert body[i + 9 : i + 11] == [
        "      12 +3 inner [flow 0x8]",
        '        14 instant mark {s="q"} [ends flow 0x7]',
    ]
    j = body.index('  counter "rate" rank 0: 10 values')
    assert body[j + 1 : j + 6] == [
        "    0 0.0",
        "    1 1.0",
        "    ... 6 values (min 0.0, max 2.0)",
        "    8 2.0",
        "    9 0.0",
    ]
    assert lines[-8:] == [
        '  track "orphan" rank 0 (empty)',
        "flows (2)",
        "  flow 0x7: 2 events",
        '    from 10 "cpu" outer',
        '    to   14 "cpu" mark',
        "  flow 0x8: 1 events",
        '    from 12 "cpu" inner',
        "    never ends",
    ]


def test_summary_json_and_rendering_golden() -> None:
    summary = summarize(parse_trace(build()))
    full = {"complete_chains": 20, "partial_chains": 0, "source_checked": 20, "source_matches": 20}
    none = {"merged_chains": 0, "unacknowledged": 0}
    assert summary["classes"] == {
        "hardware": {"ground_truth": 20, **full, **none},
        "virtual": {"ground_truth": 10, **{k: v // 2 for k, v in full.items()}, **none},
        "ipi": {"ground_truth": 5, **{k: v // 4 for k, v in full.items()}, **none},
        # No MSI in this recording: the class is there, at zero.
        "msi": {"ground_truth": 0, "complete_chains": 0, "partial_chains": 0, **none},
    }
    assert summary["source_mismatches"] == []
    assert summary["phases_seen"] == ["A", "B", "C", "D", "E", "F"]
    assert summary["kvm_mode"] == "vhe"
    console = Console(width=100, file=io.StringIO(), force_terminal=False, color_system=None)
    console.print(render_summary(summary))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert text == (GOLDEN / "mixed5.summary.txt").read_text()


def _before_the_table(data: bytes) -> bytes:
    """The trace as tracekit wrote it before the chain table: no schema version on the
    recording instant, no row marks on the chain and exit slices."""
    trace = pb.Trace()
    trace.ParseFromString(data)
    names: dict[int, str] = {}
    for pkt in trace.packet:
        for dn in pkt.interned_data.debug_annotation_names:
            names[dn.iid] = dn.name
        annotations = pkt.track_event.debug_annotations
        kept = [
            d
            for d in annotations
            if (d.name if d.HasField("name") else names.get(d.name_iid))
            not in {VERSION_ARG, ROW_ARG}
        ]
        if len(kept) != len(annotations):
            del annotations[:]
            annotations.extend(kept)
    return trace.SerializeToString()


def test_summary_of_a_trace_before_the_table_says_to_re_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.pftrace"
    old.write_bytes(_before_the_table(build()))
    content = parse_trace(old.read_bytes(), str(old))
    assert content.problems == [] and content.table.chains == ()
    with pytest.raises(SystemExit) as ended:
        main(["summary", str(old)])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no traceback
    assert err.startswith(f"tracekit: error: {old} was written by an older tracekit")
    assert f"re-export it with `tracekit export {tmp_path / 'old.raw'}`" in err
