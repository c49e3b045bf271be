"""ProbeInfo (probes/info.py): the one shape of a resolved probe, from resolution to the
merge, through meta.json with the keys recordings always wrote."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tracekit.probes.info import ProbeInfo
from tracekit.probes.resolve import ResolvedProbe
from tracekit.probes.spec import load_probe_set

pytestmark = pytest.mark.unit

RAW = Path(__file__).parents[1] / "data" / "raw"
KEYS = [
    "name", "address", "break_address", "skip_entry", "hyp", "location", "phase", "role",
    "mode", "infer", "implies", "pointers", "code",
]  # fmt: skip


@pytest.mark.parametrize("recording", sorted(p.name for p in RAW.iterdir()))
def test_recorded_probes_read_back_unchanged(recording: str) -> None:
    probes = json.loads((RAW / recording / "meta.json").read_text())["probes"]
    again = [ProbeInfo.from_json(p).to_json() for p in probes]
    assert again == probes
    assert all(list(p) == KEYS for p in again)


def test_a_resolved_probe_describes_itself_as_meta_json_did() -> None:
    pset = load_probe_set("linux-6.1")
    spec = next(p for p in pset.probes if p.infer)
    spec = dataclasses.replace(spec, implies={"exit_code": 2}, hyp=True, frame=True)
    probe = ResolvedProbe(
        spec,
        0x1000,
        spec.symbol,
        f"{spec.symbol}+0x0",
        (),
        skip_entry=True,
        hyp_delta=0x100,
        stops=False,
        pointer_sites=(("vcpu_ptr", 0x1008, 16), ("frame", 0x100C, 0)),
        code_end=0x1200,
    )
    d = probe.info().to_json()
    assert d == {
        "name": spec.name,
        "address": 0x1104,
        "break_address": 0x1100,
        "skip_entry": True,
        "hyp": True,
        "location": f"{spec.symbol}+0x0",
        "phase": spec.phase,
        "role": spec.role.value,
        "mode": "timing",
        "infer": dict(spec.infer),
        "implies": {"exit_code": 2},
        "pointers": [["vcpu_ptr", 0x1008, 16], ["frame", 0x100C, 0]],
        "code": [0x1100, 0x1200],
    }
    assert type(d["role"]) is str  # events carry plain strings (model/vocabulary.py)
    assert ProbeInfo.from_json(json.loads(json.dumps(d))) == probe.info()


def test_an_old_entry_without_the_optional_keys_still_loads() -> None:
    info = ProbeInfo.from_json(
        {"name": "q", "address": 16, "phase": "A", "role": "queue", "mode": "stop"}
    )
    assert info == ProbeInfo(name="q", address=16, phase="A", role="queue", mode="stop")
    assert info.to_json()["break_address"] == 16 and info.to_json()["code"] is None
