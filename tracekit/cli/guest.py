"""``tracekit guest build`` and ``tracekit guest run``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tracekit.cli.options import scenario_options
from tracekit.config import (
    GuestConfig,
    ToolPaths,
    cache_dir,
    load_guest_config,
    load_machine,
    load_scenarios,
    load_tools,
)
from tracekit.errors import ScenarioError
from tracekit.guest.assets import GuestAssets
from tracekit.model.ground_truth import GroundTruth
from tracekit.model.vocabulary import CLASSES

__all__ = ["guest", "render_ground_truth"]


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


@click.group()
def guest() -> None:
    """Build the built-in L1/L2 guest stack, or run a scenario in it without tracing."""


@guest.command("build")
@click.option("--force", is_flag=True, help="Rebuild everything, ignoring the cache.")
@click.option(
    "--kernel",
    "kernel",
    type=click.Path(path_type=Path),
    default=None,
    help="Use this arm64 Image (KVM built in, BTF) instead of Debian's.",
)
@click.option(
    "--debug-info",
    is_flag=True,
    help="Also fetch the kernel's Debian -dbg package (about 260 MB, once) for the source"
    " lines `tracekit explain` shows.",
)
@click.option(
    "--extra-kernel",
    "extra",
    multiple=True,
    help="Also fetch and cache this kernel family of configs/guest.toml [kernels] (e.g."
    " 6.12), for `record --kernel FAMILY`; the default kernel is not changed.",
)
@click.option(
    "--newer-qemu",
    is_flag=True,
    help="Also cache a QEMU with plugin API >= 4 when the host's is older (Debian 12:"
    " 10.0 from bookworm-backports, unpacked, not installed), for the test suite's"
    " `record --plugin-values` on QEMU 10; nothing is fetched where the host's QEMU is 10.",
)
@click.option(
    "--linux-l2",
    "linux_l2",
    is_flag=True,
    help="Also build issue 15's Linux-L2 stack (configs/linux-l2.toml: Debian's arm64 QEMU"
    " and its libraries, an L2 kernel + initramfs, in L1's initramfs; about 85 MB, under"
    " <cache>/l2linux), for `tracekit guest run-linux`; the default stack is not changed.",
)
def build(
    force: bool,
    kernel: Path | None,
    debug_info: bool,
    extra: tuple[str, ...],
    newer_qemu: bool,
    linux_l2: bool,
) -> int:
    """Download the L1 kernel and busybox, cross-compile the L2 VMM, pack the initramfs."""
    from tracekit.cli import err_console
    from tracekit.guest.assets import build_assets

    with _progress(err_console) as progress:
        task = progress.add_task("guest build", total=None)

        def report(msg: str) -> None:
            progress.update(task, description=msg)

        guest_cfg, tools = load_guest_config(), load_tools()
        assets = build_assets(guest_cfg, tools, force=force, report=report, kernel=kernel)
        lines = _debug_lines(assets, guest_cfg, tools, force, report) if debug_info else None
        extras = {}
        for family in extra:
            from tracekit.guest.assets import build_extra_kernel

            extras[family] = build_extra_kernel(
                guest_cfg, tools, family, force=force, report=report
            )
        newer = _newer_qemu(tools, force, report) if newer_qemu else None
        l2 = None
        if linux_l2:
            from tracekit.config import load_linux_l2_config
            from tracekit.guest.linux_l2 import build_linux_l2

            l2 = build_linux_l2(
                guest_cfg, load_linux_l2_config(), tools, force=force, report=report
            )
        progress.update(task, description="guest assets ready")
    table = Table(title="guest assets")
    table.add_column("piece")
    table.add_column("version")
    table.add_column("size", justify="right")
    table.add_column("path")
    sizes = assets.sizes()
    table.add_row(
        "L1 kernel",
        f"{assets.kernel_release} ({assets.kernel_version})",
        f"{sizes.get('kernel', 0) / 1e6:.1f} MB",
        assets.image,
    )
    table.add_row("kallsyms", f"{assets.symbol_count} symbols", "", assets.symbols)
    table.add_row("BTF layout", "struct offsets", "", assets.layout)
    table.add_row("busybox", assets.busybox_version, "", "")
    table.add_row("L2 VMM", assets.vmm_hash, f"{sizes.get('vmm', 0) / 1e3:.0f} kB", assets.vmm)
    table.add_row("initramfs", "", f"{sizes.get('initramfs', 0) / 1e6:.1f} MB", assets.initramfs)
    if lines is not None:
        table.add_row("source lines", f"{len(lines)} probe points", "", "")
    for family, meta in extras.items():
        table.add_row(
            f"kernel {family}", f"{meta['release']} ({meta['version']})", "", str(meta["image"])
        )
    if newer is not None:
        table.add_row("newer QEMU", newer["version"], "", newer["binary"])
    if l2 is not None:
        size = l2.l1_initramfs_path.stat().st_size / 1e6
        table.add_row(
            "Linux L2 (L1 initramfs)",
            f"{l2.qemu_package} {l2.qemu_version}, {len(l2.libraries)} libraries,"
            f" {len(l2.modules)} modules",
            f"{size:.1f} MB",
            l2.l1_initramfs,
        )
    Console().print(table)
    return 0


def _newer_qemu(tools: ToolPaths, force: bool, report: Callable[[str], None]) -> dict[str, str]:
    from tracekit.guest.newer_qemu import fetch_newer_qemu
    from tracekit.vm.plugin import qemu_plugin_api

    return fetch_newer_qemu(tools, qemu_plugin_api(tools.qemu), force=force, report=report)


def _debug_lines(
    assets: GuestAssets,
    guest_cfg: GuestConfig,
    tools: ToolPaths,
    force: bool,
    report: Callable[[str], None],
) -> dict[str, str]:
    """file:line of every probe point of the kernel's probe set (both KVM modes)."""
    from tracekit.guest.assets import guest_apt
    from tracekit.guest.debuginfo import build_lines, load_lines
    from tracekit.probes.select import choose_probe_set
    from tracekit.probes.spec import load_probe_set
    from tracekit.record.resolve import resolve_for

    if assets.kernel_package == "custom":
        from tracekit.errors import GuestBuildError

        raise GuestBuildError(
            "--debug-info needs a Debian kernel (its -dbg package)",
            hint="for your own kernel, build it with debug info and use GDB on its vmlinux",
        )
    pset = load_probe_set(choose_probe_set(assets.kernel_release, assets.kernel_family))
    locations: dict[str, int] = {}
    for mode in ("vhe", "nvhe"):
        resolved, _ = resolve_for(assets, pset, mode)
        locations |= {p.location: p.address for p in resolved.probes}
    kdir = assets.image_path.parent
    build_lines(
        guest_apt(guest_cfg, tools, cache_dir()),
        kdir,
        assets.kernel_package,
        assets.kernel_version,
        assets.kernel_release,
        locations,
        tools,
        force=force,
        report=report,
    )
    return load_lines(kdir)


