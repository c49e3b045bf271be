"""``tracekit doctor``: a table of every external piece, with the fix for each missing one."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from tracekit.config import cache_dir, load_guest_config, load_tools
from tracekit.env.doctor import CheckResult, run_checks

__all__ = ["doctor", "render_checks"]


def render_checks(results: list[CheckResult]) -> Table:
    table = Table(title="tracekit doctor", show_lines=False)
    table.add_column("piece", style="bold")
    table.add_column("status")
    table.add_column("detail")
    table.add_column("fix")
    for r in results:
        if r.ok:
            status = "[green]OK[/]"
        elif r.required:
            status = "[red]MISSING[/]"
        else:
            status = "[yellow]optional[/]"
        table.add_row(r.name, status, r.detail, r.fix)
    return table


@click.command()
def doctor() -> int:
    """Check QEMU, GDB, compilers, guest assets and disk; print the fix for what is missing."""
    from tracekit.guest.assets import check_assets, check_probe_sets

    tools = load_tools()
    guest = load_guest_config()
    results = run_checks(
        tools,
        cache_dir(),
        extra={"assets": lambda: check_assets(guest), "probes": check_probe_sets},
    )
    console = Console()
    console.print(render_checks(results))
    failed = [r for r in results if not r.ok and r.required]
    if failed:
        console.print(
            f"[red]{len(failed)} required piece(s) missing[/]; to fix, run "
            "(or `make setup` for everything):"
        )
        for r in failed:
            # Plain lines, never wrapped, so the commands can be copied as they are.
            console.print(f"  {r.fix}", soft_wrap=True, highlight=False)
        return 2
    console.print("[green]everything tracekit needs is here[/]")
    return 0
