"""``tracekit record``: the main job."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tracekit.cli.options import scenario_options
from tracekit.config import load_guest_config, load_machine, load_scenarios, load_tools
from tracekit.errors import GroundTruthError, Interrupted, TracekitError, VMError
from tracekit.model.meta import MergeReport
from tracekit.record.options import LiveStats

__all__ = ["record", "render_live"]


def render_live(stats: LiveStats, show_console: bool) -> Group:
    elapsed = stats.elapsed
    head = Text.assemble(
        ("recording ", "bold"),
        f"{stats.phase}   ",
        f"{elapsed:6.1f} s   stops {stats.stops}"
        f" ({stats.stops / elapsed if elapsed else 0:.0f}/s)"
        f"   discarded {stats.discarded}"
        f"   phases (stops) {''.join(sorted(stats.phases_seen)) or '-'}",
    )
    table = Table(show_header=True, box=None, pad_edge=False)
    table.add_column("probe (GDB stops)")
    table.add_column("hits", justify="right")
    for name, n in sorted(stats.hits.items()):
        table.add_row(name, str(n))
    parts: list[Text | Table] = [head, table]
    if show_console and stats.console_tail:
        parts.append(Text("\n".join(stats.console_tail[-6:]), style="dim"))
    return Group(*parts)


def default_output(scenario: str) -> Path:
    return Path("out") / f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}.pftrace"


@click.command()
@scenario_options
@click.option(
    "--kvm-mode",
    type=click.Choice(["vhe", "nvhe"]),
    default=None,
    help="Shorthand for --machine vhe|nvhe.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The .pftrace to write (raw files go to FILE.raw/).",
)
@click.option(
    "--duration",
    type=float,
    default=None,
    help="Stop after this many seconds of scenario time (wall clock).",
)
@click.option(
    "--probes",
    "probe_set",
    default=None,
    help="Probe set in configs/probes/ (or a .toml path); default: the one written for the"
    " kernel's family (read from the Image). A set for another kernel is refused.",
)
@click.option(
    "--kernel",
    "kernel",
    default=None,
    help="Record this kernel instead of the cached default: a family of configs/guest.toml"
    " [kernels] (e.g. 6.12; fetched and cached once) or an arm64 Image path.",
)
@click.option(
    "--stall-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds without any progress before the guest counts as hung.",
)
@click.option(
    "--kernel-arg",
    "kernel_args",
    multiple=True,
    hidden=True,
    help="Extra L1 kernel argument (e.g. tracekit.fault=panic, for tests).",
)
@click.option(
    "--read-values",
    is_flag=True,
    help="Also stop where the probe set infers values, read them from memory and check "
    "every inferred value against them (slower; proves the inference rules).",
)
@click.option(
    "--plugin-values/--no-plugin-values",
    default=None,
    help="Have the TCG plugin read the probes' values itself (QEMU >= 9.2, plugin API 4): "
    "no debugger stop at all. The default wherever the QEMU allows it; --no-plugin-values "
    "reads them at GDB breakpoint stops instead. With --read-values GDB also stops and "
    "every value the plugin read is checked against GDB's.",
)
@click.option("--console", "show_console", is_flag=True, help="Show the L1 console tail.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def record(
    scenario_name: str | None,
    count: int | None,
    vcpus: int,
    machine: str,
    kvm_mode: str | None,
    output: Path | None,
    duration: float | None,
    probe_set: str | None,
    kernel: str | None,
    stall_timeout: float,
    kernel_args: tuple[str, ...],
    read_values: bool,
    plugin_values: bool | None,
    show_console: bool,
    as_json: bool,
) -> int:
    """Boot L1, run a scenario in L2 and record the L1 KVM interrupt path to a .pftrace."""
    from tracekit.cli import err_console
    from tracekit.guest.assets import assets_for_kernel
    from tracekit.guest.runner import validate_request
    from tracekit.model.summary import matches, summarize_table, window_matches
    from tracekit.model.table import table_of
    from tracekit.probes.select import choose_probe_set
    from tracekit.record.options import RecordOptions
    from tracekit.record.pipeline import export_raw
    from tracekit.record.recorder import Recorder
    from tracekit.record.resolve import plugin_values_by_default
    from tracekit.render.summary import render_summary

    catalog = load_scenarios()
    spec = catalog.get(scenario_name or catalog.default)
    req = validate_request(spec, count, vcpus)
    profile = load_machine(kvm_mode or machine)
    tools = load_tools()
    assets = assets_for_kernel(load_guest_config(), tools, kernel)
    chosen = choose_probe_set(assets.kernel_release, assets.kernel_family, probe_set)
    out = output or default_output(spec.name)
    if out.suffix != ".pftrace":
        raise TracekitError(f"output {out} should end in .pftrace", hint="e.g. -o trace.pftrace")
    if plugin_values is None:
        plugin_values = plugin_values_by_default(tools.qemu)
    initrd = None
    if spec.linux_l2:  # L1 boots the Linux-L2 initramfs (its QEMU, L2's kernel and root)
        from tracekit.guest.linux_l2 import load_linux_l2

        initrd = load_linux_l2().l1_initramfs_path
    opts = RecordOptions(
        req,
        profile,
        out,
        duration_s=duration,
        probe_set=chosen,
        stall_timeout_s=stall_timeout,
        extra_kernel_args=kernel_args,
        read_values=read_values,
        plugin_values=plugin_values,
        workload_sources=catalog.workload_sources,
        initrd=initrd,
    )
    with Live(console=err_console, refresh_per_second=4, transient=True) as live:
        recorder = Recorder(
            opts,
            assets,
            tools,
            on_update=lambda s: live.update(render_live(s, show_console)),
        )
        result = recorder.run()
    decoder = result.probe_set.decoder  # the one the recording resolved its probes with
    report = export_raw(
        result.raw_dir, out, decoder=decoder, events=result.events, meta=result.meta
    )
    # The rows the exporter just wrote, from the same reconstruction: no reading the
    # trace back. (So no trace_problems/unterminated_flows here: `tracekit summary` and
    # `tracekit check` read the file.)
    summary = summarize_table(table_of(report.reconstruction, decoder.describe, report.meta))
    summary["output"] = str(out)
    summary["raw_dir"] = str(result.raw_dir)
    merged = result.meta.merge or MergeReport()
    summary["inference"] = dict(merged.inference)
    summary["stops"] = result.meta.stops
    # tracekit's own peak memory (not QEMU's), recording and export together: a long
    # recording must stay bounded (issue 14; Linux reports KiB).
    summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if plugin_values:
        summary["plugin_values"] = {
            "plugin_values_used": merged.plugin_values_used,
            "plugin_values_unreadable": merged.plugin_values_unreadable,
            "plugin_values_missing": merged.plugin_values_missing,
            "plugin_checks": dict(merged.plugin_checks),
            "plugin_disagreements": list(merged.plugin_disagreements),
        }
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    else:
        Console().print(render_summary(summary))
    if result.ended_by == "interrupted":
        raise Interrupted(f"recording interrupted; the partial trace is {out}")
    if result.incomplete_reason:
        raise VMError(
            f"recording incomplete: {result.incomplete_reason}; the partial trace is {out}"
        )
    err_console.print(
        f"trace: {out}  (raw events: {result.raw_dir}/events.jsonl; "
        f"open with `tracekit open {out}`)",
        soft_wrap=True,
    )
    # complete_chains + merged_chains != ground_truth, or any partial chain
    l2 = summary.get("l2_window")
    if l2 is not None:  # a Linux L2: its window, up to the snapshots' brackets
        mismatched = [c for c, v in summary["classes"].items() if not window_matches(v)]
    else:
        mismatched = [c for c, v in summary["classes"].items() if not matches(v)]
    if result.ground_truth is not None:
        result.ground_truth.check()
    disagreed = {k: v for k, v in summary["inference"].items() if k.endswith(".disagreed") and v}
    if read_values:
        agreed = sum(v for k, v in summary["inference"].items() if k.endswith(".agreed"))
        err_console.print(
            f"inferred values checked against memory reads: {agreed} agree, "
            f"{sum(disagreed.values())} disagree"
        )
    if disagreed:
        first = merged.disagreements[:1]
        raise GroundTruthError(
            f"inferred values disagree with what was read: {disagreed}"
            + (f" (first: {first[0]})" if first else "")
        )
    if plugin_values:
        _check_plugin_values(merged, read_values)
    if l2 is not None:
        err_console.print(
            f"L2's own counts: {len(l2['intids'])} (INTID, vCPU) compared over the window, "
            f"{l2['exact']} exactly, {sum(r['ok'] for r in l2['intids']) - l2['exact']} "
            "within a snapshot's bracket"
        )
        if not l2["ok"]:
            raise GroundTruthError(
                "the recording's acknowledgements differ from L2's own counts: "
                + "; ".join(l2["differences"][:3] or ["no (INTID, vCPU) to compare"])
                + f" (see {out})"
            )
    if mismatched:
        raise GroundTruthError(
            f"chains differ from the ground truth for {', '.join(mismatched)} (see {out})"
        )
    return 0


def _check_plugin_values(merged: MergeReport, read_values: bool) -> None:
    """Report the plugin-read values; fail on any disagreement with GDB, or on probe
    timings that came without the values the plugin should have written."""
    from tracekit.cli import err_console

    checks = merged.plugin_checks
    agreed = sum(v for k, v in checks.items() if k.endswith(".agreed"))
    disagreed = {k: v for k, v in checks.items() if k.endswith(".disagreed") and v}
    if read_values:  # GDB's values are the ones kept; the plugin's are only checked
        err_console.print(
            f"plugin-read values checked against GDB reads: {agreed} agree,"
            f" {sum(disagreed.values())} disagree"
        )
    else:
        err_console.print(
            f"plugin-read values: {merged.plugin_values_used} used,"
            f" {merged.plugin_values_unreadable} unreadable"
        )
    if disagreed:
        first = merged.plugin_disagreements
        raise GroundTruthError(
            f"plugin-read values disagree with GDB's: {disagreed}"
            + (f" (first: probe, value, GDB, plugin, t = {first[0]})" if first else "")
        )
    missing = merged.plugin_values_missing
    if missing:
        raise GroundTruthError(
            f"{missing} probe timings came without the values the plugin should have read"
            " (see qemu.log: TKP lines without their TKV)"
        )
