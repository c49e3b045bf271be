"""The chain table: what a trace says about its chains and exits, typed (pure).

One schema shared by the exporter, which writes it, and by ``summary``/``diff``, which
read it back: a :class:`ChainRow` per A–F chain, an :class:`ExitRow` per guest exit and
the recording's metadata. Nothing outside this module builds or parses an argument name
(``phase_D_ns``) or relies on a slice's title (``exit vCPU1: ...``) to find a row.

Where the rows live in the ``.pftrace``: as the debug annotations of the chain slice and
the exit slice the exporter already writes, each marked ``tracekit.row = "chain"`` or
``"exit"`` (and an unacknowledged queue's row on its instant on the vCPU's track, marked
``"unacknowledged"``), and the schema's version as ``tracekit.table`` on the "tracekit recording"
instant (which also carries the metadata as ``tracekit.meta``). Why not a track of its
own with one instant per row: the annotations are what the Perfetto UI shows when a
slice is clicked, so the table stays readable there and queryable with SQL on the slices
a user sees; a second copy would double those bytes and add a track of thousands of
instants to the UI; and a row is written with its slice, when the chain or exit closes,
so the export stays streaming with nothing extra held in memory. Readers find rows by
``tracekit.row`` (``ROW_ARG``), never by title, so titles stay free to change, with
one exception: a phase slice carries only its chain's id, and its title starts with its
phase's letter (:func:`phase_of`, the exporter's ``PHASE_TITLES``).

A trace written before the table (no version on its recording instant) has no rows:
:meth:`ChainTable.required` says how to re-export it.

Why one module over ~400 lines: it is the schema, and the schema is the point of it
being one place; rows, their argument names, their validation on the way back in and
the table-level checks (version, completeness) change together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracekit.errors import TraceFileError
from tracekit.model.chains import Chain, Exit, Reconstruction, Unacked
from tracekit.model.meta import RecordingMeta
from tracekit.model.vocabulary import PHASES

__all__ = [
    "CHAIN_ROW",
    "EXIT_ROW",
    "META_ARG",
    "META_KEYS",
    "ROW_ARG",
    "SCHEMA_VERSION",
    "UNACKED_ROW",
    "VERSION_ARG",
    "ChainRow",
    "ChainTable",
    "Describe",
    "ExitRow",
    "UnackedRow",
    "meta_args",
    "meta_json",
    "phase_of",
    "read_table",
    "require_schema",
    "table_of",
]

#: Bumped when a row's fields change meaning; a reader refuses a version it does not know.
SCHEMA_VERSION = 1
#: On the recording instant: the schema version its trace's rows follow.
VERSION_ARG = "tracekit.table"
#: On the recording instant: the recording's metadata (``META_KEYS`` of meta.json) as JSON.
META_ARG = "tracekit.meta"
#: On each row's slice: which kind of row its annotations are (a reader that walks the
#: slices, like ``explain``, finds a chain's slice by ``args[ROW_ARG] == CHAIN_ROW``).
ROW_ARG = "tracekit.row"
CHAIN_ROW, EXIT_ROW = "chain", "exit"
#: An unacknowledged queue's row: on an instant (the queue's time, its vCPU's track).
UNACKED_ROW = "unacknowledged"
#: The meta.json keys a trace keeps (what summary and explain read of the recording):
#: fields of :class:`~tracekit.model.meta.RecordingMeta`.
META_KEYS = (
    "scenario",
    "count",
    "vcpus",
    "machine",
    "kvm_mode",
    "kernel_release",
    "kernel_version",
    "qemu_version",
    "timebase",
    "icount",
    "ended_by",
    "incomplete_reason",
    "ground_truth",
    "l2_window",
    "workload_sources",
    "probe_locations",
    "probe_lines",
    "probe_set",
    "kernel_family",
)
#: Argument name of each phase's duration (the names traces have always used: SQL on
#: ``args`` and people's queries know them).
_PHASE_ARGS = {p: f"phase_{p}_ns" for p in PHASES}
#: An exit has phases B, C and D only.
_EXIT_PHASES = ("B", "C", "D")
#: (exit code, ESR) -> (exit code name, ESR class or "", handler or ""): the probe set's
#: ``ExitDecoder.describe`` (the model does not load probe sets).
Describe = Callable[[int | None, int | None], tuple[str, str, str]]


# -- typed reads of annotations: a wrong type is a ValueError the reader reports ------------


def _int(args: Mapping[str, Any], key: str) -> int:
    v = args.get(key)
    if v.__class__ is not int:  # bool is an int subclass: refused on purpose
        raise ValueError(f"{key} is {v!r}, not an integer")
    return int(v)


def _opt_int(args: Mapping[str, Any], key: str) -> int | None:
    return None if args.get(key) is None else _int(args, key)


def _str(args: Mapping[str, Any], key: str) -> str:
    """A string annotation; absent is "" (the exporter leaves empty strings out)."""
    v = args.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ValueError(f"{key} is {v!r}, not a string")
    return v


def _hex(args: Mapping[str, Any], key: str) -> int | None:
    """A register value written as ``0x...`` (hex is how people read ESR and SGI1R)."""
    s = _str(args, key)
    return int(s, 16) if s else None


def _phases(args: Mapping[str, Any], phases: Iterable[str]) -> dict[str, int]:
    out = {}
    for p in phases:
        d = _opt_int(args, _PHASE_ARGS[p])
        if d is not None:
            out[p] = d
    return out


def _phase_args(durations: Mapping[str, int]) -> dict[str, int]:
    return {_PHASE_ARGS[p]: d for p, d in durations.items()}


# -- rows ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainRow:
    """One interrupt chain: its identity, its source and each seen phase's duration."""

    id: int
    cls: str
    intid: int
    vcpu: int
    #: The source's label (``SOURCE_LABELS``), its kind ("" if unknown) and A's function.
    source: str
    source_kind: str = ""
    source_function: str = ""
    source_cpu: int | None = None
    #: Why the delivering exit happened (IRQ, WFx, ...), "" without one.
    exit_reason: str = ""
    lr: int | None = None
    hw: int | None = None
    sender_vcpu: int | None = None
    sgi1r: int | None = None
    #: Phase -> duration in ns, for the phases the recording saw.
    phase_ns: Mapping[str, int] = field(default_factory=dict)
    #: Queues the acknowledgement absorbed beyond the first (``Chain.merged_queues``);
    #: written only when not 0, and 0 when absent (traces from before it read back).
    merged_queues: int = 0
    #: The acknowledgement's L1 time (ns): what a Linux L2's window counts by
    #: (model/l2truth.py). None in traces from before it.
    ack_ns: int | None = None

    @property
    def merged(self) -> bool:
        """Two queues or more, one acknowledgement (docs/phases.md)."""
        return self.merged_queues > 0

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(p for p in PHASES if p not in self.phase_ns)

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def length_ns(self) -> int:
        """The chain's length: every phase from A's start to the acknowledgement."""
        return sum(self.phase_ns.values())

    @classmethod
    def of(cls, chain: Chain) -> ChainRow:
        return cls(
            chain.id,
            chain.cls,
            chain.intid,
            chain.vcpu,
            chain.source,
            chain.source_kind,
            chain.source_function,
            chain.source_cpu,
            chain.exit_reason,
            chain.lr,
            chain.hw,
            chain.sender_vcpu,
            chain.sgi1r,
            {p: s.end - s.start for p, s in chain.phases.items()},
            chain.merged_queues,
            chain.ack.t,
        )

    def to_args(self) -> dict[str, Any]:
        """The chain slice's annotations (None and "" are left out of the trace)."""
        missing = self.missing
        return {
            ROW_ARG: CHAIN_ROW,
            "chain": self.id,
            "class": self.cls,
            "intid": self.intid,
            "vcpu": self.vcpu,
            "source": self.source,
            "source_kind": self.source_kind or None,
            "source_function": self.source_function or None,
            # Both spelt out for the UI; from_args checks they agree with the phases.
            "complete": not missing,
            "missing": ",".join(missing) or None,
            "exit_reason": self.exit_reason or None,
            "lr": self.lr,
            "hw": self.hw,
            "source_l1_cpu": self.source_cpu,
            "sender_vcpu": self.sender_vcpu,
            "sgi1r": f"{self.sgi1r:#x}" if self.sgi1r is not None else None,
            "merged_queues": self.merged_queues or None,
            "ack_ns": self.ack_ns,
            **_phase_args(self.phase_ns),
        }

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> ChainRow:
        row = cls(
            _int(args, "chain"),
            _str(args, "class"),
            _int(args, "intid"),
            _int(args, "vcpu"),
            _str(args, "source"),
            _str(args, "source_kind"),
            _str(args, "source_function"),
            _opt_int(args, "source_l1_cpu"),
            _str(args, "exit_reason"),
            _opt_int(args, "lr"),
            _opt_int(args, "hw"),
            _opt_int(args, "sender_vcpu"),
            _hex(args, "sgi1r"),
            _phases(args, PHASES),
            _opt_int(args, "merged_queues") or 0,
            _opt_int(args, "ack_ns"),
        )
        if row.merged_queues < 0:
            raise ValueError(f"chain {row.id}: merged_queues is {row.merged_queues}")
        if args.get("complete") is not row.complete or _str(args, "missing") != ",".join(
            row.missing
        ):
            raise ValueError(f"chain {row.id}: complete/missing disagree with its phases")
        return row


