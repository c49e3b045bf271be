"""The struct offsets tracekit reads from BTF equal what the kernel's own decoder reads.

``guest build`` parses the Image's BTF with tracekit's decoder (kernel/btf.py) and every
capture's offsets come from there. The independent source is ``bpftool btf dump`` (Debian's
bpftool, built from the kernel tree's libbpf) of the same blob: whatever kernel is
cached, every member path the probes use resolves to the same offset and size in both.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tracekit.kernel import btf

#: More member paths the decoder is checked on: nested structs, arrays, enums, pointers.
DEEPER = (
    "kvm_vcpu.cpu",
    "kvm_vcpu.vcpu_id",
    "kvm_vcpu.mode",
    "kvm_vcpu.requests",
    "kvm_vcpu.arch.fault.far_el2",
    "kvm_vcpu.arch.fault.hpfar_el2",
    "kvm_vcpu.arch.vgic_cpu.vgic_v3",
    "kvm_vcpu.arch.vgic_cpu.private_irqs",
    "vgic_irq.vcpu",
    "vgic_v3_cpu_if.vgic_lr",
    "vgic_v3_cpu_if.used_lrs",
    "sys_reg_params.regval",
)
#: Kinds that only qualify or rename another type.
_ALIASES = ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG")


class BpftoolTypes:
    """Member offsets from ``bpftool -j btf dump file``'s JSON, resolved independently."""

    def __init__(self, dump: dict[str, Any]) -> None:
        self.by_id = {t["id"]: t for t in dump["types"]}
        self.structs: dict[str, dict[str, Any]] = {}
        for t in dump["types"]:
            if t["kind"] in ("STRUCT", "UNION") and t.get("vlen"):
                self.structs.setdefault(t["name"], t)

    def strip(self, type_id: int) -> dict[str, Any]:
        t = self.by_id[type_id]
        while t["kind"] in _ALIASES:
            t = self.by_id[t["type_id"]]
        return t

    def size(self, type_id: int) -> int:
        t = self.strip(type_id)
        if t["kind"] == "PTR":
            return 8
        if t["kind"] == "ARRAY":
            return int(t["nr_elems"]) * self.size(t["type_id"])
        return int(t["size"])

    def find(self, struct: dict[str, Any], name: str) -> tuple[int, dict[str, Any]] | None:
        """(bit offset, member) of ``name`` in ``struct``, looking into anonymous members."""
        for m in struct["members"]:
            if m["name"] == name:
                return int(m["bits_offset"]), m
        for m in struct["members"]:
            inner = self.strip(m["type_id"])
            if m["name"] == "(anon)" and inner["kind"] in ("STRUCT", "UNION"):
                found = self.find(inner, name)
                if found:
                    return int(m["bits_offset"]) + found[0], found[1]
        return None

    def layout(self, path: str) -> dict[str, int]:
        head, *names = path.split(".")
        struct = self.structs[head]
        if not names:
            return {"offset": 0, "size": int(struct["size"])}
        bits, member = 0, None
        for i, name in enumerate(names):
            found = self.find(struct, name)
            assert found, f"{path}: no member {name}"
            bits += found[0]
            member = found[1]
            if i < len(names) - 1:
                struct = self.strip(member["type_id"])
        assert member is not None
        entry = {"offset": bits // 8, "size": self.size(member["type_id"])}
        if member.get("bitfield_size"):
            entry["bit_offset"] = bits
            entry["bit_size"] = int(member["bitfield_size"])
        return entry


@pytest.mark.integration
def test_layout_equals_bpftool_on_the_cached_kernel(guest_assets, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    blob = btf.find_btf_blob(guest_assets.image_path.read_bytes())
    (tmp_path / "vmlinux.btf").write_bytes(blob)
    proc = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", str(tmp_path / "vmlinux.btf")],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = BpftoolTypes(json.loads(proc.stdout))
    cached = json.loads(Path(guest_assets.layout).read_text())
    from tracekit.probes.spec import load_probe_set

    # The layout holds what the probe set's captures read, derived from them.
    assert set(cached) == set(load_probe_set("linux-6.1").btf_members())
    ours = btf.Btf.parse(blob)
    assert btf.extract_layout(ours, list(cached)) == cached
    for path in [*cached, *DEEPER]:
        assert theirs.layout(path) == btf.extract_layout(ours, [path])[path], path
    # Whole structs too: the sizes the capture widths are checked against.
    for struct in ("kvm_vcpu", "vgic_irq", "vgic_v3_cpu_if"):
        assert btf.extract_layout(btf.Btf.parse(blob), [struct])[struct] == theirs.layout(struct)