def render_ground_truth(truth: GroundTruth) -> Table:
    table = Table(
        title=f"ground truth: {truth.scenario} ({truth.vcpus} vCPUs, count {truth.count})"
    )
    for col in ("class", "source", "INTID", "vCPU", "sent", "acknowledged", ""):
        table.add_column(
            col, justify="right" if col in ("INTID", "vCPU", "sent", "acknowledged") else "left"
        )
    order = {c: i for i, c in enumerate(CLASSES)}
    for i in sorted(truth.interrupts, key=lambda i: (order.get(i.cls, 9), i.intid, i.vcpu)):
        mark = "[green]ok[/]" if i.sent == i.acked else "[red]MISMATCH[/]"
        table.add_row(i.cls, i.source, str(i.intid), str(i.vcpu), str(i.sent), str(i.acked), mark)
    for e in sorted(truth.exceptions, key=lambda e: (e.kind, e.vcpu)):
        mark = "[green]ok[/]" if e.issued == e.observed else "[red]MISMATCH[/]"
        table.add_row("exception", e.kind, "", str(e.vcpu), str(e.issued), str(e.observed), mark)
    table.caption = f"L1 time {truth.l1_ns / 1e6:.1f} ms; spurious {truth.spurious}; " + (
        "[green]sides agree[/]"
        if truth.ok and not truth.disagreements()
        else "[red]sides disagree[/]"
    )
    return table


KERNEL_HELP = (
    "Run on this kernel instead of the cached default: a family of configs/guest.toml"
    " [kernels] (e.g. 6.12; fetched and cached once) or an arm64 Image path."
)


