"""``tracekit probes check``: does a probe set resolve on this kernel? Run it first on your own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["probes"]


@click.group()
def probes() -> None:
    """Probe sets against a kernel Image."""


def _kernel(kernel: str | None) -> dict[str, Any]:
    """The cached kernel, a kernel family of configs/guest.toml, or an Image path (cached by
    content; the default kernel is unchanged)."""
    from tracekit.cli import err_console
    from tracekit.config import load_guest_config, load_tools
    from tracekit.guest.assets import assets_for_kernel

    with err_console.status("reading the kernel (kallsyms, BTF)"):
        a = assets_for_kernel(load_guest_config(), load_tools(), kernel)
    return {
        "release": a.kernel_release,
        "family": a.kernel_family,
        "image": a.image,
        "symbols": a.symbols,
        "layout": a.layout,
    }


@probes.command("check")
@click.option(
    "--kernel",
    "kernel",
    default=None,
    help="A kernel family of configs/guest.toml (e.g. 6.12) or an arm64 Image path,"
    " instead of the cached kernel.",
)
@click.option(
    "--probes",
    "probe_set",
    default=None,
    help="Probe set name or .toml path (default: the one for the kernel's family).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(kernel: str | None, probe_set: str | None, as_json: bool) -> int:
    """Every probe with its address, how it was found, its captures and their BTF members;
    exit 1 with the list of what failed."""
    from tracekit.errors import ProbeCheckFailed
    from tracekit.kernel import btf
    from tracekit.kernel.kallsyms import SymbolTable
    from tracekit.probes.check import check_probes, failures
    from tracekit.probes.select import KernelMismatch, available_probe_sets, choose_probe_set
    from tracekit.probes.spec import load_probe_set

    k = _kernel(kernel)
    note = ""
    try:
        name = choose_probe_set(k["release"], k["family"], probe_set)
    except KernelMismatch:
        if probe_set is not None:
            raise
        # A kernel newer than every probe set: check the newest one, to show what moved.
        newest = max(available_probe_sets(), key=lambda s: tuple(map(int, s.kernel.split("."))))
        name = newest.name
        note = f"no probe set is written for {k['family']}: checked against {name}"
    pset = load_probe_set(name)
    layout: dict[str, dict[str, int]] = json.loads(Path(k["layout"]).read_text())
    parsed: list[btf.Btf] = []

    def member_info(path: str) -> tuple[int, int]:
        if path in layout:
            return int(layout[path]["offset"]), int(layout[path]["size"])
        if not parsed:
            parsed.append(btf.load_btf_from_file(Path(k["image"])))
        info = parsed[0].member_info(path)
        return info.offset, info.size

    symbols = SymbolTable.from_json(Path(k["symbols"]).read_text())
    reports = check_probes(
        pset, symbols, Path(k["image"]).read_bytes(), lambda m: member_info(m)[0], member_info
    )
    failed = failures(reports)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "kernel": k["release"],
                    "probe_set": name,
                    "note": note,
                    "failed": failed,
                    "probes": [
                        r.__dict__ | {"captures": [c.__dict__ for c in r.captures]} for r in reports
                    ],
                },
                indent=1,
                default=list,
            )
        )
    else:
        table = Table(title=f"probe set {name} on kernel {k['release']}")
        for col in (
            "probe",
            "phase",
            "mode",
            "address",
            "found by",
            "captures (BTF member: offset, size)",
        ):
            table.add_column(col)
        for r in reports:
            caps = "\n".join(
                f"{c.name} = {escape(c.expr)}"
                + "".join(f"\n  {p}: {o}, {s} B" for p, o, s in c.members)
                + (f"\n  [red]{escape(c.problem)}[/]" if c.problem else "")
                for c in r.captures
            )
            where = (
                f"{r.address:#x} {r.location}"
                if r.address is not None
                else (f"[red]{r.problem}[/]" if r.required else f"[yellow]skipped: {r.problem}[/]")
            )
            table.add_row(r.name, r.phase, r.mode, where, r.found_by, caps)
        console = Console()
        console.print(table)
        if note:
            console.print(f"[yellow]{note}[/]")
    if failed:
        raise ProbeCheckFailed(
            f"{len(failed)} probe(s) of {name} do not fit kernel {k['release']}: "
            + "; ".join(failed),
            hint="fix the probe set (or write one for this kernel) before recording",
        )
    return 0
