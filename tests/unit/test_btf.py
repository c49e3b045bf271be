"""Tests for tracekit.kernel.btf on small hand-built BTF blobs: member paths, the error
paths, and finding the blob in an image.

The same decoder against an independent one (bpftool) on the cached kernels:
tests/integration/test_btf_bpftool.py.
"""

from __future__ import annotations

import json
import struct
from enum import IntEnum
from pathlib import Path

import pytest

from tracekit.errors import KernelImageError, SymbolError
from tracekit.kernel.btf import Btf, extract_layout, find_btf_blob, load_btf_from_file


class BtfKind(IntEnum):
    """``BTF_KIND_*`` of include/uapi/linux/btf.h, to build blobs with."""

    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# ---------------------------------------------------------------------------- blob builder


class BtfBuilder:
    """Assemble a BTF blob type by type (ids are returned in order, starting at 1)."""

    def __init__(self, endian: str = "<") -> None:
        self.e = endian
        self.strings = bytearray(b"\0")
        self.offsets: dict[str, int] = {"": 0}
        self.types = bytearray()
        self.count = 0
        self.kinds: set[int] = set()

    def s(self, name: str) -> int:
        if name not in self.offsets:
            self.offsets[name] = len(self.strings)
            self.strings += name.encode() + b"\0"
        return self.offsets[name]

    def raw(
        self, name: str, kind: int, vlen: int, word: int, extra: bytes = b"", kf: bool = False
    ) -> int:
        info = (int(kf) << 31) | (kind << 24) | vlen
        self.types += struct.pack(self.e + "III", self.s(name), info, word) + extra
        self.count += 1
        self.kinds.add(kind)
        return self.count

    def int_(self, name: str, size: int, signed: bool = False) -> int:
        enc = (1 if signed else 0) << 24 | (size * 8)
        return self.raw(name, BtfKind.INT, 0, size, struct.pack(self.e + "I", enc))

    def ptr(self, target: int) -> int:
        return self.raw("", BtfKind.PTR, 0, target)

    def ref(self, kind: BtfKind, target: int, name: str = "") -> int:
        return self.raw(name, kind, 0, target)

    def array(self, elem: int, index: int, n: int) -> int:
        return self.raw("", BtfKind.ARRAY, 0, 0, struct.pack(self.e + "III", elem, index, n))

    def composite(
        self,
        kind: BtfKind,
        name: str,
        size: int,
        members: list[tuple[str, int, int, int]],
    ) -> int:
        """members: (name, type id, bit offset, bitfield size)."""
        kf = any(bits for *_x, bits in members)
        extra = b""
        for m_name, m_type, bit_off, bits in members:
            off = (bits << 24 | bit_off) if kf else bit_off
            extra += struct.pack(self.e + "III", self.s(m_name), m_type, off)
        return self.raw(name, kind, len(members), size, extra, kf)

    def enum(self, name: str, values: dict[str, int], signed: bool = False) -> int:
        extra = b"".join(
            struct.pack(self.e + "Ii", self.s(k), v)
            if signed
            else struct.pack(self.e + "II", self.s(k), v)
            for k, v in values.items()
        )
        return self.raw(name, BtfKind.ENUM, len(values), 4, extra, signed)

    def enum64(self, name: str, values: dict[str, int], signed: bool = False) -> int:
        extra = b""
        for k, v in values.items():
            raw = v & (2**64 - 1)
            extra += struct.pack(self.e + "III", self.s(k), raw & 0xFFFFFFFF, raw >> 32)
        return self.raw(name, BtfKind.ENUM64, len(values), 8, extra, signed)

    def proto(self, ret: int, params: list[tuple[str, int]]) -> int:
        extra = b"".join(struct.pack(self.e + "II", self.s(n), t) for n, t in params)
        return self.raw("", BtfKind.FUNC_PROTO, len(params), ret, extra)

    def func(self, name: str, proto: int, linkage: int = 1) -> int:
        return self.raw(name, BtfKind.FUNC, linkage, proto)

    def var(self, name: str, type_id: int) -> int:
        return self.raw(name, BtfKind.VAR, 0, type_id, struct.pack(self.e + "I", 1))

    def datasec(self, name: str, size: int, infos: list[tuple[int, int, int]]) -> int:
        extra = b"".join(struct.pack(self.e + "III", *i) for i in infos)
        return self.raw(name, BtfKind.DATASEC, len(infos), size, extra)

    def decl_tag(self, name: str, target: int, component: int) -> int:
        return self.raw(name, BtfKind.DECL_TAG, 0, target, struct.pack(self.e + "i", component))

    def build(self, version: int = 1) -> bytes:
        magic = struct.pack(self.e + "H", 0xEB9F)
        hdr = magic + struct.pack(
            self.e + "BBIIIII",
            version,
            0,
            24,
            0,
            len(self.types),
            len(self.types),
            len(self.strings),
        )
        return hdr + bytes(self.types) + bytes(self.strings)


