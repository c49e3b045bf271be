"""One Recorder run against a scripted Machine, and what it left behind."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakepeer import kernel
from tests.fakepeer.peers import FakePeers, Machine, Step
from tracekit.record.options import RecordOptions, RecordResult
from tracekit.record.peers import PeerFactory
from tracekit.record.recorder import Recorder
from tracekit.record.resolve import Resolution


@dataclass
class Recorded:
    result: RecordResult
    machine: Machine
    peers: FakePeers

    @property
    def raw(self) -> Path:
        return self.result.raw_dir

    def hits(self) -> list[dict[str, Any]]:
        lines = (self.raw / "hits.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def meta_file(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.raw / "meta.json").read_text())
        return data

    def assert_nothing_left(self, *, graceful: bool = True) -> None:
        """The fault tests' aftermath (tests/e2e/test_faults.py): every peer closed, QEMU
        gone, the runtime directory removed, the partial raw data kept and merged."""
        calls = self.machine.calls
        assert "gdb.close" in calls or "gdb.attach" not in calls
        assert "qmp.close" in calls
        assert self.machine.exit_code is not None, "QEMU left running"
        assert ("qmp.quit" in calls) is graceful
        assert not self.peers.runtime.path.exists(), "runtime dir/sockets left"
        for name in ("hits.jsonl", "events.jsonl", "meta.json", "probes.txt"):
            assert (self.raw / name).exists(), name
        assert self.meta_file()["incomplete_reason"] == self.result.incomplete_reason


def record(
    tmp: Path,
    script: Sequence[Step],
    *,
    kvm_mode: str = "vhe",
    res: Resolution | None = None,
    opts: RecordOptions | None = None,
    **machine: Any,
) -> Recorded:
    res = res or kernel.resolution(kvm_mode)
    m = Machine(script, res.probes, **machine)
    peers = FakePeers(m)
    factory: PeerFactory = peers  # the fakes are checked against the Protocols (mypy)
    rec = Recorder(
        opts or kernel.options(tmp, kvm_mode),
        kernel.assets(tmp),
        kernel.tools(),
        peers=factory,
        resolver=lambda: res,
    )
    return Recorded(rec.run(), m, peers)