@guest.command("run")
@scenario_options
@click.option("--kernel", "kernel", default=None, help=KERNEL_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the ground truth as JSON.")
def run(
    scenario_name: str | None,
    count: int | None,
    vcpus: int,
    machine: str,
    kernel: str | None,
    as_json: bool,
) -> int:
    """Boot L1, run a scenario in L2 without tracing, print its ground truth."""
    from tracekit.cli import err_console
    from tracekit.guest.assets import assets_for_kernel
    from tracekit.guest.runner import run_scenario, validate_request

    catalog = load_scenarios()
    spec = catalog.get(scenario_name or catalog.default)
    if spec.linux_l2:
        raise ScenarioError(
            f"{spec.name} runs a Linux L2, not the VMM's workload",
            hint=f"use `tracekit guest run-linux --scenario {spec.name}`",
        )
    req = validate_request(spec, count, vcpus)
    profile = load_machine(machine)
    assets = assets_for_kernel(load_guest_config(), load_tools(), kernel)
    with _progress(err_console) as progress:
        task = progress.add_task("starting QEMU", total=None)
        result = run_scenario(
            req,
            profile,
            assets,
            load_tools(),
            on_phase=lambda p: progress.update(task, description=p),
        )
        progress.update(task, description=f"done in {result.wall_total_s:.1f} s")
    truth = result.ground_truth
    if as_json:
        click.echo(
            json.dumps(
                truth.to_json()
                | {
                    "wall_s": round(result.wall_total_s, 2),
                    "boot_wall_s": round(result.wall_boot_s, 2),
                    "l1": result.ready,
                }
            )
        )
    else:
        Console().print(render_ground_truth(truth))
    truth.check()
    return 0


@guest.command("run-linux")
@click.option(
    "--scenario",
    "scenario",
    default="linux-pci",
    show_default=True,
    help="A scenario of configs/linux-l2.toml (linux-mmio, linux-pci).",
)
@click.option("--machine", default="vhe", show_default=True, help="Machine profile of L1.")
@click.option("--json", "as_json", is_flag=True, help="Print the times and counts as JSON.")
def run_linux(scenario: str, machine: str, as_json: bool) -> int:
    """Boot L1, start QEMU with KVM in it, boot L2 Linux, print L2's own interrupt counts."""
    from tracekit.cli import err_console
    from tracekit.config import load_linux_l2_config
    from tracekit.guest.linux_l2 import load_linux_l2
    from tracekit.guest.linux_run import run_linux_l2

    cfg = load_linux_l2_config()
    cfg.get(scenario)
    profile = load_machine(machine)
    assets = load_linux_l2()
    with _progress(err_console) as progress:
        task = progress.add_task("starting QEMU", total=None)
        result = run_linux_l2(
            scenario,
            cfg,
            profile,
            assets,
            load_tools(),
            on_phase=lambda p: progress.update(task, description=p),
        )
    report = result.report
    times = {
        "l1_ready_s": round(result.wall_l1_ready_s, 2),
        "inner_qemu_start_s": round(result.wall_qemu_start_s, 2),
        "l2_init_s": round(result.wall_l2_init_s, 2),
        "inner_start_to_l2_init_s": round(result.inner_to_init_s, 2),
        "l2_report_s": round(result.wall_report_s, 2),
        "total_s": round(result.wall_total_s, 2),
        "steps": dict(result.wall_steps),
    }
    sources = report.sources()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "scenario": scenario,
                    "machine": machine,
                    "l1": result.ready,
                    "l2_kernel": report.kernel,
                    "l2_cpus": report.cpus,
                    "window_s": round(report.window_s, 3),
                    "host": times,
                    "l2_errors": list(result.l2_errors),
                    "sources": [
                        {
                            "label": s.label,
                            "kind": s.kind,
                            "intid": s.intid,
                            "msi": list(s.msi) if s.msi else None,
                            "chip": s.chip,
                            "name": s.name,
                            "before": list(s.before),
                            "after": list(s.after),
                        }
                        for s in sources
                    ],
                }
            )
        )
        return 0
    table = Table(
        title=f"L2 {report.kernel}: {scenario} ({report.cpus} vCPUs, window"
        f" {report.window_s:.2f} s of L2 time)"
    )
    for col in ("IRQ", "kind", "INTID / ITS dev,event", "chip", "name"):
        table.add_column(col)
    for cpu in range(report.cpus):
        table.add_column(f"CPU{cpu}", justify="right")
    for s in sources:
        if s.total == 0:
            continue
        where = str(s.intid) if s.intid is not None else (f"{s.msi[0]},{s.msi[1]}" if s.msi else "")
        table.add_row(s.label, s.kind, where, s.chip, s.name, *(str(d) for d in s.delta))
    table.caption = (
        f"host: L1 ready {times['l1_ready_s']} s, inner QEMU start -> L2 /init"
        f" {times['inner_start_to_l2_init_s']} s, total {times['total_s']} s"
    )
    Console().print(table)
    for err in result.l2_errors:
        err_console.print(f"[yellow]L2: {err}[/]")
    return 0