@dataclass(frozen=True, slots=True)
class ExitRow:
    """One guest exit drawn on its L1 CPU: why it happened and its B, C, D durations."""

    cpu: int
    vcpu: int
    exit_code_name: str
    exit_code: int | None = None
    #: The hyp vector it came through ("sync", "irq"), "" if not seen.
    vector: str = ""
    #: The ESR, for a TRAP only (other exits' ESR means nothing).
    esr: int | None = None
    esr_class: str = ""
    handler: str = ""
    phase_ns: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, ex: Exit, kvm_mode: str, describe: Describe) -> ExitRow | None:
        """The row of ``ex``; None for an exit with no phase seen (the trace draws none)."""
        spans = ex.spans(kvm_mode)
        if not spans:
            return None
        return cls.described(
            ex, describe(ex.code, ex.esr), {p: s.duration for p, s in spans.items()}
        )

    @classmethod
    def described(
        cls, ex: Exit, described: tuple[str, str, str], phase_ns: Mapping[str, int]
    ) -> ExitRow:
        """The row of ``ex`` once its code is named (the exporter caches ``describe``)."""
        name, ec, handler = described
        return cls(
            ex.cpu,
            ex.vcpu,
            name,
            ex.code,
            ex.vector,
            ex.esr if name == "TRAP" else None,
            ec,
            handler,
            phase_ns,
        )

    def to_args(self) -> dict[str, Any]:
        return {
            ROW_ARG: EXIT_ROW,
            "l1_cpu": self.cpu,
            "vcpu": self.vcpu,
            "vector": self.vector or None,
            "exit_code": self.exit_code,
            "exit_code_name": self.exit_code_name,
            "esr": f"{self.esr:#010x}" if self.esr is not None else None,
            "esr_class": self.esr_class or None,
            "handler": self.handler or None,
            **_phase_args(self.phase_ns),
        }

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> ExitRow:
        return cls(
            _int(args, "l1_cpu"),
            _int(args, "vcpu"),
            _str(args, "exit_code_name"),
            _opt_int(args, "exit_code"),
            _str(args, "vector"),
            _hex(args, "esr"),
            _str(args, "esr_class"),
            _str(args, "handler"),
            _phases(args, _EXIT_PHASES),
        )


