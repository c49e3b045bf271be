"""``tracekit record``: run a scenario in the nested stack and record the L1 KVM path.

Orchestration only (I/O): QEMU starts paused with QMP and the GDB stub on unix sockets in a
0700 runtime directory; the TCG plugin timestamps every probe PC into QEMU's log; GDB
breakpoints stop the CPU only at ``stop`` probes, whose values are read and appended to
``hits.jsonl`` at once. When the workload prints its ground truth (or on --duration or
Ctrl-C) everything is shut down, and the raw files are merged into ``events.jsonl``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

from tracekit.config import MachineProfile, ToolPaths
from tracekit.errors import DebuggerError, TracekitError, VMError
from tracekit.gdb.mi import MiRecord, MiSession, parse_value_array
from tracekit.guest.assets import GuestAssets
from tracekit.guest.runner import (
    DONE,
    L1_ERROR,
    READY,
    ScenarioRequest,
    check_ready,
    parse_ready,
    scenario_kernel_args,
)
from tracekit.kernel.btf import load_btf_from_file
from tracekit.kernel.kallsyms import SymbolTable
from tracekit.model.events import RawEvent
from tracekit.model.ground_truth import GROUND_TRUTH_PREFIX, GroundTruth, parse_ground_truth_line
from tracekit.probes.resolve import ResolvedProbe, ResolvedProbeSet, resolve_probes
from tracekit.probes.select import choose_probe_set
from tracekit.probes.spec import ProbeSet, load_probe_set
from tracekit.record.merge import MergeStats
from tracekit.record.pipeline import remerge
from tracekit.vm.argv import LaunchSpec, build_argv
from tracekit.vm.plugin import ensure_plugin, qemu_plugin_api
from tracekit.vm.qemu import QemuProcess
from tracekit.vm.qmp import Monitor
from tracekit.vm.runtime import RuntimeDir

__all__ = ["LiveStats", "RecordOptions", "RecordResult", "Recorder", "raw_dir_for"]

log = logging.getLogger(__name__)

#: QEMU GICv3 trace events recorded as the hardware-side view (hw/intc/trace-events).
GIC_TRACE_EVENTS = (
    "gicv3_ich_lr_write",
    "gicv3_icv_iar_read",
    "gicv3_icv_eoir_write",
    "gicv3_icc_generate_sgi",
)
#: QEMU's own record of each debugger stop, in host time (-trace + -msg timestamp=on):
#: how long the VM stays stopped per breakpoint (docs/performance.md).
GDBSTUB_TRACE_EVENTS = ("gdbstub_hit_break", "gdbstub_op_continue_cpu")


def raw_dir_for(output: Path) -> Path:
    """``trace.pftrace`` keeps its raw files in ``trace.raw/``."""
    return output.with_suffix(".raw")


@dataclass(frozen=True)
class RecordOptions:
    request: ScenarioRequest
    profile: MachineProfile
    output: Path
    duration_s: float | None = None
    #: A probe-set name or .toml path; None: the one written for the kernel's family.
    probe_set: str | None = None
    #: Seconds without any progress (hits or console output) before it counts as a hang.
    stall_timeout_s: float = 60.0
    #: Extra L1 kernel command-line arguments (fault injection in tests).
    extra_kernel_args: tuple[str, ...] = ()
    #: Also stop where values are inferred, read them, and check the inference.
    read_values: bool = False
    #: The workload's source names -> source kinds, kept in the metadata so the summary
    #: can check each chain's recorded source against the workload (never to set it).
    workload_sources: Mapping[str, str] = field(default_factory=dict)


@dataclass
class LiveStats:
    """What the live progress display shows; updated by the recorder."""

    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)
    stops: int = 0
    discarded: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    phases_seen: set[str] = field(default_factory=set)
    console_tail: list[str] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass
class RecordResult:
    output: Path
    raw_dir: Path
    events: list[RawEvent]
    ground_truth: GroundTruth | None
    meta: dict[str, Any]
    merge_stats: MergeStats
    ended_by: str
    incomplete_reason: str | None = None


def _offset_resolver(assets: GuestAssets) -> Callable[[str], int]:
    layout = json.loads(Path(assets.layout).read_text())
    btf_cache: list[Any] = []

    def offset_of(member: str) -> int:
        if member in layout:
            return int(layout[member]["offset"])
        if not btf_cache:
            btf_cache.append(load_btf_from_file(assets.image_path))
        return int(btf_cache[0].member_offset(member))

    return offset_of


def resolve_for(
    assets: GuestAssets, pset: ProbeSet, kvm_mode: str = "vhe", *, read_values: bool = False
) -> tuple[ResolvedProbeSet, SymbolTable]:
    symbols = SymbolTable.from_json(Path(assets.symbols).read_text())
    image = assets.image_path.read_bytes()
    resolved = resolve_probes(
        pset,
        symbols,
        image,
        _offset_resolver(assets),
        kvm_mode,
        read_values=read_values,
    )
    return resolved, symbols


def _probe_lines(assets: GuestAssets, probes: ResolvedProbeSet) -> dict[str, str]:
    from tracekit.guest.debuginfo import load_lines

    lines = load_lines(assets.image_path.parent)
    return {p.location: lines[p.location] for p in probes.probes if p.location in lines}


def _probe_meta(probes: ResolvedProbeSet) -> list[dict[str, Any]]:
    return [
        {
            "name": p.name,
            "address": p.stamp_address,
            "break_address": p.runtime_address,
            "skip_entry": p.skip_entry,
            "hyp": p.spec.hyp,
            "location": p.location,
            "phase": p.spec.phase,
            "role": p.spec.role,
            "mode": "stop" if p.stops else "timing",
            "infer": dict(p.spec.infer),
            "implies": dict(p.spec.implies),
            "pointers": [list(site) for site in p.pointer_sites],
            "code": [p.runtime_address, p.code_end] if p.code_end else None,
        }
        for p in probes.probes
    ]


def plugin_probe_file(probes: ResolvedProbeSet) -> str:
    """The timebase plugin's input: probe PCs, and ``m PC`` for pointer sites."""
    lines = [f"{p.stamp_address:x}\n" for p in probes.probes]
    lines += [f"m {pc:x}\n" for p in probes.probes for _, pc, _ in p.pointer_sites]
    return "".join(lines)