def sample_builder(endian: str = "<") -> BtfBuilder:
    """A small type graph exercising every kind the kernel emits.

    struct inner { u32 a; u8 flag:1; u8 mode:3; }                      size 8
    struct outer {                                                     size 64
        int x;                                   // 0
        union { u64 u; struct { u32 lo; u32 hi; }; };  // 8 (anonymous)
        struct inner in;                         // 16
        struct inner arr[4];                     // 24
        struct outer *next;                      // 56
    };
    typedef struct outer outer_t;  const volatile u64 cv;  ...
    """
    b = BtfBuilder(endian)
    u8 = b.int_("unsigned char", 1)  # 1
    u32 = b.int_("unsigned int", 4)  # 2
    u64 = b.int_("long long unsigned int", 8)  # 3
    int_ = b.int_("int", 4, signed=True)  # 4
    long_ = b.int_("long int", 8, signed=True)  # 5
    td_u32 = b.ref(BtfKind.TYPEDEF, u32, "u32")  # 6
    td_u64 = b.ref(BtfKind.TYPEDEF, u64, "u64")  # 7
    inner = b.composite(
        BtfKind.STRUCT,
        "inner",
        8,
        [("a", td_u32, 0, 0), ("flag", u8, 32, 1), ("mode", u8, 33, 3)],
    )  # 8
    anon_s = b.composite(BtfKind.STRUCT, "", 8, [("lo", td_u32, 0, 0), ("hi", td_u32, 32, 0)])  # 9
    anon_u = b.composite(BtfKind.UNION, "", 8, [("u", td_u64, 0, 0), ("", anon_s, 0, 0)])  # 10
    arr = b.array(inner, u32, 4)  # 11
    fwd_outer_ptr_target = 13  # struct outer is the next id after the pointer
    p_outer = b.ptr(fwd_outer_ptr_target)  # 12
    outer = b.composite(
        BtfKind.STRUCT,
        "outer",
        64,
        [
            ("x", int_, 0, 0),
            ("", anon_u, 64, 0),
            ("in", inner, 128, 0),
            ("arr", arr, 192, 0),
            ("next", p_outer, 448, 0),
        ],
    )  # 13
    assert outer == fwd_outer_ptr_target
    b.ref(BtfKind.TYPEDEF, outer, "outer_t")  # 14
    vol = b.ref(BtfKind.VOLATILE, u64)  # 15
    cv = b.ref(BtfKind.CONST, vol)  # 16
    rst = b.ref(BtfKind.RESTRICT, p_outer)  # 17
    tag = b.ref(BtfKind.TYPE_TAG, p_outer, "user")  # 18
    b.raw("double", BtfKind.FLOAT, 0, 8)  # 19
    b.enum("color", {"RED": 0, "GREEN": 1, "NEG": -2}, signed=True)  # 20
    b.enum64("big", {"HUGE": 1 << 40, "MINUS": -1}, signed=True)  # 21
    b.raw("opaque", BtfKind.FWD, 0, 0)  # 22
    cb_proto = b.proto(int_, [("", long_)])  # 23
    p_cb = b.ptr(cb_proto)  # 24
    const_char = b.ref(BtfKind.CONST, u8)  # 25
    p_cchar = b.ptr(const_char)  # 26
    pp_cchar = b.ptr(p_cchar)  # 27
    proto = b.proto(
        int_,
        [("o", p_outer), ("n", int_), ("cb", p_cb), ("argv", pp_cchar), ("r", rst), ("t", tag)],
    )  # 28
    func = b.func("do_thing", proto)  # 29
    var = b.var("counter", td_u64)  # 30
    b.datasec(".data", 8, [(var, 0, 8)])  # 31
    b.decl_tag("noinline", func, -1)  # 32
    holder = b.composite(BtfKind.STRUCT, "holder", 8, [("cv", cv, 0, 0)])  # 33
    assert holder == 33
    return b


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.parse(sample_builder().build())