@dataclass(frozen=True, slots=True)
class UnackedRow:
    """A pending queue no acknowledgement claimed (``chains.Unacked``): its time, the
    interrupt, its class and source as a chain's would be, and the queues merged into it."""

    t: int
    intid: int
    vcpu: int
    cls: str
    source: str = ""
    source_kind: str = ""
    source_function: str = ""
    cpu: int | None = None
    merged_queues: int = 0

    @classmethod
    def of(cls, u: Unacked) -> UnackedRow:
        return cls(
            u.t,
            u.intid,
            u.vcpu,
            u.cls,
            u.source,
            u.source_kind,
            u.source_function,
            u.cpu,
            u.merged_queues,
        )

    @property
    def title(self) -> str:
        """The instant's title: ``unacknowledged INTID n (source)``."""
        return f"unacknowledged INTID {self.intid} ({self.source or 'source unknown'})"

    def to_args(self) -> dict[str, Any]:
        return {
            ROW_ARG: UNACKED_ROW,
            "t": self.t,
            "intid": self.intid,
            "vcpu": self.vcpu,
            "class": self.cls,
            "source": self.source or None,
            "source_kind": self.source_kind or None,
            "source_function": self.source_function or None,
            "l1_cpu": self.cpu,
            "merged_queues": self.merged_queues or None,
        }

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> UnackedRow:
        return cls(
            _int(args, "t"),
            _int(args, "intid"),
            _int(args, "vcpu"),
            _str(args, "class"),
            _str(args, "source"),
            _str(args, "source_kind"),
            _str(args, "source_function"),
            _opt_int(args, "l1_cpu"),
            _opt_int(args, "merged_queues") or 0,
        )


