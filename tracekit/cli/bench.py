"""``tracekit bench``: tracing overhead and export throughput."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from tracekit.config import load_machine, load_scenarios, load_tools

__all__ = ["bench"]

ROWS = (
    ("host_ms_per_event", "host ms per recorded event (traced run)"),
    ("events_per_interrupt", "recorded events per interrupt"),
    ("host_ms_per_interrupt", "host ms per interrupt (traced run)"),
    ("host_ms_per_stop", "host ms per debugger stop (traced - untraced, per stop)"),
    ("host_ms_per_stop_paused", "  of which the VM stays stopped (ms)"),
    ("host_ms_per_stop_after", "  of which the guest runs slower afterwards (ms)"),
    ("stops_per_interrupt", "debugger stops per interrupt"),
    ("mi_roundtrip_ms", "bare GDB/MI round trip to the stopped target (ms)"),
    ("guest_dilation", "workload duration in L1's clock, traced / untraced"),
    ("export_events_per_s", "export: raw events per second"),
    ("export_ratio_vs_raw", "export time / protobuf serialization of the same packets"),
    ("export_peak_rss_mb", "export: peak RSS (MB)"),
    ("ready_s", "launch to breakpoints armed, guest running (s)"),
)


@click.command()
@click.option("--scenario", "scenario_name", default="mixed", show_default=True)
@click.option("--count", type=int, default=20, show_default=True)
@click.option("--vcpus", type=int, default=2, show_default=True)
@click.option("--machine", default="vhe", show_default=True)
@click.option(
    "--export-events",
    type=int,
    default=1_000_000,
    show_default=True,
    help="Synthetic raw events for the export benchmark.",
)
@click.option(
    "--plugin-values/--no-plugin-values",
    default=None,
    help="Trace as `record --plugin-values` (the plugin reads the values; QEMU >= 9.2) or"
    " `--no-plugin-values` (GDB stops); default: as `record` would on this QEMU.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(
    scenario_name: str,
    count: int,
    vcpus: int,
    machine: str,
    export_events: int,
    plugin_values: bool | None,
    as_json: bool,
) -> int:
    """Measure tracing overhead (untraced vs traced, one run) and export throughput."""
    from tracekit.bench.run import run_bench
    from tracekit.cli import err_console
    from tracekit.guest.assets import load_assets
    from tracekit.guest.runner import validate_request
    from tracekit.record.resolve import plugin_values_by_default

    req = validate_request(load_scenarios().get(scenario_name), count, vcpus)
    if plugin_values is None:
        plugin_values = plugin_values_by_default(load_tools().qemu)
    with err_console.status("benchmarking") as status:
        res = run_bench(
            req,
            load_machine(machine),
            load_assets(),
            load_tools(),
            export_events=export_events,
            plugin_values=plugin_values,
            report=lambda m: status.update(f"benchmarking: {m}"),
        )
    if as_json:
        click.echo(json.dumps(res, indent=1))
        return 0
    table = Table(
        title=f"tracekit bench: {res['scenario']} count {res['count']}, "
        f"{res['export_events']} export events ({res['date']})"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target")
    table.add_column("")
    for key, label in ROWS:
        t = res["targets"].get(key)
        mark = "" if t is None else ("[green]met[/]" if t["met"] else "[red]not met[/]")
        value = "-" if res[key] is None else str(res[key])
        table.add_row(label, value, t["target"] if t else "", mark)
    Console().print(table)
    return 0