def _world(el: int, hcr: int | None, kvm_mode: str) -> str:
    """Which world a hit ran in: L1 host, L1 hyp (nVHE EL2), or the L2 guest.

    VHE: the host kernel runs at EL2 (E2H); L2 runs at EL1/EL0. nVHE: the host kernel runs
    at EL1 with stage 2 off (HCR_EL2.VM = 0), L2 at EL1/EL0 with HCR_EL2.VM = 1, and KVM's
    hyp code at EL2. Guest and host can share virtual addresses, so the PC alone is not
    enough.
    """
    if kvm_mode == "vhe":
        return "l1-host" if el == 2 else "l2-guest" if el in (0, 1) else "unknown"
    if el == 2:
        return "l1-hyp"
    if el in (0, 1) and hcr is not None:
        return "l2-guest" if hcr & 1 else "l1-host"
    return "unknown"


class Recorder:
    def __init__(
        self,
        options: RecordOptions,
        assets: GuestAssets,
        tools: ToolPaths,
        on_update: Callable[[LiveStats], None] = lambda _s: None,
    ) -> None:
        self.opts = options
        self.assets = assets
        self.tools = tools
        self.on_update = on_update
        self.stats = LiveStats()
        self.raw_dir = raw_dir_for(options.output)
        self._hits_file: TextIO | None = None
        self._seq = 0
        self._inflight: dict[int, tuple[dict[str, Any], list[str]]] = {}
        self._probes_by_bkpt: dict[str, ResolvedProbe] = {}
        self._thread_cpu: dict[str, int] = {}
        self._qemu_pid: int | None = None
        self._meta: dict[str, Any] = {}
        self._stop_requested = False
        self._cleaning = False
        self._hurry = False
        self._hyp_pending = False
        self._phase_of: dict[str, str] = {}
        self.host_el = 2 if options.profile.kvm_mode == "vhe" else 1

    # -- set-up ------------------------------------------------------------------------

    def _prepare(self) -> tuple[ResolvedProbeSet, Path]:
        self.stats.phase = "resolving probes"
        self.on_update(self.stats)
        # Every recording checks the kernel against the probe set: never record with
        # probes written for another kernel (probes/select.py).
        self._probe_set_name = choose_probe_set(
            self.assets.kernel_release, self.assets.kernel_family, self.opts.probe_set
        )
        self._probe_set = load_probe_set(self._probe_set_name)
        probes, self._symbols = resolve_for(
            self.assets,
            self._probe_set,
            self.opts.profile.kvm_mode,
            read_values=self.opts.read_values,
        )
        for name, why in probes.skipped:
            log.warning("probe %s skipped: %s", name, why)
        for name, used in probes.fallbacks_used:
            log.warning("probe %s uses fallback symbol %s", name, used)
        plugin = ensure_plugin(self.tools, qemu_plugin_api(self.tools.qemu))
        try:
            self.raw_dir.mkdir(parents=True, exist_ok=True)
            self.opts.output.parent.mkdir(parents=True, exist_ok=True)
            for stale in ("hits.jsonl", "qemu.log", "events.jsonl", "console.log"):
                (self.raw_dir / stale).unlink(missing_ok=True)
            (self.raw_dir / "probes.txt").write_text(plugin_probe_file(probes))
        except OSError as exc:
            raise TracekitError(
                f"cannot write the recording to {self.raw_dir}: {exc.strerror}",
                hint="choose a writable --output",
            ) from None
        return probes, plugin

    def _gdb_setup(self, mi: MiSession, runtime: RuntimeDir, probes: ResolvedProbeSet) -> None:
        for cmd in (
            "-gdb-set architecture aarch64",
            "-gdb-set pagination off",
            "-gdb-set confirm off",
            # Values come back as one array ({a, b, c}): never "<repeats N times>".
            "-gdb-set print repeats unlimited",
            # Cache target memory in 64-byte lines while the VM is stopped: the fields
            # a probe reads share a line or two, and GDB's own look at the code around
            # the PC (after the stop and after the PC write) comes from the cache. GDB
            # drops its data cache whenever the target resumes, so nothing is stale.
            # Halves the remote-protocol round trips per stop (docs/performance.md).
            "-gdb-set mem inaccessible-by-default off",
            '-interpreter-exec console "mem 0xffff000000000000 0xfffffffffffff000 cache"',
            "-gdb-set breakpoint pending off",
            # Keep breakpoints in QEMU across stops: each insert/remove flushes its
            # translation cache (and resuming past skip_entry probes needs no removal).
            "-gdb-set breakpoint always-inserted on",
        ):
            mi.command(cmd)
        mi.command(f"-target-select remote {runtime.gdb_socket}", timeout=30)
        for p in probes.stop_probes():
            rec = mi.command(f"-break-insert *{p.address:#x}")
            bkpt = rec.payload.get("bkpt", {}) if isinstance(rec.payload, dict) else {}
            self._probes_by_bkpt[str(bkpt.get("number"))] = p
        info = mi.command("-thread-info")
        threads = info.payload.get("threads", []) if isinstance(info.payload, dict) else []
        for t in threads:
            target = str(t.get("target-id", ""))
            cpu = (
                int(target.split("CPU#")[1].split(maxsplit=1)[0])
                if "CPU#" in target
                else (int(str(t.get("id", "1"))) - 1)
            )
            self._thread_cpu[str(t.get("id"))] = cpu

    # -- the hot loop ------------------------------------------------------------------

    def _on_stop(self, mi: MiSession, payload: dict[str, Any]) -> None:
        reason = payload.get("reason")
        if reason != "breakpoint-hit":
            log.debug("GDB stop (%s); continuing", reason)
            mi.send(["-exec-continue"])
            return
        probe = self._probes_by_bkpt.get(str(payload.get("bkptno")))
        thread = str(payload.get("thread-id"))
        cpu = self._thread_cpu.get(thread, int(thread) - 1 if thread.isdigit() else -1)
        frame = payload.get("frame", {})
        pc = int(str(frame.get("addr", "0")), 16)
        if probe is None:
            mi.send(["-exec-continue"])
            return
        self.stats.stops += 1
        if self._hyp_pending:
            self._install_hyp_probes(mi)
        # VHE: the exception level alone tells host from guest (see _world).
        world = [("cpsr", "$cpsr")]
        if self.opts.profile.kvm_mode != "vhe":
            world.append(("hcr", "$HCR_EL2"))
        exprs = [*world, *probe.gdb_captures]
        hit: dict[str, Any] = {
            "seq": self._seq,
            "probe": probe.name,
            "cpu": cpu,
            "pc": pc,
            "values": {},
            "errors": {},
        }
        self._seq += 1
        # One MI command for all values (an array literal): every command is a GDB/MI
        # round trip while the whole VM is stopped.
        array = ", ".join(f"(unsigned long)({e})" for _, e in exprs)
        cmds = [f'-data-evaluate-expression "{{{array}}}"']
        if probe.skip_entry:
            # Resume after the patchable-entry instruction (see probes/resolve.py).
            cmds.append(f"-gdb-set var $pc = {probe.address + 4:#x}")
        tokens = mi.send([*cmds, "-exec-continue"])
        self._inflight[tokens[0]] = (hit, [name for name, _ in exprs])

    def _on_result(self, rec: MiRecord) -> None:
        assert rec.token is not None
        hit, names = self._inflight.pop(rec.token)
        payload = rec.payload if isinstance(rec.payload, dict) else {}
        values = parse_value_array(str(payload.get("value", "")), len(names))
        if rec.message == "done" and values is not None:
            hit["values"].update(zip(names, values, strict=True))
        else:
            why = str(payload.get("msg") or payload.get("value") or "no value")
            hit["values"].update(dict.fromkeys(names))
            hit["errors"].update(dict.fromkeys(names, why))
        self._finish_hit(hit)

    def _finish_hit(self, hit: dict[str, Any]) -> None:
        cpsr = hit["values"].pop("cpsr", None)
        hcr = hit["values"].pop("hcr", None)
        el = (cpsr >> 2) & 3 if isinstance(cpsr, int) else -1
        hit["el"] = el
        hit["world"] = _world(el, hcr, self.opts.profile.kvm_mode)
        hit["host"] = hit["world"] == "l1-host"
        if not hit["errors"]:
            del hit["errors"]
        if hit["host"]:
            self.stats.hits[hit["probe"]] += 1
            phase = self._phase_of.get(hit["probe"])
            if phase:
                self.stats.phases_seen.add(phase)
        else:
            self.stats.discarded += 1
        assert self._hits_file is not None
        self._hits_file.write(json.dumps(hit, separators=(",", ":")) + "\n")
        self._hits_file.flush()

    def _on_sigint(self, signum: int, frame: object) -> None:
        """First Ctrl-C: finish cleanly (shut down, keep what was recorded); second: now."""
        if self._cleaning:
            self._hurry = True  # already shutting down: skip the graceful waits
            return
        if self._stop_requested:
            self._hurry = True
            raise KeyboardInterrupt
        self._stop_requested = True
        self.stats.phase = "Ctrl-C: stopping (press again to stop at once)"

    def run(self) -> RecordResult:
        import signal
        import threading

        self._stop_requested = False
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            return self._run()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _run(self) -> RecordResult:
        probes, plugin = self._prepare()
        self._probes = probes
        self._phase_of = {p.name: p.spec.phase for p in probes.probes}
        self._hyp_pending = self._needs_hyp(probes)
        req = self.opts.request
        runtime = RuntimeDir.create()
        spec = LaunchSpec(
            qemu=self.tools.qemu,
            kernel=self.assets.image_path,
            initrd=self.assets.initramfs_path,
            kernel_args=(*scenario_kernel_args(req), *self.opts.extra_kernel_args),
            paused=True,
            qmp=True,
            gdb=True,
            # Exception records: the guest's syndrome at each exit without a stop.
            log_items=("int",),
            trace_events=GDBSTUB_TRACE_EVENTS,
            plugin=plugin,
            plugin_args=(f"probes={self.raw_dir / 'probes.txt'}",),
            log_file=self.raw_dir / "qemu.log",
        )
        argv = build_argv(self.opts.profile, spec, runtime)
        meta: dict[str, Any] = {
            "scenario": req.scenario.name,
            "count": req.count,
            "vcpus": req.vcpus,
            "machine": self.opts.profile.name,
            "kvm_mode": self.opts.profile.kvm_mode,
            "kernel_release": self.assets.kernel_release,
            "kernel_version": self.assets.kernel_version,
            "qemu_argv": argv,
            "timebase": "instructions (icount shift=0): 1 insn = 1 ns",
            "icount": self.opts.profile.icount,
            "probes": _probe_meta(probes),
            "probes_skipped": [list(x) for x in probes.skipped],
            "host_el": self.host_el,
            "probe_set": self._probe_set_name,
            "kernel_family": self.assets.kernel_family,
            "read_values": self.opts.read_values,
            "workload_sources": dict(self.opts.workload_sources),
            # function+offset of every probe, for `tracekit explain`
            "probe_locations": {p.name: p.location for p in probes.probes},
            # file:line of those locations when `guest build --debug-info` cached them
            "probe_lines": _probe_lines(self.assets, probes),
            # The exit code of __guest_enter's early return (model/context.py).
            "irq_exit_code": self._probe_set.decoder.code("IRQ"),
        }
        truth: GroundTruth | None = None
        ended_by = "unknown"
        incomplete: str | None = None
        self._hits_file = (self.raw_dir / "hits.jsonl").open("a")
        qemu = QemuProcess(argv, runtime)
        monitor: Monitor | None = None
        mi: MiSession | None = None
        try:
            qemu.start()
            self._qemu_pid = qemu.pid
            monitor = Monitor(runtime.qmp_socket)
            try:
                monitor.connect(alive=lambda: qemu.poll() is None)
            except VMError as exc:
                raise qemu.exited_during_startup(exc) from None
            meta["qemu_version"] = monitor.version
            for event in GIC_TRACE_EVENTS:
                monitor.execute("trace-event-set-state", {"name": event, "enable": True})
            meta["cpus"] = monitor.execute("query-cpus-fast")
            self.stats.phase = "attaching GDB"
            self.on_update(self.stats)
            mi = MiSession(self.tools.gdb, transcript=self.raw_dir / "gdb-mi.log")
            try:
                self._gdb_setup(mi, runtime, probes)
            except DebuggerError as exc:
                if qemu.poll() is None:
                    raise
                raise qemu.exited_during_startup(VMError(exc.message)) from None
            meta["mi_roundtrip_ms"] = self._mi_roundtrip(mi)
            meta["ready_s"] = round(self.stats.elapsed, 3)
            self._meta = meta
            mi.send(["-exec-continue"])
            self.stats.phase = "booting L1"
            truth, ended_by = self._loop(qemu, mi, monitor)
        except KeyboardInterrupt:
            ended_by = "interrupted"
            incomplete = "interrupted by the user (Ctrl-C)"
        except TracekitError as exc:
            ended_by = "error"
            incomplete = str(exc)
        finally:
            # From here a Ctrl-C only hurries the shutdown: cleanup must always finish.
            self._cleaning = True
            if self._hurry:
                qemu.stop(grace_s=0.2)
            if monitor is not None and not self._hurry:
                monitor.quit()
            if mi is not None:
                mi.close()
            qemu.stop(grace_s=0.2 if self._hurry else 5.0)
            if monitor is not None:
                meta["qmp_events"] = dict(Counter(str(e.get("event")) for e in monitor.events()))
                monitor.close()
            self._hits_file.close()
            try:
                src = runtime.console_log
                if src.exists():
                    (self.raw_dir / "console.log").write_bytes(src.read_bytes())
            except OSError:
                pass
            runtime.remove()
        if ended_by == "interrupted" and incomplete is None:
            incomplete = "interrupted by the user (Ctrl-C)"
        if truth is None and incomplete is None:
            incomplete = f"recording ended ({ended_by}) before the workload's ground truth"
        meta["ended_by"] = ended_by
        meta["incomplete_reason"] = incomplete
        meta["ground_truth"] = truth.to_json() if truth else None
        meta["wall_s"] = round(self.stats.elapsed, 3)
        meta["stops"] = self.stats.stops
        meta["discarded_non_host"] = self.stats.discarded
        meta["probes"] = _probe_meta(self._probes)
        events, mstats = remerge(self.raw_dir, meta)
        meta["merge"] = {
            "events": mstats.events,
            "gdb_hits": mstats.gdb_hits,
            "hits_without_timing": mstats.hits_without_timing,
            "stop_timings_without_hit": mstats.stop_timings_without_hit,
            "unknown_pcs": mstats.unknown_pcs,
            "exceptions_paired": mstats.exceptions_paired,
            "exceptions_unpaired": mstats.exceptions_unpaired,
            "pointers_attached": mstats.pointers_attached,
            "pointers_orphaned": mstats.pointers_orphaned,
            "pointers_agreed": mstats.pointers_agreed,
            "pointers_disagreed": mstats.pointers_disagreed,
            "inference": mstats.inference,
            "disagreements": mstats.disagreements,
            "gic_events": mstats.log.gic_events,
            "debug_stops": mstats.log.debug_stops,
            "debug_paused_s": round(mstats.log.debug_paused_s, 4),
            "untimed_gic": mstats.log.untimed_gic,
            "end_t": mstats.log.end_t,
            "unattributed_vcpu": mstats.log.unattributed_vcpu,
            "per_probe": mstats.per_probe,
        }
        if mstats.log.unattributed_vcpu and incomplete is None:
            # Those lines may carry another vCPU's number: chains built on them could be
            # silently wrong, so the recording does not count as complete.
            incomplete = (
                f"{mstats.log.unattributed_vcpu} plugin stamps could not name the running vCPU"
                " (this QEMU does not export current_cpu; see docs/timebase.md)"
            )
            meta["incomplete_reason"] = incomplete
        (self.raw_dir / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        return RecordResult(
            self.opts.output, self.raw_dir, events, truth, meta, mstats, ended_by, incomplete
        )

    @staticmethod
    def _needs_hyp(probes: ResolvedProbeSet) -> bool:
        return any(p.spec.hyp for p in probes.probes)

    def _install_hyp_probes(self, mi: MiSession) -> None:
        """Translate nVHE hyp probes to EL2 VAs and have the plugin stamp them.

        Called at the first breakpoint stop in the host, which comes after the VMM created
        its VM (KVM installs its hyp vectors on every CPU then: kvm_arch_hardware_enable ->
        cpu_hyp_reinit; before, VBAR_EL2 holds the hyp stub) and before any vCPU ran.
        While the host runs, VBAR_EL2 holds the EL2 address of
        ``__kvm_nvhe___kvm_hyp_host_vector``; every ``__kvm_nvhe_*`` symbol moves by the
        same delta (the hyp VA is the linear-map alias with a random tag chosen at every
        boot, even with nokaslr: va_layout.c). The probe file is rewritten and QEMU's
        translation cache flushed (a breakpoint insert does), which makes the plugin
        re-read it before any hyp code is translated again.
        """
        vbar = int(
            mi.command('-data-evaluate-expression "(unsigned long)$VBAR_EL2"').payload["value"]
        )
        host_vector = self._probe_set.hyp_host_vector  # kernel knowledge: the probe set's
        vector = self._symbols.address(host_vector)
        delta = vbar - vector
        if vbar == 0 or (vbar & 0xFFF) != (vector & 0xFFF):
            raise VMError(
                f"VBAR_EL2 {vbar:#x} is not the nVHE host vector ({host_vector} at {vector:#x})",
                hint="is L1 really in nVHE mode? (kvm-arm.mode=nvhe)",
            )
        self._meta["hyp_va_delta"] = delta
        self._meta["vbar_el2"] = vbar
        self._probes = ResolvedProbeSet(
            tuple(
                dataclasses.replace(p, hyp_delta=delta) if p.spec.hyp else p
                for p in self._probes.probes
            ),
            self._probes.skipped,
            self._probes.fallbacks_used,
        )
        (self.raw_dir / "probes.txt").write_text(plugin_probe_file(self._probes))
        flush_at = next(p.runtime_address for p in self._probes.probes if p.spec.hyp)
        rec = mi.command(f"-break-insert *{flush_at:#x}")
        number = (
            rec.payload.get("bkpt", {}).get("number") if isinstance(rec.payload, dict) else None
        )
        mi.command(f"-break-delete {number}")
        self._hyp_pending = False

    def _mi_roundtrip(self, mi: MiSession, n: int = 30) -> float:
        """A bare GDB/MI round trip to the stopped target: the floor of one stop (ms)."""
        start = time.monotonic()
        for _ in range(n):
            mi.command('-data-evaluate-expression "(unsigned long)$pc"')
        return round((time.monotonic() - start) * 1000 / n, 3)

    def _diagnose_stall(self, monitor: Monitor) -> None:
        """Save where every CPU is (QMP status, HMP registers) for the error report."""
        lines: list[str] = []
        try:
            lines.append(f"status: {monitor.execute('query-status')}")
            regs = monitor.execute("human-monitor-command", {"command-line": "info registers -a"})
            lines.append(str(regs))
        except TracekitError as exc:
            lines.append(f"diagnostics failed: {exc}")
            if self._qemu_pid is not None:
                # QEMU itself is stuck: record where its threads are, for a bug report.
                import subprocess

                bt = subprocess.run(
                    [
                        self.tools.gdb,
                        "-p",
                        str(self._qemu_pid),
                        "--batch",
                        "-nx",
                        "-ex",
                        "thread apply all bt 25",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                lines.append(bt.stdout[-20000:])
        (self.raw_dir / "stall.txt").write_text("\n".join(lines) + "\n")

    def _handle_record(self, mi: MiSession, rec: MiRecord) -> str | None:
        """Handle one MI record; return GDB's message if it lost the target."""
        if rec.type == "notify" and rec.message == "stopped":
            self._on_stop(mi, rec.payload if isinstance(rec.payload, dict) else {})
        elif rec.type == "result" and rec.token in self._inflight:
            self._on_result(rec)
        elif rec.type == "result" and rec.message == "error":
            msg = str(rec.payload.get("msg", "")) if isinstance(rec.payload, dict) else ""
            if "closed" in msg or "not being run" in msg or "No registers" in msg:
                return msg
            log.debug("GDB error: %s", msg)
        return None

    def _raise_qemu_exited(self, qemu: QemuProcess, gdb_lost: str | None = None) -> NoReturn:
        """The run ended before the ground truth: name the cause from QEMU's last output.

        A panicking L1 (panic=-1, -no-reboot) makes QEMU exit; GDB may notice first, and
        the panic message may still sit in the console reader, so read it to the end
        (or, if QEMU is still shutting down, what has arrived) before blaming GDB.
        """
        exited = qemu.poll() is not None
        fresh = qemu.final_lines() if exited else qemu.drain_lines()
        self.stats.console_tail = [*self.stats.console_tail, *fresh][-8:]
        for line in [*fresh, *qemu.console_tail]:
            if "Kernel panic" in line:
                raise VMError(f"the L1 kernel panicked: {line.strip()[:120]}")
        if not exited and gdb_lost is not None:
            raise DebuggerError(f"GDB lost the target: {gdb_lost}")
        tail = qemu.stderr_tail()
        raise VMError(
            f"QEMU exited (code {qemu.poll()}) before the ground truth"
            + (f": {tail}" if tail else "")
        )

    def _loop(
        self, qemu: QemuProcess, mi: MiSession, monitor: Monitor
    ) -> tuple[GroundTruth | None, str]:
        truth: GroundTruth | None = None
        profile = self.opts.profile
        boot_deadline = time.monotonic() + profile.boot_timeout_s
        run_deadline: float | None = None
        done_deadline: float | None = None
        last_progress = time.monotonic()
        last_update = 0.0
        while True:
            batch_start = time.monotonic()
            try:
                for rec in mi.records(timeout=0.05):
                    last_progress = time.monotonic()
                    lost = self._handle_record(mi, rec)
                    if lost is not None:
                        if truth is not None:
                            return truth, "ground-truth"
                        # GDB notices a dead QEMU first; name the real cause when it is that.
                        with contextlib.suppress(VMError):
                            qemu.wait(5.0)
                        self._raise_qemu_exited(qemu, gdb_lost=lost)
                    # A busy guest keeps GDB talking without pause: hand control back to
                    # the rest of the loop (console, Ctrl-C, deadlines) at least every 100 ms.
                    if last_progress - batch_start > 0.1:
                        break
            except DebuggerError:
                # GDB can also simply exit when QEMU dies under it (its remote end closed):
                # when QEMU is gone too, QEMU's exit is the cause to name, not GDB's.
                if truth is not None:
                    return truth, "ground-truth"
                with contextlib.suppress(VMError):
                    qemu.wait(5.0)
                if qemu.poll() is not None:
                    self._raise_qemu_exited(qemu)
                raise
            for line in qemu.drain_lines():
                last_progress = time.monotonic()
                self.stats.console_tail = ([*self.stats.console_tail, line])[-8:]
                if line.startswith(READY):
                    self._meta["l1_ready_s"] = round(self.stats.elapsed, 3)
                    check_ready(parse_ready(line), profile)
                    self.stats.phase = f"running {self.opts.request.scenario.name} in L2"
                    run_deadline = time.monotonic() + (
                        self.opts.duration_s or self.opts.request.scenario.timeout_s * 10
                    )
                elif line.startswith(L1_ERROR):
                    raise VMError("L1: " + line[len(L1_ERROR) :])
                elif line.startswith(GROUND_TRUTH_PREFIX):
                    truth = parse_ground_truth_line(line)
                    self._meta["ground_truth_s"] = round(self.stats.elapsed, 3)
                    self._meta["stops_at_ground_truth"] = self.stats.stops
                    self.stats.phase = "ground truth received; finishing"
                    done_deadline = time.monotonic() + 60
                elif line.startswith(DONE) and truth is not None:
                    return truth, "ground-truth"
                elif "Kernel panic" in line:
                    raise VMError(f"the L1 kernel panicked: {line.strip()[:120]}")
            now = time.monotonic()
            if self._stop_requested:
                return truth, "interrupted"
            if qemu.poll() is not None:
                if truth is not None:
                    return truth, "ground-truth"
                self._raise_qemu_exited(qemu)
            if run_deadline is None and now > boot_deadline:
                raise VMError(f"L1 did not boot within {profile.boot_timeout_s} s")
            if run_deadline is not None and truth is None and now > run_deadline:
                return None, "duration" if self.opts.duration_s else "timeout"
            if done_deadline is not None and now > done_deadline:
                return truth, "ground-truth"
            # Boot is quiet (the kernel runs with `quiet`) and bounded by boot_timeout_s;
            # the stall watchdog covers the scenario.
            if run_deadline is not None and now - last_progress > self.opts.stall_timeout_s:
                self._diagnose_stall(monitor)
                raise VMError(
                    f"no progress for {self.opts.stall_timeout_s:.0f} s (guest hang?)",
                    hint=f"CPU state saved in {self.raw_dir}/stall.txt",
                )
            if now - last_update > 0.25:
                last_update = now
                self.on_update(self.stats)


def result_summary(result: RecordResult) -> dict[str, Any]:
    return {
        "output": str(result.output),
        "raw_dir": str(result.raw_dir),
        "ended_by": result.ended_by,
        "incomplete": result.incomplete_reason,
        "merge": asdict(result.merge_stats),
    }