# -- the table ------------------------------------------------------------------------------


def meta_json(meta: RecordingMeta) -> str:
    """The recording's metadata as the trace stores it (null for a key it lacks)."""
    written = meta.to_json()
    return json.dumps({k: written.get(k) for k in META_KEYS}, sort_keys=True)


def _meta_of(text: str) -> RecordingMeta:
    """The metadata of a trace's ``META_ARG``; a TraceFileError if it does not fit."""
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise TraceFileError(f"recording metadata is not JSON ({exc})") from None
    return RecordingMeta.from_json(parsed, "recording metadata")


def meta_args(meta: RecordingMeta) -> dict[str, Any]:
    """The table's part of the recording instant's annotations."""
    return {META_ARG: meta_json(meta), VERSION_ARG: SCHEMA_VERSION}


def _raw_dir(source: str) -> str:
    # `record -o X.pftrace` keeps its raw files in X.raw/ (what `tracekit export` reads).
    return source[: -len(".pftrace")] + ".raw" if source.endswith(".pftrace") else "FILE.raw"


@dataclass(frozen=True)
class ChainTable:
    """A trace's rows and metadata. ``meta`` is None when the trace has no tracekit
    recording instant; ``version`` is 0 when that instant names no table (an older
    tracekit wrote it)."""

    meta: RecordingMeta | None = None
    version: int = 0
    chains: tuple[ChainRow, ...] = ()
    exits: tuple[ExitRow, ...] = ()
    #: Pending queues no acknowledgement claimed, in time order.
    unacknowledged: tuple[UnackedRow, ...] = ()

    def required(self, source: str = "trace") -> ChainTable:
        """This table, or the one-line error that says why ``source`` has none."""
        require_schema(self.meta is not None, self.version, source)
        return self


def require_schema(recorded: bool, version: int, source: str = "trace") -> None:
    """The one-line error for a trace whose rows this tracekit cannot read: not written by
    tracekit (no recording instant), written before the table (``version`` 0), or by
    another schema (``tracekit check`` asks the trace processor for the same two facts)."""
    if not recorded:
        raise TraceFileError(
            f"{source} is a Perfetto trace but not one written by tracekit",
            hint="pass a .pftrace from `tracekit record`",
        )
    if version == 0:
        raise TraceFileError(
            f"{source} was written by an older tracekit and has no chain table",
            hint=f"re-export it with `tracekit export {_raw_dir(source)}`",
        )
    if version != SCHEMA_VERSION:
        raise TraceFileError(
            f"{source} has chain table version {version}; this tracekit reads"
            f" version {SCHEMA_VERSION}",
            hint=f"re-export it with `tracekit export {_raw_dir(source)}`",
        )


def phase_of(title: str) -> str | None:
    """The phase a chain's phase slice draws, from its title ("B guest exit to EL2" -> "B");
    None for any other title. Phase slices are annotated with their chain's id only (a
    per-phase annotation would add bytes to every one of them), so their first letter is
    the title convention readers rely on."""
    return title[0] if len(title) > 2 and title[1] == " " and title[0] in PHASES else None


def _by_id(row: ChainRow) -> int:
    return row.id


