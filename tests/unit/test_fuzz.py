"""Property-based fuzzing of every parser that reads outside input: the only exceptions
that may escape are tracekit's own, with a message."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracekit.config import load_machine
from tracekit.errors import TracekitError
from tracekit.export.reader import parse_trace
from tracekit.gdb.mi import parse_record
from tracekit.model.events import RawEvent
from tracekit.model.ground_truth import parse_ground_truth_line
from tracekit.record.qemulog import LogStats, parse_qemu_log

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_GOLDEN: list[bytes] = []


def golden_trace() -> bytes:
    if not _GOLDEN:
        from tests.unit.test_export_and_summary import build

        _GOLDEN.append(build())
    return _GOLDEN[0]


def only_ours(fn, *args):  # type: ignore[no-untyped-def]
    try:
        fn(*args)
    except TracekitError as exc:
        assert str(exc)


@SETTINGS
@given(st.binary(max_size=2048))
def test_trace_reader_random_bytes(data: bytes) -> None:
    only_ours(parse_trace, data)


@SETTINGS
@given(st.data())
def test_trace_reader_mutated_real_trace(data: st.DataObject) -> None:
    blob = bytearray(golden_trace()[:20000])
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    only_ours(parse_trace, bytes(blob[:cut]))


LINE = st.one_of(
    st.text(max_size=120),
    st.builds(
        lambda a, b, c: f"TKP {a} {b} {c}",
        st.integers(-5, 5),
        st.text(max_size=8),
        st.text(max_size=12),
    ),
    st.builds(
        lambda cpu, v: f"gicv3_ich_lr_write GICv3 ICH_LR0_EL2 write cpu {cpu} value {v}",
        st.text(max_size=6),
        st.text(max_size=20),
    ),
    st.just("TKS 0 12"),
)


@SETTINGS
@given(st.lists(LINE, max_size=30))
def test_qemu_log_parser(lines: list[str]) -> None:
    stats = LogStats()
    list(parse_qemu_log(lines, stats))
    assert stats.lines == len(lines)


@SETTINGS
@given(st.text(max_size=200))
def test_gdb_mi_translator(text: str) -> None:
    only_ours(parse_record, text)


@SETTINGS
@given(st.text(max_size=300))
def test_ground_truth_line(text: str) -> None:
    only_ours(parse_ground_truth_line, "TRACEKIT-GROUND-TRUTH " + text)


@SETTINGS
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=20,
    )
)
def test_raw_event_line(obj: object) -> None:
    only_ours(RawEvent.from_json, json.dumps(obj))


MACHINE = (Path(__file__).parents[2] / "configs/machines/vhe.toml").read_text()


@SETTINGS
@given(st.data())
def test_config_loader(data: st.DataObject) -> None:
    text = MACHINE
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(text)))
        text = text[:pos] + data.draw(st.text(max_size=6)) + text[pos:]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "machine.toml"
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as fh:
            fh.write(text)
        only_ours(load_machine, str(path))
