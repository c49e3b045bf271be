"""The struct offsets tracekit reads from BTF equal what the kernel's own decoder reads.

``guest build`` parses the Image's BTF with tracekit's decoder (kernel/btf.py) and every
capture's offsets come from there. The independent source is ``bpftool btf dump`` (Debian's
bpftool, built from the kernel tree's libbpf) of the same blob: on every kernel cached, the
blob tracekit finds is one bpftool reads with as many types, and every member path checked
resolves to the same offset and size in both. Without bpftool or a cached kernel the test
fails (never skips).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tracekit.kernel import btf

#: The structs the probes read; every member of each (anonymous ones flattened) is compared.
STRUCTS = ("kvm_vcpu", "vgic_irq", "vgic_v3_cpu_if", "vgic_cpu", "kvm_cpu_context")
#: More member paths: nested structs, arrays (indexed, and of structs), bitfields, and
#: members reached through anonymous unions and structs.
DEEPER = (
    "kvm_vcpu.cpu",
    "kvm_vcpu.arch.fault.far_el2",
    "kvm_vcpu.arch.fault.hpfar_el2",
    "kvm_vcpu.arch.vgic_cpu.vgic_v3",
    "kvm_vcpu.arch.vgic_cpu.private_irqs",
    "kvm_vcpu.arch.ctxt.regs.regs[30]",
    "kvm_vcpu.arch.ctxt.sys_regs[5]",
    "kvm_vcpu.arch.ctxt.fp_regs.vregs[3]",
    "kvm_vcpu.arch.pmu.pmc[3].idx",
    "vgic_irq.vcpu",
    "vgic_v3_cpu_if.vgic_lr[3]",
    "sys_reg_params.regval",
    "task_struct.sched_reset_on_fork",
    "task_struct.sched_contributes_to_load",
    "sk_buff.pkt_type",
    "sk_buff.cloned",
    "sk_buff.len",
)
#: Kinds that only qualify or rename another type.
_ALIASES = ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG")


class BpftoolTypes:
    """Member offsets from ``bpftool -j btf dump file``'s JSON, resolved independently."""

    def __init__(self, dump: dict[str, Any]) -> None:
        self.types = dump["types"]
        self.by_id = {t["id"]: t for t in self.types}
        self.structs: dict[str, dict[str, Any]] = {}
        for t in self.types:
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

    def names(self, struct: dict[str, Any]) -> list[str]:
        """Named members of ``struct``, those of its anonymous members included."""
        out = []
        for m in struct["members"]:
            inner = self.strip(m["type_id"])
            if m["name"] != "(anon)":
                out.append(m["name"])
            elif inner["kind"] in ("STRUCT", "UNION"):
                out += self.names(inner)
        return out

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
        bits, type_id, width = 0, 0, 0
        for part in names:
            name, _, index = part.partition("[")
            found = self.find(struct, name)
            assert found, f"{path}: no member {name}"
            bits += found[0]
            type_id, width = found[1]["type_id"], int(found[1].get("bitfield_size", 0))
            if index:
                array = self.strip(type_id)
                assert array["kind"] == "ARRAY", f"{path}: {name} is not an array"
                assert int(index[:-1]) < int(array["nr_elems"])
                type_id = array["type_id"]
                bits += int(index[:-1]) * self.size(type_id) * 8
            struct = self.strip(type_id)
        if not width:
            return {"offset": bits // 8, "size": self.size(type_id)}
        # A bitfield: tracekit's size is the bytes from its first bit's byte covering it.
        covering = (bits % 8 + width + 7) // 8
        return {"offset": bits // 8, "size": covering, "bit_offset": bits, "bit_size": width}


def _bpftool() -> str:
    found = shutil.which("bpftool", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None:
        pytest.fail("bpftool is not installed (Debian package bpftool)", pytrace=False)
    return found


def _kernels(guest_assets: Any) -> list[Path]:
    """The guest's kernel directory first, then every other kernel ``guest build`` cached."""
    mine = guest_assets.image_path.parent
    return [mine, *sorted(p.parent for p in mine.parent.glob("*/Image") if p.parent != mine)]


@pytest.mark.integration
def test_layout_equals_bpftool_on_the_cached_kernels(guest_assets, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tracekit.probes.spec import load_probe_set

    _bpftool()  # fails, never skips, without it
    # A literal argv: tests/integration/test_host_packages.py finds the program here and
    # checks that set-up installs its package. Debian puts bpftool in /usr/sbin.
    env = {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"}
    kernels = _kernels(guest_assets)
    for kdir in kernels:
        image = kdir / "Image"
        blob = btf.find_btf_blob(image.read_bytes())
        (tmp_path / "vmlinux.btf").write_bytes(blob)
        dump = subprocess.run(
            ["bpftool", "-j", "btf", "dump", "file", str(tmp_path / "vmlinux.btf")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        theirs = BpftoolTypes(json.loads(dump))
        ours = btf.Btf.parse(blob)
        # Every record's length is right (a wrong one would shift all later ids).
        assert len(ours) == len(theirs.types), kdir
        # ``guest build`` cached what the captures read; it is what this decoder gives now.
        cached = json.loads((kdir / "layout.json").read_text())
        if kdir == kernels[0]:
            assert set(cached) == set(load_probe_set("linux-6.1").btf_members())
        assert btf.extract_layout(ours, list(cached)) == cached, kdir
        members = [f"{s}.{m}" for s in STRUCTS for m in theirs.names(theirs.structs[s])]
        paths = [*STRUCTS, *cached, *DEEPER, *members]
        assert btf.extract_layout(ours, paths) == {p: theirs.layout(p) for p in paths}, kdir
        # What ``record`` and ``probes check`` load when a member is not in layout.json.
        loaded = btf.load_btf_from_file(image)
        for path in DEEPER:
            assert loaded.member_offset(path) == theirs.layout(path)["offset"], (kdir, path)
