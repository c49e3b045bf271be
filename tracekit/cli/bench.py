"""``tracekit bench``: tracing overhead and export throughput."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tracekit.config import load_machine, load_scenarios, load_tools

__all__ = ["bench"]

#: Figures of each QEMU's untraced/traced pair, in the table's order.
RUN_ROWS = (
    ("traced_untraced_wall_ratio", "traced / untraced scenario wall"),
    ("overhead_ms_per_interrupt", "tracing overhead per interrupt (ms)"),
    ("host_ms_per_event", "host ms per recorded event (traced run)"),
    ("events_per_interrupt", "recorded events per interrupt"),
    ("host_ms_per_interrupt", "host ms per interrupt (traced run)"),
    ("host_ms_per_stop", "host ms per debugger stop (traced - untraced, per stop)"),
    ("host_ms_per_stop_paused", "  of which the VM stays stopped (ms)"),
    ("host_ms_per_stop_after", "  of which the guest runs slower afterwards (ms)"),
    ("stops_per_interrupt", "debugger stops per interrupt"),
    ("mi_roundtrip_ms", "bare GDB/MI round trip to the stopped target (ms)"),
    ("guest_dilation", "workload duration in L1's clock, traced / untraced"),
    ("ready_s", "launch to breakpoints armed, guest running (s)"),
)
#: Figures of the export benchmark (once per run).
EXPORT_ROWS = (
    ("export_events_per_s", "export: raw events per second"),
    ("export_ratio_vs_raw", "export time / protobuf serialization of the same packets"),
    ("export_peak_rss_mb", "export: peak RSS (MB)"),
)
ROWS = RUN_ROWS + EXPORT_ROWS


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
@click.option(
    "--qemu",
    "qemus",
    multiple=True,
    metavar="PATH",
    help="Measure this QEMU (repeat to compare several in one run, e.g. 7.2 and 10.0);"
    " default: the one record uses (TRACEKIT_QEMU or PATH).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(
    scenario_name: str,
    count: int,
    vcpus: int,
    machine: str,
    export_events: int,
    plugin_values: bool | None,
    qemus: tuple[str, ...],
    as_json: bool,
) -> int:
    """Measure tracing overhead (untraced vs traced, one run) and export throughput."""
    from tracekit.bench.run import QemuUnderTest, run_bench
    from tracekit.cli import err_console
    from tracekit.guest.assets import load_assets
    from tracekit.guest.runner import validate_request
    from tracekit.record.resolve import plugin_values_by_default

    req = validate_request(load_scenarios().get(scenario_name), count, vcpus)
    tools = load_tools()
    under_test = [
        QemuUnderTest(q, plugin_values_by_default(q) if plugin_values is None else plugin_values)
        for q in (qemus or (tools.qemu,))
    ]
    with err_console.status("benchmarking") as status:
        res = run_bench(
            req,
            load_machine(machine),
            load_assets(),
            tools,
            export_events=export_events,
            qemus=under_test,
            report=lambda m: status.update(f"benchmarking: {m}"),
        )
    if as_json:
        click.echo(json.dumps(res, indent=1))
        return 0
    Console().print(_table(res))
    return 0


def _mark(verdict: dict[str, Any] | None) -> str:
    if verdict is None:
        return ""
    return "[green]met[/]" if verdict["met"] else "[red]not met[/]"


def _table(res: dict[str, Any]) -> Table:
    """One column per QEMU (its value and verdict), the export figures once."""
    runs = res["runs"]
    table = Table(
        title=f"tracekit bench: {res['scenario']} count {res['count']}, "
        f"{res['export_events']} export events ({res['date']})"
    )
    table.add_column("figure")
    for run in runs:
        mode = "plugin values" if run["plugin_values"] else "GDB stops"
        table.add_column(f"QEMU {run['qemu_version']}\n{mode}", justify="right")
    table.add_column("target")
    for key, label in RUN_ROWS:
        cells = [
            f"{'-' if run[key] is None else run[key]} {_mark(run['targets'].get(key))}".strip()
            for run in runs
        ]
        target = runs[0]["targets"].get(key)
        table.add_row(label, *cells, target["target"] if target else "")
    for key, label in EXPORT_ROWS:
        verdict = res["targets"].get(key)
        cells = [f"{res[key]} {_mark(verdict)}".strip()] + [""] * (len(runs) - 1)
        table.add_row(label, *cells, verdict["target"] if verdict else "")
    return table
