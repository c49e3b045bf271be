"""Commands on a recorded trace: ``summary``, ``export``, ``open``, ``query``."""

from __future__ import annotations

import json
import webbrowser
from pathlib import Path

import click
from rich.console import Console

from tracekit.errors import TraceCheckFailed, TraceFileError

__all__ = ["diff", "export", "open_trace", "query", "summary"]


@click.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def summary(trace: Path, as_json: bool) -> int:
    """Read a .pftrace back and print chains, phase latencies and exit reasons."""
    from tracekit.export.reader import read_trace
    from tracekit.model.summary import summarize
    from tracekit.render.summary import render_summary

    # A trace of another tool, or one written before the chain table, is a one-line
    # TraceFileError from summarize (model/table.py says why and what to do).
    data = summarize(read_trace(trace))
    data["output"] = str(trace)
    if as_json:
        click.echo(json.dumps(data, indent=1))
    else:
        Console().print(render_summary(data))
    return 0


@click.command()
@click.argument("raw_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Trace to write (default: RAW_DIR with .pftrace).",
)
@click.option("--remerge", is_flag=True, help="Merge hits.jsonl and qemu.log again first.")
def export(raw_dir: Path, output: Path | None, remerge: bool) -> int:
    """Rebuild a .pftrace from a recording's raw files (e.g. after a crash)."""
    from tracekit.record.pipeline import export_raw, load_meta
    from tracekit.record.pipeline import remerge as do_remerge

    if not raw_dir.is_dir():
        raise TraceFileError(
            f"{raw_dir} is not a directory",
            hint="pass the FILE.raw directory written by `tracekit record`",
        )
    out = output or raw_dir.with_suffix(".pftrace")
    meta = load_meta(raw_dir)
    events = do_remerge(raw_dir, meta)[0] if remerge else None
    report = export_raw(raw_dir, out, events=events, meta=meta)
    click.echo(
        f"wrote {out}: {report.counts['events']} events on "
        f"{report.counts['tracks']} tracks, {len(report.reconstruction.chains)} chains"
    )
    return 0


@click.command("open")
@click.argument("trace", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--port",
    type=int,
    default=9001,
    show_default=True,
    help="127.0.0.1 port (9001 is the Perfetto UI's convention for local traces).",
)
@click.option("--no-browser", is_flag=True, help="Only print the link.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
def open_trace(trace: Path, port: int, no_browser: bool, timeout: float | None) -> int:
    """Serve a trace on 127.0.0.1 and open it in the Perfetto UI."""
    from tracekit.export.serve import UI_ORIGIN, serve_once

    if not trace.is_file():
        raise TraceFileError(f"trace file {trace} does not exist")
    url = f"{UI_ORIGIN}/#!/?url=http://127.0.0.1:{port}/{trace.name}"
    click.echo(f"Perfetto UI: {url}")
    if not no_browser:
        webbrowser.open(url)
    fetched = serve_once(
        trace,
        port,
        timeout=timeout,
        on_ready=lambda: click.echo(
            f"serving {trace} on "
            f"http://127.0.0.1:{port}/{trace.name} "
            "until the UI fetches it (Ctrl-C stops)"
        ),
    )
    click.echo("the UI fetched the trace" if fetched else "stopped before the UI fetched it")
    return 0


@click.command()
@click.argument("trace", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("sql")
@click.option(
    "--trace-processor",
    "bin_path",
    default=None,
    help="trace_processor_shell binary (or $TRACEKIT_TRACE_PROCESSOR).",
)
def query(trace: Path, sql: str, bin_path: str | None) -> int:
    """Run SQL on a trace with Perfetto's trace processor (needs its native binary)."""
    from tracekit.export.check import find_trace_processor

    path = find_trace_processor(bin_path)
    if not trace.is_file():
        raise TraceFileError(f"trace file {trace} does not exist")
    from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig

    try:
        with TraceProcessor(trace=str(trace), config=TraceProcessorConfig(bin_path=path)) as tp:
            rows = list(tp.query(sql))
    except Exception as exc:  # the client raises bare Exceptions for SQL and load errors
        # Its message may carry the server side's traceback: the last line says what failed.
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        said = lines[-1].strip() if lines else type(exc).__name__
        raise TraceFileError(f"trace processor: {said[:300]}", hint="check the SQL") from None
    for row in rows:
        click.echo(json.dumps(row.__dict__, default=str))
    return 0


@click.command()
@click.argument("trace", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--trace-processor",
    "bin_path",
    default=None,
    help="trace_processor_shell binary (or $TRACEKIT_TRACE_PROCESSOR).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def check(trace: Path, bin_path: str | None, as_json: bool) -> int:
    """Load a trace with Perfetto's own trace processor and check it as the UI will see it:
    no import errors, no open slice, every chain's flow through its phases in order."""
    from rich.table import Table

    from tracekit.export.check import TraceProcessorRunner, find_trace_processor

    checks = TraceProcessorRunner(find_trace_processor(bin_path)).check(trace)
    failed = [c for c in checks if not c.ok]
    if as_json:
        click.echo(json.dumps([c.__dict__ for c in checks], indent=1))
    else:
        table = Table(title=f"tracekit check {trace.name} (Perfetto trace processor)")
        for col in ("check", "", "detail"):
            table.add_column(col)
        for c in checks:
            table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAILED[/]", c.detail)
        Console().print(table)
    if failed:
        raise TraceCheckFailed(
            f"{len(failed)} check(s) failed on {trace}: " + "; ".join(c.name for c in failed)
        )
    return 0


@click.command()
@click.argument("trace_a", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("trace_b", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def diff(trace_a: Path, trace_b: Path, as_json: bool) -> int:
    """Compare two traces per class and phase (e.g. VHE against nVHE)."""
    from rich.table import Table

    from tracekit.export.reader import read_trace
    from tracekit.model.diff import diff_summaries
    from tracekit.model.summary import summarize

    d = diff_summaries(summarize(read_trace(trace_a)), summarize(read_trace(trace_b)))
    if as_json:
        click.echo(json.dumps(d, indent=1))
        return 0
    a_mode, b_mode = d["a"]["kvm_mode"], d["b"]["kvm_mode"]
    table = Table(title=f"A = {trace_a.name} ({a_mode})   B = {trace_b.name} ({b_mode})")
    for col in (
        "class",
        "phase",
        "A count",
        "B count",
        "A p50",
        "B p50",
        "p50 change",
        "A p95",
        "B p95",
    ):
        table.add_column(col, justify="left" if col in ("class", "phase") else "right")
    for r in d["phases"]:
        ch = r["p50_change_pct"]
        table.add_row(
            r["class"],
            r["phase"],
            str(r["a_count"]),
            str(r["b_count"]),
            f"{r['a_p50_ns']} ns",
            f"{r['b_p50_ns']} ns",
            "" if ch is None else f"{ch:+.1f}%",
            f"{r['a_p95_ns']} ns",
            f"{r['b_p95_ns']} ns",
        )
    Console().print(table)
    return 0
