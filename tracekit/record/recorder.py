"""``tracekit record``: run a scenario in the nested stack and record the L1 KVM path.

Orchestration only: the steps are modules of their own, in order

    resolve.py  probes -> addresses, the plugin, a clean raw directory
    launch.py   QEMU paused with QMP + GDB stub + plugin; QMP attached
    arm.py      GDB attached, breakpoints at ``stop`` probes
    run.py      the loop until the ground truth (stops.py, hyp.py, console.py, faults.py)
    collect.py  everything shut down, the console kept
    finish.py   raw files -> events.jsonl and meta.json (metadata.py)

and they talk to QEMU, QMP, GDB and the plugin only through the Protocols of peers.py:
adapters.py implements them for real, tests/fakepeer without QEMU.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from tracekit.config import ToolPaths
from tracekit.errors import DebuggerError, TracekitError, VMError
from tracekit.guest.assets import GuestAssets
from tracekit.model.ground_truth import GroundTruth
from tracekit.record.adapters import RealPeers
from tracekit.record.arm import arm, roundtrip_ms
from tracekit.record.collect import keep_console, teardown
from tracekit.record.finish import incomplete_reason, merge_recording
from tracekit.record.hyp import HypProbes
from tracekit.record.launch import attach_monitor, qemu_argv
from tracekit.record.metadata import RunFacts, final_meta, initial_meta
from tracekit.record.options import LiveStats, RecordOptions, RecordResult, raw_dir_for
from tracekit.record.peers import Debugger, Monitor, PeerFactory
from tracekit.record.resolve import Resolution, prepare_raw_dir, resolve
from tracekit.record.run import RunLoop
from tracekit.record.stops import StopHandler
from tracekit.record.world import host_el
from tracekit.vm.runtime import RuntimeDir

__all__ = ["Recorder"]


class Recorder:
    """One recording. ``peers`` and ``resolver`` replace the real QEMU/GDB peers and the
    probe resolution (the fakepeer tests); by default both are the real ones."""

    def __init__(
        self,
        options: RecordOptions,
        assets: GuestAssets,
        tools: ToolPaths,
        on_update: Callable[[LiveStats], None] = lambda _s: None,
        *,
        peers: PeerFactory | None = None,
        resolver: Callable[[], Resolution] | None = None,
    ) -> None:
        self.opts = options
        self.assets = assets
        self.tools = tools
        self.on_update = on_update
        self.stats = LiveStats()
        self.raw_dir = raw_dir_for(options.output)
        self.host_el = host_el(options.profile.kvm_mode)
        self._peers: PeerFactory = peers or RealPeers(tools)
        self._resolve = resolver or (lambda: resolve(options, assets, tools))
        self._stop_requested = False
        self._cleaning = False
        self._hurry = False

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
        self.stats.phase = "resolving probes"
        self.on_update(self.stats)
        res = self._resolve()
        stamps = self._peers.stamps(self.raw_dir)
        facts = RunFacts()
        hyp = HypProbes(
            res.probes,
            res.symbols,
            res.probe_set.hyp_host_vector,
            stamps,
            facts,
            in_plugin=self.opts.plugin_values,  # plugin API 4 (resolve.py checks)
        )
        prepare_raw_dir(self.raw_dir, self.opts.output, stamps, hyp.probe_file())
        runtime = RuntimeDir.create()
        argv = qemu_argv(self.opts, self.assets, self.tools.qemu, res.plugin, stamps, runtime)
        initial = initial_meta(self.opts, self.assets, res, argv, self.host_el)
        truth: GroundTruth | None = None
        ended_by = "unknown"
        incomplete: str | None = None
        error: TracekitError | None = None
        hits_file = (self.raw_dir / "hits.jsonl").open("a")
        vm = self._peers.vm(argv, runtime)
        monitor: Monitor | None = None
        debugger: Debugger | None = None
        try:
            vm.start()
            monitor = self._peers.monitor(runtime)
            attach_monitor(vm, monitor, facts)
            self.stats.phase = "attaching GDB"
            self.on_update(self.stats)
            debugger = self._peers.debugger(self.raw_dir / "gdb-mi.log")
            try:
                armed = arm(debugger, runtime, res.probes)
            except DebuggerError as exc:
                if vm.poll() is None:
                    raise
                raise vm.exited_during_startup(VMError(exc.message)) from None
            facts.mi_roundtrip_ms = roundtrip_ms(debugger)
            facts.ready_s = round(self.stats.elapsed, 3)
            stops = StopHandler(
                debugger,
                armed.by_breakpoint,
                armed.thread_cpu,
                hyp,
                self.opts.profile.kvm_mode,
                self.stats,
                hits_file,
            )
            debugger.resume()
            self.stats.phase = "booting L1"
            loop = RunLoop(
                self.opts,
                self.stats,
                facts,
                raw_dir=self.raw_dir,
                gdb=self.tools.gdb,
                stamps=stamps,
                stop_requested=lambda: self._stop_requested,
                on_update=self.on_update,
            )
            truth, ended_by = loop.run(vm, debugger, monitor, stops)
        except KeyboardInterrupt:
            ended_by = "interrupted"
            incomplete = "interrupted by the user (Ctrl-C)"
        except TracekitError as exc:
            ended_by = "error"
            incomplete = str(exc)
            error = exc
        finally:
            # From here a Ctrl-C only hurries the shutdown: cleanup must always finish.
            self._cleaning = True
            teardown(vm, monitor, debugger, facts, hurry=lambda: self._hurry)
            hits_file.close()
            keep_console(runtime, self.raw_dir)
            runtime.remove()
        try:
            hyp.adopt_plugin_move(stamps.log_file)
        except TracekitError as exc:
            if error is None:  # the first fault is the one to name
                ended_by, incomplete, error = "error", str(exc), exc
        meta = final_meta(
            initial,
            facts,
            self.stats,
            hyp.probes,
            ended_by=ended_by,
            incomplete=incomplete_reason(ended_by, truth, incomplete),
            ground_truth=truth,
        )
        return merge_recording(
            self.opts.output,
            self.raw_dir,
            meta,
            truth,
            res.probe_set,
            error,
            linux_l2=self.opts.request.scenario.linux_l2,
        )
