from __future__ import annotations

import json

import pytest

from tracekit.errors import GroundTruthError
from tracekit.model.ground_truth import parse_ground_truth_line

pytestmark = pytest.mark.unit

LINE = "TRACEKIT-GROUND-TRUTH " + json.dumps(
    {
        "version": 1,
        "scenario": "mixed",
        "vcpus": 2,
        "count": 3,
        "ok": True,
        "errors": [],
        "interrupts": [
            {
                "class": "hardware",
                "intid": 27,
                "vcpu": 0,
                "source": "vtimer",
                "sent": 3,
                "acked": 3,
            },
            {
                "class": "hardware",
                "intid": 27,
                "vcpu": 1,
                "source": "vtimer",
                "sent": 3,
                "acked": 3,
            },
            {"class": "virtual", "intid": 40, "vcpu": 1, "source": "irqfd", "sent": 3, "acked": 3},
            {
                "class": "virtual",
                "intid": 41,
                "vcpu": 0,
                "source": "irqline",
                "sent": 3,
                "acked": 3,
            },
            {
                "class": "ipi",
                "intid": 1,
                "vcpu": 1,
                "source": "sgi",
                "from_vcpu": 0,
                "sent": 3,
                "acked": 3,
            },
        ],
        "exceptions": [{"kind": "hvc", "vcpu": 0, "issued": 3, "observed": 3}],
        "spurious": 0,
        "l1_ns": 1000,
        "l2_ticks": {"0": 5, "1": 6},
    }
)


def test_parse_and_totals() -> None:
    gt = parse_ground_truth_line(LINE)
    assert gt.per_class() == {"hardware": 6, "virtual": 6, "ipi": 3}
    assert gt.intids("virtual") == {40, 41}
    assert gt.disagreements() == []
    gt.check()
    assert gt.to_json()["per_class"]["ipi"] == 3


def test_disagreement_is_an_error_with_exit_code_1() -> None:
    bad = LINE.replace(
        '"sent": 3, "acked": 3}, {"class": "virtual", "intid": 40',
        '"sent": 3, "acked": 2}, {"class": "virtual", "intid": 40',
    )
    gt = parse_ground_truth_line(bad)
    with pytest.raises(GroundTruthError, match="sent 3, acknowledged 2") as info:
        gt.check()
    assert info.value.exit_code == 1


@pytest.mark.parametrize(
    "text",
    [
        "TRACEKIT-GROUND-TRUTH {",
        "TRACEKIT-GROUND-TRUTH []",
        'TRACEKIT-GROUND-TRUTH {"scenario": "x"}',
        'TRACEKIT-GROUND-TRUTH {"scenario": "x", "vcpus": "2", "count": 1}',
        "something else",
    ],
)
def test_malformed_lines(text: str) -> None:
    with pytest.raises(GroundTruthError):
        parse_ground_truth_line(text)
