"""Stop handling: each breakpoint hit read, classified and appended to hits.jsonl; a
recording to the ground truth leaves the raw files and metadata a real one does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakepeer import kernel
from tests.fakepeer.peers import Hit, Run, Say
from tests.fakepeer.recording import record
from tracekit.record.pipeline import export_raw

pytestmark = pytest.mark.fakepeer

STOP = "vgic_queue_irq_unlock"
STOP2 = "vgic_v3_dispatch_sgi"
TIMING = "kvm_vcpu_kick"
REFERENCE = Path(__file__).parents[1] / "data" / "raw" / "halt-wake-6.12" / "meta.json"
#: Keys newer than that recording (``record --plugin-values``, issue #14).
ADDED = ("plugin_values",)
ADDED_MERGE = (
    "plugin_values_missing",
    "plugin_values_used",
    "plugin_values_unreadable",
    "plugin_checks",
    "plugin_disagreements",
    "plugin_value_lines",
    "plugin_orphan_value_lines",
)


def complete(*middle: Hit | Run | Say) -> list[Hit | Run | Say]:
    return [
        Say("booting"),
        Say(kernel.ready()),
        *middle,
        Say(kernel.ground_truth()),
        Say(kernel.done()),
    ]


def test_hits_are_read_classified_and_written_at_once(tmp_path: Path) -> None:
    res = kernel.resolution(skip_entry=frozenset({STOP2}))
    probe = {p.name: p for p in res.probes.probes}
    script = complete(
        Hit(STOP, cpu=1, el=2, values={"$x0": 33}),
        Run(TIMING, cpu=1),
        Hit(STOP, cpu=0, el=1),  # the L2 guest at the same address: not the host
        Hit(STOP2, cpu=0, el=2, unreadable="Cannot access memory at address 0x8"),
        Hit(STOP, reason="signal-received"),
    )
    rec = record(tmp_path, script, res=res)
    assert rec.result.ended_by == "ground-truth"
    assert rec.result.incomplete_reason is None and rec.result.error is None
    hits = rec.hits()
    assert [(h["seq"], h["probe"], h["cpu"], h["world"], h["host"]) for h in hits] == [
        (0, STOP, 1, "l1-host", True),
        (1, STOP, 0, "l2-guest", False),
        # Without cpsr the world is unknown, and the hit does not count as the host's.
        (2, STOP2, 0, "unknown", False),
    ]
    assert hits[0]["pc"] == probe[STOP].address and hits[0]["el"] == 2
    first_capture = next(iter(probe[STOP].spec.capture))
    assert hits[0]["values"][first_capture] == 33 and "errors" not in hits[0]
    assert set(hits[2]["errors"].values()) == {"Cannot access memory at address 0x8"}
    assert all(v is None for v in hits[2]["values"].values())
    # A skip_entry probe resumes after its patchable-entry instruction.
    assert rec.machine.pc_writes == [probe[STOP2].address + 4]
    # Breakpoints only at stop probes; timing probes only in the plugin's file.
    inserted = [c for c in rec.machine.calls if c.startswith("gdb.break-insert")]
    assert inserted == [f"gdb.break-insert {p.address:#x}" for p in res.probes.stop_probes()]
    stamped = (rec.raw / "probes.txt").read_text().split()
    assert f"{probe[TIMING].address:x}" in stamped
    meta = rec.result.meta
    assert meta.stops == 3 and meta.discarded_non_host == 2
    assert meta.merge is not None
    assert meta.merge.gdb_hits == 3 and meta.merge.per_probe[TIMING] == 1
    assert meta.ground_truth is not None and meta.ground_truth.scenario == "mixed"


def test_the_metadata_has_the_keys_of_a_real_recording(tmp_path: Path) -> None:
    rec = record(tmp_path, complete(Hit(STOP)))
    reference = json.loads(REFERENCE.read_text())
    # Same keys, in the same order, as a recording made before the recorder was split,
    # plus those added since (record --plugin-values).
    meta = rec.meta_file()
    assert [k for k in meta if k not in ADDED] == list(reference)
    assert [k for k in meta["merge"] if k not in ADDED_MERGE] == list(reference["merge"])
    assert set(ADDED) <= set(meta) and set(ADDED_MERGE) <= set(meta["merge"])
    assert rec.result.meta.to_json() == rec.meta_file()
    assert rec.meta_file()["qmp_events"] == {"RESUME": 1}
    assert rec.meta_file()["l1_ready_s"] <= rec.meta_file()["ground_truth_s"]
    assert rec.meta_file()["stops_at_ground_truth"] == 1
    # Raw files a real recording leaves, the console included.
    for name in ("probes.txt", "qemu.log", "hits.jsonl", "events.jsonl", "console.log"):
        assert (rec.raw / name).exists(), name
    assert "booting" in (rec.raw / "console.log").read_text()
    # GIC trace events switched on before L1 ran; QEMU told to quit, then everything shut.
    enabled = [a["name"] for c, a in rec.machine.qmp if c == "trace-event-set-state" and a]
    assert len(enabled) == 4
    calls = rec.machine.calls
    assert calls.index("qmp.quit") < calls.index("gdb.close") < calls.index("qmp.close")
    assert not rec.peers.runtime.path.exists()
    report = export_raw(rec.raw, tmp_path / "again.pftrace")
    assert report.output.stat().st_size > 0


def test_a_second_recording_to_the_same_output_starts_clean(tmp_path: Path) -> None:
    record(tmp_path, complete(Hit(STOP), Hit(STOP)))
    rec = record(tmp_path, complete(Hit(STOP)))
    assert len(rec.hits()) == 1
    assert rec.result.meta.merge is not None and rec.result.meta.merge.gdb_hits == 1


def test_the_result_carries_the_probe_set_resolution_loaded(tmp_path: Path) -> None:
    """``record`` exports with that one (no second load by name, cli/record.py)."""
    res = kernel.resolution("vhe")
    rec = record(tmp_path, complete(Hit(STOP)), res=res)
    assert rec.result.probe_set is res.probe_set
    report = export_raw(
        rec.raw,
        tmp_path / "t.pftrace",
        decoder=rec.result.probe_set.decoder,
        events=rec.result.events,
        meta=rec.result.meta,
    )
    assert report.meta is rec.result.meta and report.counts["raw_events"] == len(rec.result.events)