def _exit_key(row: ExitRow) -> tuple[Any, ...]:
    # Exits have no id: any total order makes the table canonical.
    return (
        row.cpu, row.vcpu, row.exit_code_name, row.exit_code is None, row.exit_code or 0,
        row.vector, row.esr is None, row.esr or 0, row.esr_class, row.handler,
        sorted(row.phase_ns.items()),
    )  # fmt: skip


def _unacked_key(row: UnackedRow) -> tuple[Any, ...]:
    return (row.t, row.vcpu, row.intid, row.cpu is None, row.cpu or 0, row.cls, row.source)


def _canonical(
    meta: RecordingMeta | None,
    version: int,
    chains: Iterable[ChainRow],
    exits: Iterable[ExitRow],
    unacked: Iterable[UnackedRow] = (),
) -> ChainTable:
    """The table in its one order, whoever builds it: a reader sees rows in order of their
    slices' end packets, a reconstruction closes chains and exits in its own order (and
    summary's ties, e.g. the slowest chain, go to the first row)."""
    return ChainTable(
        meta,
        version,
        tuple(sorted(chains, key=_by_id)),
        tuple(sorted(exits, key=_exit_key)),
        tuple(sorted(unacked, key=_unacked_key)),
    )


def table_of(recon: Reconstruction, describe: Describe, meta: RecordingMeta) -> ChainTable:
    """The table a trace of ``recon`` holds, without writing or reading the trace: the
    same rows the exporter writes (it streams the same reconstruction)."""
    exits = (ExitRow.of(x, recon.kvm_mode, describe) for x in recon.exits)
    return _canonical(
        _meta_of(meta_json(meta)),  # through JSON, as a reader of the trace sees it
        SCHEMA_VERSION,
        (ChainRow.of(c) for c in recon.chains),
        (r for r in exits if r is not None),
        (UnackedRow.of(u) for u in recon.unacknowledged),
    )


def _read_rows(
    items: Iterable[Mapping[str, Any]],
    parsers: Mapping[str, tuple[Callable[[Mapping[str, Any]], Any], list[Any]]],
    where: str,
    problems: list[str],
) -> None:
    """Each item marked with a row kind of ``parsers``, parsed into that kind's list; an
    unknown kind or an unreadable row is a problem, never a silent skip."""
    for args in items:
        kind = args.get(ROW_ARG)
        if kind is None:
            continue
        parser = parsers.get(kind)
        try:
            if parser is None:
                problems.append(f"unknown table row kind {kind!r}{where}")
            else:
                parser[1].append(parser[0](args))
        except ValueError as exc:
            problems.append(f"{kind} row unreadable: {exc}")


def read_table(
    instants: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]]
) -> tuple[ChainTable, list[str]]:
    """The table from the annotations of a trace's instants and slices (file order), and
    a problem per annotation that does not fit the schema (skipped, not fatal: a damaged
    trace still summarizes what is readable). Chain and exit rows are on slices,
    unacknowledged queues on instants."""
    problems: list[str] = []
    meta: RecordingMeta | None = None
    version = 0
    instants = list(instants)
    for args in instants:
        if META_ARG not in args:
            continue
        try:
            meta = _meta_of(str(args[META_ARG]))
        except TraceFileError as exc:
            problems.append(exc.message)
            meta = RecordingMeta(keys=())  # a tracekit trace still, its metadata unread
        v = args.get(VERSION_ARG)
        version = v if v.__class__ is int else 0
        break
    chains: list[ChainRow] = []
    exits: list[ExitRow] = []
    unacked: list[UnackedRow] = []
    if version != SCHEMA_VERSION:  # rows of another schema would be misread
        return ChainTable(meta, version), problems
    # Rows by kind, on instants (unacknowledged queues) and on slices (chains, exits).
    _read_rows(instants, {UNACKED_ROW: (UnackedRow.from_args, unacked)}, " on an instant", problems)
    _read_rows(
        slices,
        {CHAIN_ROW: (ChainRow.from_args, chains), EXIT_ROW: (ExitRow.from_args, exits)},
        "",
        problems,
    )
    return _canonical(meta, version, chains, exits, unacked), problems
