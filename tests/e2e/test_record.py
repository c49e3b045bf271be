"""`tracekit record` on the real nested stack (issues 4 and 5 acceptance)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.sockets import descendants, listening_tcp
from tracekit.export.reader import read_trace

pytestmark = pytest.mark.e2e

MISSION = ("vgic_queue_irq_unlock", "handle_exit", "kvm_vgic_flush_hwstate")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, guest_assets: object) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("rec") / "mixed.pftrace"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tracekit",
            "record",
            "--scenario",
            "mixed",
            "--count",
            "20",
            "--json",
            "-o",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    listeners: list[tuple[int, str]] = []
    watched: set[int] = set()

    def watch() -> None:
        while proc.poll() is None:
            pids = descendants(proc.pid)
            watched.update(pids)
            listeners.extend(listening_tcp([proc.pid, *pids]))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate(timeout=1200)
    watcher.join(timeout=5)
    assert proc.returncode == 0, stderr[-3000:]
    return {
        "summary": json.loads(stdout),
        "out": out,
        "raw": out.with_suffix(".raw"),
        "listeners": listeners,
        "watched": watched,
    }


def test_chains_equal_ground_truth(mixed: dict[str, Any]) -> None:
    s = mixed["summary"]
    for cls in ("hardware", "virtual", "ipi"):
        c = s["classes"][cls]
        assert c["ground_truth"] > 0
        assert c["complete_chains"] == c["ground_truth"], (cls, c)
        assert c["partial_chains"] == 0
    assert s["phases_seen"] == ["A", "B", "C", "D", "E", "F"]
    assert s["kvm_mode"] == "vhe"
    assert s["phase_latency_ns"]["ipi"]["C"]["max"] == 0  # VHE: C has zero length


def test_mission_functions_hit_in_l1_el2_with_scenario_intids(mixed: dict[str, Any]) -> None:
    raw: Path = mixed["raw"]
    hits = [json.loads(line) for line in (raw / "hits.jsonl").read_text().splitlines()]
    meta = json.loads((raw / "meta.json").read_text())
    probes = Counter(h["probe"] for h in hits)
    for name in MISSION:
        assert probes[name] > 0, name
    assert all(h["el"] == 2 and h["host"] for h in hits if h["probe"] in MISSION)
    assert (raw / "events.jsonl").stat().st_size > 0 and mixed["out"].stat().st_size > 0
    gt = meta["ground_truth"]
    per_class_queue: Counter[str] = Counter()
    classes = {(i["intid"], i["vcpu"]): i["class"] for i in gt["interrupts"]}
    for h in hits:
        if h["probe"] == "vgic_queue_irq_unlock":
            key = (h["values"].get("intid"), h["values"].get("target_vcpu"))
            if key in classes:
                per_class_queue[classes[key]] += 1
    for cls, n in gt["per_class"].items():
        assert per_class_queue[cls] >= n, (cls, per_class_queue[cls], n)
    assert {k[0] for k in classes} <= {
        h["values"].get("intid") for h in hits if h["probe"] == "vgic_queue_irq_unlock"
    }


def test_nothing_listens_on_tcp(mixed: dict[str, Any]) -> None:
    assert mixed["watched"], "no child processes were observed"
    assert mixed["listeners"] == []


def test_trace_parses_back_balanced(mixed: dict[str, Any]) -> None:
    content = read_trace(mixed["out"])
    assert content.problems == []
    assert not content.unterminated_flows()
    summary = subprocess.run(
        [sys.executable, "-m", "tracekit", "summary", str(mixed["out"]), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(summary.stdout)["classes"] == mixed["summary"]["classes"]