# ---------------------------------------------------------------------------- parsing


@pytest.mark.unit
def test_every_kind_is_skipped_by_its_length(btf: Btf) -> None:
    # The sample has each kind before ``holder`` (the last type): a wrong length for any
    # of them would misplace it.
    assert len(btf) == 33
    assert sample_builder().kinds == set(range(1, 20))
    assert btf.member_info("holder.cv").size == 8
    assert btf.member_info("holder").size == 8


@pytest.mark.unit
def test_struct_sizes_and_offsets(btf: Btf) -> None:
    assert btf.member_info("outer").size == 64
    assert btf.member_info("outer").offset == 0
    assert btf.member_offset("outer.x") == 0
    assert btf.member_offset("outer.in.a") == 16
    assert btf.member_info("outer.in").size == 8
    assert btf.member_offset("outer.next") == 56
    assert btf.member_info("outer.next").size == 8
    assert btf.member_info("outer.arr").size == 32
    assert btf.member_offset("outer.arr[2].a") == 24 + 2 * 8
    assert btf.member_info("outer.arr[3]").size == 8


@pytest.mark.unit
def test_anonymous_members_are_transparent(btf: Btf) -> None:
    assert btf.member_offset("outer.u") == 8
    assert btf.member_offset("outer.lo") == 8
    assert btf.member_offset("outer.hi") == 12
    assert btf.member_info("outer.hi").size == 4


@pytest.mark.unit
def test_bitfields(btf: Btf) -> None:
    info = btf.member_info("outer.in.mode")
    assert info.bitfield_size == 3
    assert info.bit_offset == 128 + 33
    assert info.offset == 20
    assert info.size == 1
    assert btf.member_info("outer.arr[1].flag").bit_offset == 192 + 64 + 32
    assert btf.member_info("outer.in.a").bitfield_size == 0


@pytest.mark.unit
def test_big_endian_blob_is_refused_by_name() -> None:
    with pytest.raises(KernelImageError, match="big-endian"):
        Btf.parse(sample_builder(">").build())


@pytest.mark.unit
def test_extract_layout_is_json_round_trippable(btf: Btf) -> None:
    layout = extract_layout(btf, ["outer", "outer.hi", "outer.in.mode", "outer.next"])
    assert layout == {
        "outer": {"offset": 0, "size": 64},
        "outer.hi": {"offset": 12, "size": 4},
        "outer.in.mode": {"offset": 20, "size": 1, "bit_offset": 161, "bit_size": 3},
        "outer.next": {"offset": 56, "size": 8},
    }
    assert json.loads(json.dumps(layout)) == layout


# ---------------------------------------------------------------------------- lookup errors


@pytest.mark.unit
def test_missing_struct_lists_close_names(btf: Btf) -> None:
    with pytest.raises(SymbolError, match=r"'outr' not found.*close names: outer"):
        btf.member_info("outr")


@pytest.mark.unit
def test_forward_declaration_only(btf: Btf) -> None:
    with pytest.raises(SymbolError, match="only a forward declaration"):
        btf.member_info("opaque.x")


@pytest.mark.unit
def test_missing_member_names_the_struct_and_suggests(btf: Btf) -> None:
    with pytest.raises(SymbolError, match=r"struct inner has no member 'flags'.*close names: flag"):
        btf.member_offset("outer.in.flags")
    with pytest.raises(SymbolError, match=r"members: x, u, lo, hi, in, arr, next"):
        btf.member_offset("outer.zzz")


@pytest.mark.unit
def test_path_through_pointer_is_refused(btf: Btf) -> None:
    with pytest.raises(SymbolError, match=r"it is 'struct outer \*'.*cannot cross pointers"):
        btf.member_offset("outer.next.x")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("outer.arr[4]", "out of range"),
        ("outer.x[0]", "not an array"),
        ("outer..x", "empty component"),
        ("outer.x-y", "not an identifier"),
    ],
)
def test_bad_paths(btf: Btf, path: str, message: str) -> None:
    with pytest.raises(SymbolError, match=message):
        btf.member_offset(path)


