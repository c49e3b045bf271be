"""``tracekit explain``: one interrupt's journey, step by step, from a recording."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

__all__ = ["explain"]


@click.command()
@click.argument("trace", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--chain", "chain", type=int, default=None, help="The chain number (#N).")
@click.option("--class", "cls", default=None, help="The first complete chain of this class.")
@click.option(
    "--nth", type=int, default=1, show_default=True, help="With --class/--intid: the K-th."
)
@click.option("--intid", type=int, default=None, help="A chain of this INTID.")
@click.option("--kicks", "show_kicks", is_flag=True, help="Count kicks by target mode and outcome.")
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON.")
def explain(
    trace: Path,
    chain: int | None,
    cls: str | None,
    nth: int,
    intid: int | None,
    show_kicks: bool,
    as_json: bool,
) -> int:
    """Walk one chain A to F: CPU, vCPU, time, kernel function and values at each step."""
    from tracekit.config import load_original_names
    from tracekit.export.reader import read_trace
    from tracekit.model.explain import TraceIndex, explain_chain, kicks, select_chain
    from tracekit.render.explain import render_explanation, render_kicks

    index = TraceIndex(read_trace(trace))
    if show_kicks:
        k = kicks(index)
        if as_json:
            click.echo(json.dumps(k, indent=1))
        else:
            Console().print(render_kicks(k))
        return 0
    chosen = select_chain(index, chain, cls, nth, intid)
    e = explain_chain(index, chosen, load_original_names())
    if as_json:
        click.echo(json.dumps(e.to_json(), indent=1))
        return 0
    hint = (
        ""
        if any(step.source_line for step in e.steps)
        else "no source lines in this recording (function + offset from kallsyms): run"
        " `tracekit guest build --debug-info` (Debian's -dbg package, ~260 MB, once), then record"
    )
    Console().print(render_explanation(e, lines_hint=hint))
    return 0
