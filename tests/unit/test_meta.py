"""RecordingMeta (model/meta.py): meta.json typed, and written back exactly as it was read."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tracekit.errors import ConfigError, TraceFileError
from tracekit.model.ground_truth import GroundTruth
from tracekit.model.meta import MergeReport, RecordingMeta
from tracekit.model.table import META_KEYS
from tracekit.probes.info import ProbeInfo
from tracekit.record.metadata import RunFacts
from tracekit.record.pipeline import export_raw, load_meta

pytestmark = pytest.mark.unit

RAW = Path(__file__).parents[1] / "data" / "raw"
RECORDINGS = sorted(p.name for p in RAW.iterdir())


def _text(recording: str) -> str:
    return (RAW / recording / "meta.json").read_text()


@pytest.mark.parametrize("recording", RECORDINGS)
def test_a_recordings_meta_json_reads_and_writes_back_byte_for_byte(recording: str) -> None:
    meta = load_meta(RAW / recording)
    # finish.py writes it so: same keys, same order, same values, same text.
    assert json.dumps(meta.to_json(), indent=1, default=str) == _text(recording)
    assert meta.extra == {}, "every key of a recording is a field"


@pytest.mark.parametrize("recording", RECORDINGS)
def test_what_readers_use_is_typed(recording: str) -> None:
    meta = load_meta(RAW / recording)
    assert meta.probe_set in ("linux-6.1", "linux-6.12") and meta.kvm_mode == "vhe"
    assert meta.probes and all(isinstance(p, ProbeInfo) for p in meta.probes)
    assert meta.irq_exit_code == 0
    assert isinstance(meta.ground_truth, GroundTruth) and meta.ground_truth.ok
    assert isinstance(meta.merge, MergeReport) and meta.merge.events > 0
    assert meta.stops is not None and meta.stops == meta.stops_at_ground_truth


def test_unknown_keys_are_kept_in_place_and_missing_ones_stay_missing() -> None:
    data = {"scenario": "mixed", "from_a_newer_tracekit": [1, {"x": None}], "kvm_mode": "nvhe"}
    meta = RecordingMeta.from_json(data, "meta.json")
    assert meta.scenario == "mixed" and meta.kvm_mode == "nvhe"
    assert meta.extra == {"from_a_newer_tracekit": [1, {"x": None}]}
    assert meta.probes == () and meta.read_values is False and meta.ground_truth is None
    assert list(meta.to_json().items()) == list(data.items())


def test_a_field_set_after_reading_is_written_in_place_or_appended() -> None:
    meta = RecordingMeta.from_json({"incomplete_reason": None, "scenario": "s"}, "meta.json")
    later = dataclasses.replace(meta, incomplete_reason="cut", merge=MergeReport(events=3))
    written = later.to_json()
    assert list(written) == ["incomplete_reason", "scenario", "merge"]
    assert written["incomplete_reason"] == "cut" and written["merge"]["events"] == 3


def test_metadata_built_here_writes_every_key_in_the_order_recordings_do() -> None:
    """Keys a run may not reach (its RunFacts, the merge) are left out while unknown;
    the others are written, null or not (finish.py)."""
    written = RecordingMeta(scenario="s").to_json()
    reference = json.loads(_text("halt-wake-6.12"))
    # plugin_values is newer than that recording (record --plugin-values).
    assert set(written) - set(reference) == {"plugin_values"}
    # (a VHE recording: no hyp_va_delta, vbar_el2 or vbar_el2_gdb)
    assert set(reference) - set(written) == {*RunFacts().values(), "merge"} - {
        "hyp_va_delta",
        "vbar_el2",
        "vbar_el2_gdb",
    }
    assert [k for k in reference if k in written] == [k for k in written if k in reference]
    assert written["incomplete_reason"] is None and written["ground_truth"] is None


def test_a_run_fact_is_a_field_of_the_same_name_left_out_while_unknown() -> None:
    """Adding a fact is one line in RunFacts and one here (record/metadata.py)."""
    fields = {f.name: f for f in dataclasses.fields(RecordingMeta)}
    for name in RunFacts().values():
        assert name in fields and fields[name].metadata["omit_none"], name
    facts = RunFacts(qemu_version="10.0.2", qmp_events={"STOP": 1})
    written = dataclasses.replace(RecordingMeta(), **facts.values()).to_json()
    assert written["qemu_version"] == "10.0.2" and "ready_s" not in written


def test_the_keys_a_trace_keeps_are_fields() -> None:
    fields = {f.name for f in dataclasses.fields(RecordingMeta)}
    assert set(META_KEYS) <= fields


def test_a_ground_truth_reads_back_equal() -> None:
    meta = load_meta(RAW / "mixed5")
    assert meta.ground_truth is not None
    assert GroundTruth.from_json(meta.ground_truth.to_json()) == meta.ground_truth


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ([], "meta.json is not an object"),
        ({"vcpus": "2"}, "meta.json: 'vcpus' should be an integer, got '2'"),
        ({"read_values": None}, "meta.json: 'read_values' should not be null"),
        ({"probes": [{"name": "q"}]}, "meta.json: 'probes' lacks 'address'"),
        ({"ground_truth": {"vcpus": 2}}, "meta.json: 'ground_truth' ground-truth JSON lacks"),
        ({"merge": {"events": 1.5}}, "meta.json's merge: 'events' should be an integer"),
    ],
)
def test_a_key_of_the_wrong_shape_is_one_line_naming_it(data: object, says: str) -> None:
    with pytest.raises(TraceFileError) as err:
        RecordingMeta.from_json(data, "meta.json")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_export_of_a_recording_naming_an_unknown_probe_set_says_which_exist(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "x.raw"
    shutil.copytree(RAW / "mixed5", raw)
    data = json.loads((raw / "meta.json").read_text())
    data["probe_set"] = "linux-6.13"
    (raw / "meta.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        export_raw(raw, tmp_path / "x.pftrace")
    assert "unknown probe set 'linux-6.13'" in str(err.value)
    assert "linux-6.1, linux-6.12" in str(err.value)
    assert not (tmp_path / "x.pftrace").exists()


def test_export_with_the_recordings_own_decoder_does_not_look_the_name_up(
    tmp_path: Path,
) -> None:
    """``record`` passes the probe set it resolved; only ``tracekit export RAW`` loads the
    one meta.json names."""
    from tracekit.probes.spec import load_probe_set

    meta = dataclasses.replace(load_meta(RAW / "mixed5"), probe_set="linux-6.13")
    report = export_raw(
        RAW / "mixed5", tmp_path / "x.pftrace", decoder=load_probe_set("linux-6.1").decoder,
        meta=meta,
    )  # fmt: skip
    assert len(report.reconstruction.chains) == 35
