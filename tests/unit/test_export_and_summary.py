"""The exporter's output parses back, nests, closes its flows, and is deterministic."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from tracekit.export.perfetto import export_trace
from tracekit.export.reader import parse_trace
from tracekit.model.events import read_events
from tracekit.model.incremental import reconstruct
from tracekit.model.summary import summarize
from tracekit.probes.spec import load_probe_set
from tracekit.render.summary import render_summary

pytestmark = pytest.mark.unit

DATA = Path(__file__).parents[1] / "data"
RAW = DATA / "raw" / "mixed5"
GOLDEN = DATA / "golden"


def build() -> bytes:
    with (RAW / "events.jsonl").open() as fh:
        events = list(read_events(fh))
    meta = json.loads((RAW / "meta.json").read_text())
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
    digest = hashlib.sha256(data).hexdigest()
    expected = (GOLDEN / "mixed5.pftrace.sha256").read_text().strip()
    assert digest == expected, "exporter output changed; regenerate with tests/golden.py"


def test_summary_json_and_rendering_golden() -> None:
    summary = summarize(parse_trace(build()))
    full = {"complete_chains": 20, "partial_chains": 0, "source_checked": 20, "source_matches": 20}
    assert summary["classes"] == {
        "hardware": {"ground_truth": 20, **full},
        "virtual": {"ground_truth": 10, **{k: v // 2 for k, v in full.items()}},
        "ipi": {"ground_truth": 5, **{k: v // 4 for k, v in full.items()}},
    }
    assert summary["source_mismatches"] == []
    assert summary["phases_seen"] == ["A", "B", "C", "D", "E", "F"]
    assert summary["kvm_mode"] == "vhe"
    console = Console(width=100, file=io.StringIO(), force_terminal=False, color_system=None)
    console.print(render_summary(summary))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert text == (GOLDEN / "mixed5.summary.txt").read_text()