@pytest.mark.unit
def test_ambiguous_struct_definitions() -> None:
    b = BtfBuilder()
    u32 = b.int_("unsigned int", 4)
    b.composite(BtfKind.STRUCT, "dup", 8, [("a", u32, 0, 0), ("b", u32, 32, 0)])
    b.composite(BtfKind.STRUCT, "dup", 8, [("b", u32, 0, 0), ("a", u32, 32, 0)])
    b.composite(BtfKind.STRUCT, "dup", 4, [("c", u32, 0, 0)])
    dup = Btf.parse(b.build())
    with pytest.raises(SymbolError, match="ambiguous"):
        dup.member_offset("dup.a")
    with pytest.raises(SymbolError, match="ambiguous"):
        dup.member_info("dup")
    assert dup.member_offset("dup.c") == 0  # only one definition has it


# ---------------------------------------------------------------------------- blob errors


@pytest.mark.unit
def test_bad_magic() -> None:
    blob = bytearray(sample_builder().build())
    blob[0:2] = b"\x00\x00"
    with pytest.raises(KernelImageError, match=r"expected magic 0xeb9f"):
        Btf.parse(bytes(blob))


@pytest.mark.unit
def test_bad_version() -> None:
    with pytest.raises(KernelImageError, match="expected version 1, found 2"):
        Btf.parse(sample_builder().build(version=2))


@pytest.mark.unit
@pytest.mark.parametrize("cut", [1, 100, 400])
def test_truncated_blob(cut: int) -> None:
    blob = sample_builder().build()
    with pytest.raises(KernelImageError, match="truncated"):
        Btf.parse(blob[:-cut])


@pytest.mark.unit
def test_too_short_for_header() -> None:
    with pytest.raises(KernelImageError, match="shorter than the 24-byte header"):
        Btf.parse(b"\x9f\xeb\x01\x00")


@pytest.mark.unit
def test_unknown_kind() -> None:
    b = sample_builder()
    b.raw("weird", 25, 0, 0)
    with pytest.raises(KernelImageError, match="unknown type kind 25"):
        Btf.parse(b.build())


@pytest.mark.unit
def test_record_running_past_type_section() -> None:
    b = BtfBuilder()
    b.raw("s", BtfKind.STRUCT, 5, 8)  # claims 5 members, has none
    with pytest.raises(KernelImageError, match="runs past the type section"):
        Btf.parse(b.build())


@pytest.mark.unit
def test_name_offset_outside_strings() -> None:
    b = BtfBuilder()
    b.types += struct.pack("<III", 9999, int(BtfKind.INT) << 24, 4) + struct.pack("<I", 32)
    b.count += 1
    with pytest.raises(KernelImageError, match="name offset 9999"):
        Btf.parse(b.build())


# ---------------------------------------------------------------------------- finding the blob


@pytest.mark.unit
def test_find_blob_in_image_picks_the_largest_valid_candidate() -> None:
    small = BtfBuilder()
    small.int_("int", 4, signed=True)
    big = sample_builder().build()
    # A decoy: valid-looking header whose sections run past the end of the buffer.
    decoy = b"\x9f\xeb\x01\x00" + struct.pack("<IIIII", 24, 0, 0x100000, 0x100000, 10)
    # Another decoy: fits, but its type section is garbage.
    garbage = b"\x9f\xeb\x01\x00" + struct.pack("<IIIII", 24, 0, 12, 12, 1) + b"\xff" * 12 + b"\0"
    image = b"\0" * 100 + garbage + small.build() + b"\x11" * 37 + big + b"\0" * 64 + decoy
    assert find_btf_blob(image) == big


@pytest.mark.unit
def test_find_blob_reports_missing_btf() -> None:
    with pytest.raises(KernelImageError, match=r"no BTF found in vmlinuz.*CONFIG_DEBUG_INFO_BTF=y"):
        find_btf_blob(b"\x9f\xeb\x01\x00" + b"\0" * 4096, source="vmlinuz")


@pytest.mark.unit
def test_load_from_file_accepts_blob_or_image(tmp_path: Path) -> None:
    blob = sample_builder().build()
    (tmp_path / "vmlinux.btf").write_bytes(blob)
    (tmp_path / "Image").write_bytes(b"\0" * 64 + blob + b"\0" * 64)
    assert load_btf_from_file(tmp_path / "vmlinux.btf").member_info("outer").size == 64
    assert load_btf_from_file(tmp_path / "Image").member_offset("outer.hi") == 12
    with pytest.raises(KernelImageError, match="cannot read"):
        load_btf_from_file(tmp_path / "missing")
