"""Streaming phase reconstruction: time-sorted raw events in, closed exits, entries and
finished A–F chains out, keeping only what a later event can still change (pure).

The rules are those of ``docs/phases.md`` (and give exactly the chains the former batch
reconstruction gave, which ``tests/unit/test_incremental.py`` checks against a copy of it).
What makes them streamable:

* exits and entries are built per CPU as before; an exit or entry is *closed* once its
  CPU has opened the next one (or the flush/eret that ends it): nothing changes it after.
* an interrupt instance is anchored on the guest's acknowledgement. Per (INTID, vCPU) only
  the first pending ``vgic_queue_irq_unlock`` since the previous acknowledgement is kept,
  with its source resolved on the spot: the queue's own call stack names the source
  function that called it, and that function's activation (its frame record, recorded
  stop-free) gives A's start, on whatever CPU it ran (docs/phases.md, "Sources"). A later
  pending queue of the same key before the acknowledgement is *merged* into it (counted
  in its chain's ``merged_queues``: the guest acknowledges them once).
* at the acknowledgement every *choice* of the chain is already fixed (its queue, the
  entry whose list registers carry it, the delivering entry, the last real exit before
  that entry), because each one lies before the acknowledgement. Some *values* may still
  move: the end of A (the next ``kvm_vcpu_kick`` of that vCPU on the source CPU, which may
  come later), an SGI sender's trapping exit (a hyp vector hit at or before the queue may
  still become an exit), an exit or entry still open on another CPU. The chain waits
  until those are final, then is emitted.

Memory: the per-CPU probe history back to the last run-loop boundary, the entries and real
exits of each vCPU back to the oldest pending queue of that vCPU, one pending queue per
(INTID, vCPU), and the chains waiting as above. A pending queue that no acknowledgement
claims within ``max_pending_ns`` of timeline is dropped (counted in ``dropped_pending``):
an acknowledgement after that finds no source, its chain has no A phase and counts as
unmatched, exactly as an acknowledgement without any queue. That bound keeps a recording
with a lost acknowledgement from holding every later entry of that vCPU. A dropped queue,
and every queue still pending at ``finish``, is an :class:`Unacked` record (``unacked``).

Input must be sorted by time (the merge writes it so); a step back raises TraceFileError.

Why one module over ~400 lines: :class:`ChainBuilder` is one streaming state machine. The
run loop (exits owned by their vCPU, entries), the sources (A) and the acknowledgements
(chains) read and prune each other's state on every event, and its low water is a
property of all three at once; split into mixins, each part would reach into the
others' fields from another file. The next split, if it grows: the pure pruning and the
source resolution (``_source_of``) as functions over explicit state.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tracekit.errors import TraceFileError
from tracekit.model.chains import (
    LR_PENDING,
    SOURCE_KINDS,
    SOURCE_LABELS,
    Ack,
    Chain,
    Entry,
    Exit,
    Reconstruction,
    Span,
    Unacked,
    classify,
)
from tracekit.model.events import RawEvent
from tracekit.model.vocabulary import FIRST_LPI, FRAME_POINTERS, SOURCE_MARK, Role, Value
from tracekit.probes.spec import ExitDecoder

__all__ = ["DEFAULT_MAX_PENDING_NS", "ChainBuilder", "reconstruct"]

#: One second of L1 timeline: far beyond any interrupt latency a recording shows.
DEFAULT_MAX_PENDING_NS = 1_000_000_000
# The roles and value names read per event, as the plain strings events carry: bound
# once (an enum attribute costs more than the rule using it, model/vocabulary.py).
_QUEUE, _KICK, _VECTOR_SYNC = Role.QUEUE.value, Role.KICK.value, Role.VECTOR_SYNC.value
_SOURCE_SGI = Role.SOURCE_SGI.value
_INTID, _TARGET_VCPU, _VCPU = Value.INTID.value, Value.TARGET_VCPU.value, Value.VCPU.value
_PENDING_LATCH, _LINE_LEVEL = Value.PENDING_LATCH.value, Value.LINE_LEVEL.value
_CONFIG, _HW, _EXIT_CODE, _ESR = (
    Value.CONFIG.value, Value.HW.value, Value.EXIT_CODE.value, Value.ESR.value,
)  # fmt: skip
_LR, _VINTID, _STATE = Value.LR.value, Value.VINTID.value, Value.STATE.value
_FRAME, _SGI1R = Value.FRAME.value, Value.SGI1R.value
#: ``fp<k>`` by k, and the merge's source marks (``src.<probe> = k``).
_FP = {k: v.value for k, v in enumerate(FRAME_POINTERS, 1)}
_SRC, _SRC_LEN = SOURCE_MARK, len(SOURCE_MARK)
#: Roles that bound a CPU's probe history (it is pruned back to one of them).
_BOUNDARY = frozenset(
    r.value for r in (Role.QUEUE, Role.ERET, Role.FLUSH, Role.GUEST_EXIT, Role.HANDLE_EXIT)
)
#: Probe roles that end or make an A phase (``_probe``).
_A_ROLES = frozenset((_QUEUE, _KICK))
#: Prune a per-vCPU or per-CPU list only once it is this long (amortizes the pruning).
_PRUNE_AT = 48


def _pending(ev: RawEvent) -> bool:
    latch = ev.values.get(_PENDING_LATCH, 0)
    level = ev.values.get(_LINE_LEVEL, 0)
    config = ev.values.get(_CONFIG, 0)  # enum vgic_irq_config: 0 EDGE, 1 LEVEL
    return bool(latch) or (config == 1 and bool(level))


@dataclass
class _Queued:
    """A pending ``vgic_queue_irq_unlock`` and what its A phase needs."""

    ev: RawEvent
    vcpu: int
    a_start: int
    source_role: str
    sender_vcpu: int | None
    sgi1r: int | None
    #: The function A starts in and the CPU it ran on ("" / None: source unknown).
    source_function: str = ""
    source_cpu: int | None = None
    a_end: int | None = None
    #: For an SGI: whether the sender's trapping exit is known yet, and its start.
    trap_done: bool = True
    trap_start: int | None = None
    #: Later pending queues of the same (INTID, vCPU) before its acknowledgement.
    merged: int = 0


@dataclass
class _KeyState:
    prev_ack_t: int = -1
    queued: _Queued | None = None


@dataclass
class _Pending:
    """An acknowledged chain whose choices are made but whose values may still move."""

    chain_id: int
    intid: int
    vcpu: int
    ack: Ack
    q: _Queued | None
    entry: Entry | None
    lr: int | None
    delivering: Entry | None
    exit: Exit | None


class ChainBuilder:
    """Feed events in time order; collect closed exits/entries and finished chains."""

    def __init__(
        self,
        decoder: ExitDecoder,
        kvm_mode: str = "vhe",
        *,
        max_pending_ns: int = DEFAULT_MAX_PENDING_NS,
        keep_all: bool = False,
    ) -> None:
        self.decoder = decoder
        self.kvm_mode = kvm_mode
        self.max_pending_ns = max_pending_ns
        #: Outputs since the last ``take()``: closed exits, closed entries, finished chains.
        self.closed_exits: list[Exit] = []
        self.closed_entries: list[Entry] = []
        self.chains: list[Chain] = []
        #: With ``keep_all`` every exit, entry and ack in creation order (batch use).
        self.keep_all = keep_all
        self.all_exits: list[Exit] = []
        self.all_entries: list[Entry] = []
        self.all_acks: list[Ack] = []
        self.unmatched_acks = 0
        self.dropped_pending = 0
        #: Pending queues no acknowledgement claimed (dropped after ``max_pending_ns``,
        #: or open at ``finish``), since the last ``take()``; with ``keep_all``, all.
        self.unacked: list[Unacked] = []
        self.all_unacked: list[Unacked] = []
        self.unacked_count = 0
        #: vCPU running on each CPU (set by an entry's eret).
        self.running: dict[int, int] = {}
        self.now = -1
        self._seq = 0
        self._chain_ids = 0
        self._pending_vector: dict[int, tuple[int, str]] = {}
        # Exits belong to their vCPU, not to a CPU: the vCPU thread is preemptible between
        # its world switch and handle_exit, and a vCPU that blocks in its exit handler
        # (WFI: kvm_handle_wfx -> kvm_vcpu_block, arch/arm64/kvm/handle_exit.c) sleeps
        # and may wake on any CPU, while its old CPU runs other vCPUs (arm.c,
        # kvm_arch_vcpu_ioctl_run). Its D ends at its own next flush, wherever that runs.
        #: Per vCPU, its open exit (not handled yet, or handled and still in its D).
        self._open_by_vcpu: dict[int, Exit] = {}
        #: Per CPU, an open exit whose vCPU is not known (no eret seen on that CPU yet and
        #: no vCPU in handle_exit's values): its CPU's next flush ends it.
        self._open_anon: dict[int, Exit] = {}
        #: Per CPU, the exit it is forming (hyp vector .. handle_exit): guest_exit and
        #: host_resume carry no vCPU, they run in one preemption-disabled stretch.
        self._forming: dict[int, Exit] = {}
        #: Per CPU, the exit it handled last (its ESR-class handler follows on that CPU).
        self._handled_here: dict[int, Exit] = {}
        #: Per CPU, the vCPU of its last flush (``_entering``).
        self._flushed_vcpu: dict[int, int] = {}
        self._open_entry: dict[int, Entry] = {}
        self._hist: dict[int, list[RawEvent]] = {}
        self._keys: dict[tuple[int, int], _KeyState] = {}
        #: Per CPU, its exits as (start, creation seq, exit) in that order (SGI traps).
        self._exits_by_start: dict[int, list[tuple[int, int, Exit]]] = {}
        #: Per vCPU, real exits as (handle_exit_t, creation seq, exit) in that order.
        self._handled: dict[int, list[tuple[int, int, Exit]]] = {}
        self._entries: dict[int, list[Entry]] = {}
        self._a_watch: dict[int, list[_Queued]] = {}
        self._traps: list[_Queued] = []
        self._waiting: list[_Pending] = []
        #: The latest activation of each source function per frame record address, and
        #: each source probe's role (learnt from its events).
        self._activations: dict[tuple[str, int], RawEvent] = {}
        self._source_role: dict[str, str] = {}
        #: Queues whose source the evidence could not decide, by reason.
        self.unknown_sources: dict[str, int] = {}
        self._dirty = False
        #: The run-loop rules per role (``feed``), keyed by the plain strings.
        on_role: dict[str, Callable[[RawEvent], None]] = {
            Role.VECTOR_SYNC: self._vector,
            Role.VECTOR_IRQ: self._vector,
            Role.GUEST_EXIT: self._guest_exit,
            Role.HOST_RESUME: self._host_resume,
            Role.HANDLE_EXIT: self._handle_exit,
            Role.EXIT_HANDLER: self._exit_handler,
            Role.FLUSH: self._flush,
            Role.ENTER: self._enter,
            Role.ERET: self._eret,
            Role.LR_WRITE: self._lr_write,
            Role.ACK: self._ack_event,
            **dict.fromkeys(SOURCE_KINDS, self._source_activation),
        }
        self._on_role = {str(role): rule for role, rule in on_role.items()}

    # -- public ------------------------------------------------------------------------

    def feed(self, ev: RawEvent) -> None:
        t = ev.t
        if t != self.now:
            if t < self.now:
                raise TraceFileError(
                    f"raw events are not in time order ({t} after {self.now})",
                    hint="the exporter needs the merged, time-sorted events.jsonl",
                )
            self.now = t
            if self._traps:
                self._resolve_traps(final=False)
        if ev.source == "probe":
            # Most probe hits only join their CPU's history; the rest goes to ``_probe``.
            hist = self._hist.get(ev.cpu)
            if hist is not None and len(hist) < _PRUNE_AT and ev.role not in _A_ROLES:
                hist.append(ev)
            else:
                self._probe(ev)
        # One dict lookup instead of a chain of role comparisons (this runs per event).
        handler = self._on_role.get(ev.role)
        if handler is not None:
            handler(ev)
        if self._dirty and self._waiting:
            self._finish_ready(final=False)

    def finish(self) -> None:
        """End of stream: close what is open and emit every waiting chain."""
        for q in (q for lst in self._a_watch.values() for q in lst):
            q.a_end = q.ev.t
        self._a_watch.clear()
        self._pending_vector.clear()
        self._resolve_traps(final=True)
        for ex in sorted(self._open_exits(), key=lambda e: (e.cpu, e.vcpu)):
            self.closed_exits.append(ex)
        self._open_by_vcpu.clear()
        self._open_anon.clear()
        self._forming.clear()
        self._handled_here.clear()
        for ent in sorted(self._open_entry.values(), key=lambda e: e.cpu):
            self.closed_entries.append(ent)
        self._open_entry.clear()
        self._finish_ready(final=True)
        left = [st.queued for st in self._keys.values() if st.queued is not None]
        for st in self._keys.values():
            st.queued = None
        for q in sorted(left, key=lambda q: (q.ev.t, q.vcpu, q.ev.values.get(_INTID, -1))):
            self._unacked(q)

    @property
    def chain_count(self) -> int:
        """Chains numbered so far (one per acknowledgement)."""
        return self._chain_ids

    def exits_low_water(self) -> int:
        """No exit closed later starts before this time."""
        lw = self.now
        for vt, _ in self._pending_vector.values():
            lw = min(lw, vt)
        for ex in self._open_exits():
            s = ex.start
            if s is not None:
                lw = min(lw, s)
        return lw

    def low_water(self) -> int:
        """No exit, entry or chain emitted later has a span starting before this time."""
        lw = self.exits_low_water()
        for ent in self._open_entry.values():
            lw = min(lw, ent.flush_t)
        for lst in self._entries.values():
            if lst:
                lw = min(lw, lst[0].flush_t)
        for hl in self._handled.values():
            if hl:
                s = hl[0][2].start
                lw = min(lw, s if s is not None else hl[0][0])
        for es in self._exits_by_start.values():
            if es:
                lw = min(lw, es[0][0])
        for st in self._keys.values():
            q = st.queued
            if q is not None:
                lw = min(lw, q.a_start, q.a_start if q.trap_start is None else q.trap_start)
        for p in self._waiting:
            lw = min(lw, p.ack.t)
            if p.q is not None:
                trap = p.q.trap_start
                lw = min(lw, p.q.a_start, p.q.a_start if trap is None else trap)
            if p.entry is not None:
                lw = min(lw, p.entry.flush_t)
            if p.exit is not None and p.exit.start is not None:
                lw = min(lw, p.exit.start)
        return lw

    # -- per-CPU run loop (exits and entries) ------------------------------------------

    def _open_exits(self) -> list[Exit]:
        return [*self._open_by_vcpu.values(), *self._open_anon.values()]

    def _is_open(self, ex: Exit) -> bool:
        return self._open_by_vcpu.get(ex.vcpu) is ex or self._open_anon.get(ex.cpu) is ex

    def _new_exit(self, ex: Exit) -> None:
        cpu = ex.cpu
        old = self._forming.get(cpu)
        if old is not None and old.vcpu < 0 and self._open_anon.get(cpu) is old:
            del self._open_anon[cpu]  # an exit of an unknown vCPU that never got handled
            self._close_exit(old)
        self._forming[cpu] = ex
        self._own(ex)
        self._seq += 1
        s = ex.start
        if s is not None:
            lst = self._exits_by_start.setdefault(cpu, [])
            item = (s, self._seq, ex)
            if lst and lst[-1][:2] > item[:2]:
                bisect.insort(lst, item, key=lambda i: i[:2])
            else:
                lst.append(item)
            if len(lst) > _PRUNE_AT:
                self._prune_exits_by_start(cpu)
        if self.keep_all:
            self.all_exits.append(ex)

    def _own(self, ex: Exit) -> None:
        """Make ``ex`` its vCPU's open exit; an older one still open missed its flush."""
        if ex.vcpu < 0:
            self._open_anon[ex.cpu] = ex
            return
        prev = self._open_by_vcpu.get(ex.vcpu)
        if prev is not None and prev is not ex:
            self._close_exit(prev)
        self._open_by_vcpu[ex.vcpu] = ex

    def _close_exit(self, ex: Exit) -> None:
        self.closed_exits.append(ex)
        self._dirty = True

    def _close_entry(self, ent: Entry) -> None:
        self.closed_entries.append(ent)
        self._dirty = True

    def _vector(self, ev: RawEvent) -> None:
        self._pending_vector[ev.cpu] = (ev.t, "sync" if ev.role == _VECTOR_SYNC else "irq")

    def _entering(self, cpu: int) -> int:
        """The vCPU whose entry this CPU flushed last: an exit (or an early return of
        __guest_enter, which has no eret) belongs to it. The last eret's vCPU would be
        stale after an early return, and an exit given the wrong vCPU closes that
        vCPU's open exit before its D ends."""
        v = self._flushed_vcpu.get(cpu)
        return v if v is not None else self.running.get(cpu, -1)

    def _guest_exit(self, ev: RawEvent) -> None:
        cpu = ev.cpu
        vec = self._pending_vector.pop(cpu, None)
        ex = Exit(cpu, self._entering(cpu), guest_exit_t=ev.t)
        if vec is not None:
            ex.vector_t, ex.vector = vec
        self._new_exit(ex)

    def _host_resume(self, ev: RawEvent) -> None:
        cpu, t = ev.cpu, ev.t
        ex_open = self._forming.get(cpu)
        if ex_open is None or ex_open.host_resume_t is not None:
            # __guest_enter returned early (interrupt pending): no eret, no exception.
            ex_open = Exit(cpu, self._entering(cpu), host_resume_t=t)
            self._new_exit(ex_open)
        ex_open.host_resume_t = t

    def _handle_exit(self, ev: RawEvent) -> None:
        cpu, t = ev.cpu, ev.t
        values = ev.values
        vcpu = values.get(_VCPU)
        ex = self._forming.get(cpu)
        if ex is not None and vcpu is not None and ex.vcpu not in (-1, vcpu):
            ex = None  # this CPU formed another vCPU's exit; that one is handled elsewhere
        if ex is None and vcpu is not None:
            # The vCPU's thread migrated between its exit and handle_exit (arm.c enables
            # preemption before handle_exit): its exit formed on another CPU goes on here.
            moved = self._open_by_vcpu.get(vcpu)
            if moved is not None and moved.handle_exit_t is None:
                ex = moved
                if self._forming.get(moved.cpu) is moved:
                    del self._forming[moved.cpu]
        if ex is None:
            ex = Exit(cpu, -1 if vcpu is None else vcpu, handle_exit_t=t)
            self._new_exit(ex)
        if self._forming.get(cpu) is ex:
            del self._forming[cpu]
        self._cpu_taken(cpu, ex, t)
        ex.handle_exit_t, ex.handle_cpu = t, cpu
        ex.code = values.get(_EXIT_CODE)
        ex.esr = values.get(_ESR)
        if vcpu is not None and ex.vcpu != vcpu:
            if self._open_anon.get(ex.cpu) is ex:
                del self._open_anon[ex.cpu]
            if self._open_by_vcpu.get(ex.vcpu) is ex:
                del self._open_by_vcpu[ex.vcpu]
            ex.vcpu = vcpu
            self._own(ex)
        self._handled_here[cpu] = ex
        if ex.guest_exit_t is not None:
            # A real exit; an early return of __guest_enter has no guest_exit.
            hl = self._handled.setdefault(ex.vcpu, [])
            self._seq += 1
            hl.append((t, self._seq, ex))
            if len(hl) > _PRUNE_AT:
                self._prune_vcpu(ex.vcpu)

    def _cpu_taken(self, cpu: int, by: Exit | None, t: int) -> None:
        """``cpu`` goes on with ``by`` (None: an entry of another vCPU): the exit it handled
        last, if still in its D, leaves the CPU (the exporter draws the rest of its D on
        the vCPU's track)."""
        last = self._handled_here.get(cpu)
        if last is None or last is by:
            return
        del self._handled_here[cpu]
        if last.d_end is None and last.cpu_taken_t is None and self._is_open(last):
            last.cpu_taken_t = t

    def _exit_handler(self, ev: RawEvent) -> None:
        ex = self._handled_here.get(ev.cpu)
        if ex is not None and not ex.handler_probe:
            ex.handler_probe = ev.name

    def _flush(self, ev: RawEvent) -> None:
        cpu, t = ev.cpu, ev.t
        vcpu = ev.values.get(_VCPU)
        ending: list[Exit] = []
        if vcpu is not None:
            mine = self._open_by_vcpu.get(vcpu)
            if mine is not None:
                del self._open_by_vcpu[vcpu]
                ending.append(mine)
            last = self._handled_here.get(cpu)
            if last is not None and last.vcpu != vcpu:
                self._cpu_taken(cpu, None, t)
        else:
            # No vCPU in the flush's values: the CPU rule (the exit this CPU handled last).
            last = self._handled_here.get(cpu) or self._forming.get(cpu)
            if last is not None and self._open_by_vcpu.get(last.vcpu) is last:
                del self._open_by_vcpu[last.vcpu]
                ending.append(last)
        anon = self._open_anon.pop(cpu, None)
        if anon is not None:
            ending.append(anon)
        for ex in ending:
            ex.d_end, ex.d_cpu = t, cpu
            if self._forming.get(ex.cpu) is ex:
                del self._forming[ex.cpu]
            if self._handled_here.get(cpu) is ex:
                del self._handled_here[cpu]
            self._close_exit(ex)
        if vcpu is not None:
            self._flushed_vcpu[cpu] = vcpu
        else:
            self._flushed_vcpu.pop(cpu, None)
        ent = Entry(cpu, vcpu if vcpu is not None else -1, t)
        old = self._open_entry.get(cpu)
        if old is not None:
            self._close_entry(old)
        self._open_entry[cpu] = ent
        lst = self._entries.setdefault(ent.vcpu, [])
        lst.append(ent)
        if len(lst) > _PRUNE_AT:
            self._prune_vcpu(ent.vcpu)
        if self.keep_all:
            self.all_entries.append(ent)

    def _enter(self, ev: RawEvent) -> None:
        ent_open = self._open_entry.get(ev.cpu)
        if ent_open is not None and ent_open.enter_t is None:
            ent_open.enter_t = ev.t

    def _eret(self, ev: RawEvent) -> None:
        cpu = ev.cpu
        ent_open = self._open_entry.pop(cpu, None)
        if ent_open is not None:
            ent_open.eret_t = ev.t
            self.running[cpu] = ent_open.vcpu
            self._close_entry(ent_open)

    def _lr_write(self, ev: RawEvent) -> None:
        ent_open = self._open_entry.get(ev.cpu)
        if ent_open is not None:
            values = ev.values
            ent_open.lr_writes.append(
                (
                    ev.t,
                    values.get(_LR, -1),
                    values.get(_VINTID, -1),
                    values.get(_STATE, 0),
                    values.get(_HW, 0),
                )
            )

    def _ack_event(self, ev: RawEvent) -> None:
        intid = ev.values.get(_INTID)
        # 1020..1023 are special (spurious), 1024..8191 reserved; LPIs start at 8192.
        if intid is not None and (intid < 1020 or intid >= FIRST_LPI):
            cpu = ev.cpu
            self._ack(Ack(ev.t, cpu, self.running.get(cpu, -1), intid))

    # -- sources (A) ---------------------------------------------------------------------

    def _probe(self, ev: RawEvent) -> None:
        cpu, role = ev.cpu, ev.role
        hist = self._hist.get(cpu)
        if hist is None:
            hist = self._hist[cpu] = []
        if role in _A_ROLES:
            watch = self._a_watch.get(cpu)
            if watch:
                self._watch_forward(watch, ev)
            if role == _QUEUE:
                self._queue(ev, hist)
        hist.append(ev)
        if len(hist) > _PRUNE_AT:
            # Keep from the last boundary strictly before the newest time: a later walk-back
            # (which skips events at its own time) always stops there or later.
            for i in range(len(hist) - 2, -1, -1):
                if hist[i].role in _BOUNDARY and hist[i].t < ev.t:
                    del hist[:i]
                    break

    def _watch_forward(self, watch: list[_Queued], ev: RawEvent) -> None:
        """End of A: the first kick of the target vCPU after the queue, unless another
        queue comes first on that CPU (then A ends at its queue)."""
        if ev.role == _QUEUE:
            for q in watch:
                q.a_end = q.ev.t
            watch.clear()
        else:
            target = ev.values.get(_VCPU)
            keep = []
            for q in watch:
                if q.vcpu == target:
                    q.a_end = ev.t
                else:
                    keep.append(q)
            watch[:] = keep
        self._dirty = True

    def _queue(self, ev: RawEvent, hist: list[RawEvent]) -> None:
        if not _pending(ev):
            return
        intid, vcpu = ev.values.get(_INTID), ev.values.get(_TARGET_VCPU)
        if intid is None or vcpu is None:
            return
        st = self._keys.get((intid, vcpu))
        if st is None:
            st = self._keys[(intid, vcpu)] = _KeyState()
        if st.queued is not None and self.now - st.queued.ev.t > self.max_pending_ns:
            self._drop(st)
        if st.queued is not None:
            # Pending already: the guest will acknowledge both at once (a merged chain).
            st.queued.merged += 1
            return
        if ev.t <= st.prev_ack_t:
            return
        t = ev.t
        source = self._source_of(ev)
        a_start, source_role, sender_vcpu, sgi1r, function, source_cpu = source
        # Events of this CPU at the queue's own time, before it (the A end's walk).
        same: list[RawEvent] = []
        for h in reversed(hist):
            if h.t < t:
                break
            same.append(h)
        q = _Queued(ev, vcpu, a_start, source_role, sender_vcpu, sgi1r, function, source_cpu)
        if same:
            # Events at the queue's own time before it: the forward walk starts after the
            # first of them and reaches this queue (a stop) unless a kick comes first.
            same.reverse()
            q.a_end = t
            for h in same[1:]:
                if h.role == _QUEUE:
                    break
                if h.role == _KICK and h.values.get(_VCPU) == vcpu:
                    q.a_end = h.t
                    break
        else:
            self._a_watch.setdefault(ev.cpu, []).append(q)
        if source_role == _SOURCE_SGI:
            q.trap_done = False
            self._traps.append(q)
        st.queued = q

    def _source_activation(self, ev: RawEvent) -> None:
        self._source_role[ev.name] = ev.role
        frame = ev.values.get(_FRAME)
        if frame is not None:
            self._activations[(ev.name, frame)] = ev

    def _source_of(self, ev: RawEvent) -> tuple[int, str, int | None, int | None, str, int | None]:
        """(A start, source role, SGI sender, SGI1R, function, CPU) of a queue.

        The merge marked each frame of the queue's call stack that lies in a source
        function (``src.<probe> = k``, k frames up). The innermost such frame decides the
        kind: a queue nested in another source (a host timer interrupt inside an ioctl) is
        the inner one's. Its activation is the source event whose frame record address is
        that frame's (``fp<k>``); A starts at the outermost consecutive activation of the
        same kind (kvm_arch_timer_handler around kvm_timer_update_irq). Missing evidence
        (a frame without its activation) leaves the source unknown, never guessed.
        """
        unknown: tuple[int, str, int | None, int | None, str, int | None] = (
            ev.t, "", None, None, "", None,
        )  # fmt: skip
        frames = sorted((k, key[_SRC_LEN:]) for key, k in ev.values.items() if key.startswith(_SRC))
        if not frames:
            self._unknown("no source function on the queue's call stack")
            return unknown
        found: RawEvent | None = None
        kind = ""
        for k, name in frames:
            act = self._activations.get((name, ev.values.get(_FP.get(k, ""), -1)))
            if act is None or act.t > ev.t:
                if found is None:
                    self._unknown(f"no recorded activation of {name} for its frame")
                    return unknown
                break
            act_kind = SOURCE_KINDS.get(act.role, "")
            if found is not None and act_kind != kind:
                break  # an outer source of another kind: this queue was nested in it
            found, kind = act, act_kind
        assert found is not None
        sender = sgi1r = None
        if found.role == _SOURCE_SGI:
            sender, sgi1r = found.values.get(_VCPU), found.values.get(_SGI1R)
        return found.t, found.role, sender, sgi1r, found.name, found.cpu

    def _drop(self, st: _KeyState) -> None:
        """A pending queue no acknowledgement claimed within ``max_pending_ns``."""
        q = st.queued
        assert q is not None
        st.queued = None
        self.dropped_pending += 1
        self._unacked(q)

    def _unacked(self, q: _Queued) -> None:
        intid = q.ev.values.get(_INTID, -1)
        kind = SOURCE_KINDS.get(q.source_role, "")
        u = Unacked(
            q.ev.t,
            q.ev.cpu,
            intid,
            q.vcpu,
            classify(intid, kind),
            kind,
            q.source_function,
            SOURCE_LABELS[kind],
            q.merged,
        )
        self.unacked.append(u)
        self.unacked_count += 1
        if self.keep_all:
            self.all_unacked.append(u)

    def _unknown(self, why: str) -> None:
        self.unknown_sources[why] = self.unknown_sources.get(why, 0) + 1

    def _resolve_traps(self, *, final: bool) -> None:
        """An SGI's A starts at the sender's trapping exit: the exit of its CPU with the
        latest start at or before the queue. Known once time has passed the queue and no
        hyp vector hit at or before it can still become an exit."""
        keep = []
        for q in self._traps:
            qt, cpu = q.ev.t, q.ev.cpu
            vec = self._pending_vector.get(cpu)
            if not final and (self.now <= qt or (vec is not None and vec[0] <= qt)):
                keep.append(q)
                continue
            lst = self._exits_by_start.get(cpu, [])
            i = bisect.bisect_right(lst, qt, key=lambda item: item[0]) - 1
            if i >= 0:
                ex = lst[i][2]
                if ex.d_end is None or ex.d_end >= qt:
                    q.trap_start = ex.start
            q.trap_done = True
            self._dirty = True
        self._traps = keep

    # -- acknowledgements (chains) ------------------------------------------------------

    def _ack(self, ack: Ack) -> None:
        if self.keep_all:
            self.all_acks.append(ack)
        key = (ack.intid, ack.vcpu)
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = _KeyState()
        q = st.queued
        if q is not None and q.ev.t >= ack.t:
            q = None
        st.prev_ack_t = ack.t
        st.queued = None
        if q is None:
            self.unmatched_acks += 1
        intid, vcpu = ack.intid, ack.vcpu
        after = q.ev.t if q is not None else ack.t
        entries = self._entries.get(vcpu, [])
        i = len(entries)
        while i > 0 and entries[i - 1].flush_t >= after:
            i -= 1
        entry = lr = delivering = exit_ = None
        for pos in range(max(0, i - 1), len(entries)):
            ent = entries[pos]
            if ent.flush_t > ack.t:
                break
            hit = next(
                (
                    w
                    for w in ent.lr_writes
                    if w[2] == intid and w[3] & LR_PENDING and after < w[0] < ack.t
                ),
                None,
            )
            if hit is not None:
                entry, lr = ent, hit[1]
                # The entry that really ran the guest (docs/phases.md, rule 3).
                for e in entries[pos:]:
                    if e.flush_t >= ack.t:
                        break
                    if e.enter_t is not None and e.eret_t is not None and e.eret_t < ack.t:
                        delivering = e
                        break
                break
        if entry is not None:
            hl = self._handled.get(vcpu, [])
            j = bisect.bisect_left(hl, entry.flush_t, key=lambda item: item[0]) - 1
            exit_ = hl[j][2] if j >= 0 else None
        self._waiting.append(
            _Pending(self._chain_ids, intid, vcpu, ack, q, entry, lr, delivering, exit_)
        )
        self._chain_ids += 1
        self._dirty = True

    def _ready(self, p: _Pending) -> bool:
        q = p.q
        if q is not None and (q.a_end is None or not q.trap_done):
            return False
        if p.exit is not None and p.exit.d_end is None and self._is_open(p.exit):
            return False
        # Without a delivering entry, E ends at the entry's enter, which may still come.
        return not (
            p.delivering is None
            and p.entry is not None
            and self._open_entry.get(p.entry.cpu) is p.entry
        )

    def _finish_ready(self, *, final: bool) -> None:
        self._dirty = False
        keep = []
        for p in self._waiting:
            if final or self._ready(p):
                self.chains.append(self._chain(p))
            else:
                keep.append(p)
        self._waiting = keep

    def _chain(self, p: _Pending) -> Chain:
        phases: dict[str, Span] = {}
        q = p.q
        source_role = function = ""
        source_cpu = sender_vcpu = sgi1r = hw = None
        if q is not None:
            source_cpu, function = q.source_cpu, q.source_function
            hw = q.ev.values.get(_HW)
            source_role = q.source_role
            sender_vcpu, sgi1r = q.sender_vcpu, q.sgi1r
            a_start = q.trap_start if q.trap_start is not None else q.a_start
            a_end = q.a_end if q.a_end is not None else q.ev.t
            phases["A"] = Span(a_start, a_end)
        entry, delivering = p.entry, p.delivering
        if entry is not None:
            if delivering is not None and delivering.enter_t is not None:
                phases["E"] = Span(entry.flush_t, delivering.enter_t)
                if delivering.eret_t is not None:
                    phases["F"] = Span(delivering.enter_t, delivering.eret_t)
            else:
                end_e = entry.enter_t if entry.enter_t is not None else entry.flush_t
                phases["E"] = Span(entry.flush_t, end_e)
            if p.exit is not None:
                phases.update(p.exit.spans(self.kvm_mode))
        reason = ""
        if p.exit is not None:
            name, ec, _ = self.decoder.describe(p.exit.code, p.exit.esr)
            reason = ec or name
        kind = SOURCE_KINDS.get(source_role, "")
        return Chain(
            p.chain_id,
            classify(p.intid, kind),
            p.intid,
            p.vcpu,
            SOURCE_LABELS[kind],
            source_cpu,
            phases,
            p.ack,
            p.exit,
            entry,
            p.lr,
            hw,
            sender_vcpu,
            sgi1r,
            reason,
            kind,
            function,
            q.merged if q is not None else 0,
        )

    # -- pruning -------------------------------------------------------------------------

    def _floor(self, vcpu: int) -> int:
        """Oldest time a later acknowledgement of ``vcpu`` can search entries from."""
        floor = self.now
        for (_, v), st in self._keys.items():
            q = st.queued
            if v == vcpu and q is not None:
                if self.now - q.ev.t > self.max_pending_ns:
                    self._drop(st)
                else:
                    floor = min(floor, q.ev.t)
        return floor

    def _prune_vcpu(self, vcpu: int) -> None:
        floor = self._floor(vcpu)
        entries = self._entries.get(vcpu, [])
        # Keep the last entry flushed before the floor (the search starts there).
        i = 0
        while i + 1 < len(entries) and entries[i + 1].flush_t < floor:
            i += 1
        del entries[:i]
        first_flush = entries[0].flush_t if entries else floor
        hl = self._handled.get(vcpu, [])
        # Keep the last real exit handled before the oldest entry still searchable.
        j = 0
        while j + 1 < len(hl) and hl[j + 1][0] < first_flush:
            j += 1
        del hl[:j]

    def _prune_exits_by_start(self, cpu: int) -> None:
        lst = self._exits_by_start[cpu]
        floor = min((q.ev.t for q in self._traps if q.ev.cpu == cpu), default=self.now)
        i = 0
        while i + 1 < len(lst) and lst[i + 1][0] <= floor:
            i += 1
        del lst[:i]


def reconstruct(
    events: Iterable[RawEvent],
    decoder: ExitDecoder,
    kvm_mode: str = "vhe",
) -> Reconstruction:
    """Build exits, entries and chains; each chain's class comes from the recording.

    The batch form of :class:`tracekit.model.incremental.ChainBuilder` (which the exporter
    streams through): events are sorted first, and everything is kept. Chains are numbered
    in the order of their acknowledgements.
    """
    builder = ChainBuilder(decoder, kvm_mode, keep_all=True)
    for ev in sorted(events, key=lambda e: e.t):
        builder.feed(ev)
    builder.finish()
    chains = sorted(builder.chains, key=lambda c: c.id)
    return Reconstruction(
        chains,
        builder.all_exits,
        builder.all_entries,
        builder.all_acks,
        kvm_mode,
        builder.unmatched_acks,
        builder.dropped_pending,
        sorted(builder.all_unacked, key=lambda u: (u.t, u.vcpu, u.intid)),
    )
