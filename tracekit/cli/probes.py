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


def _kernel(image: Path | None) -> dict[str, Any]:
    """The cached kernel, or ``image`` extracted into the cache (the default is unchanged)."""
    from tracekit.config import cache_dir, load_guest_config
    from tracekit.guest.assets import _build_kernel_from_file, load_assets

    if image is None:
        a = load_assets()
        return {
            "release": a.kernel_release,
            "family": a.kernel_family,
            "image": a.image,
            "symbols": a.symbols,
            "layout": a.layout,
        }
    from tracekit.cli import err_console

    with err_console.status("reading the kernel Image (kallsyms, BTF)"):
        meta = _build_kernel_from_file(
            image, load_guest_config(), cache_dir(), False, lambda _m: None
        )
    return {k: str(meta[k]) for k in ("release", "family", "image", "symbols", "layout")}


@probes.command("check")
@click.option(
    "--kernel",
    "image",
    type=click.Path(path_type=Path),
    default=None,
    help="An arm64 Image to check instead of the cached kernel.",
)
@click.option(
    "--probes",
    "probe_set",
    default=None,
    help="Probe set name or .toml path (default: the one for the kernel's family).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(image: Path | None, probe_set: str | None, as_json: bool) -> int:
    """Every probe with its address, how it was found, its captures and their BTF members;
    exit 1 with the list of what failed."""
    from tracekit.errors import ProbeCheckFailed
    from tracekit.kernel import btf
    from tracekit.kernel.kallsyms import SymbolTable
    from tracekit.probes.check import check_probes, failures
    from tracekit.probes.select import KernelMismatch, available_probe_sets, choose_probe_set
    from tracekit.probes.spec import load_probe_set

    k = _kernel(image)
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
