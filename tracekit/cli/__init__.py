"""The ``tracekit`` command line.

Only this package talks to the user: it builds the one rich Console, configures logging,
and turns :class:`~tracekit.errors.TracekitError` into a one-line message and an exit code
(2: bad input or missing piece; 1: ran but found a problem). A Python traceback is shown
only with ``--debug``.
"""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import click
from rich.console import Console

from tracekit.errors import TracekitError

__all__ = ["cli", "main"]

#: stderr console for messages and progress; results go to stdout.
err_console = Console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show Python tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Log what tracekit does (QEMU argv, ...).")
@click.version_option(package_name="tracekit")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """tracekit: watch an interrupt travel through arm64 KVM, phase by phase.

    It boots an L1 Linux with KVM in QEMU (nested virtualization), runs an L2 guest
    workload, breakpoints the L1 kernel over the GDB stub and writes a Perfetto trace.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    from rich.logging import RichHandler

    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=debug)],
    )
    # Libraries' own logs (qemu.qmp reports a closed socket as ERROR) are translated into
    # tracekit's one-line errors; show them only when debugging.
    for name in ("qemu.qmp", "asyncio", "pygdbmi"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.CRITICAL)


def _register() -> None:
    from tracekit.cli import bench, doctor, explain, guest, probes, record, trace

    cli.add_command(doctor.doctor)
    cli.add_command(guest.guest)
    cli.add_command(record.record)
    cli.add_command(trace.summary)
    cli.add_command(trace.export)
    cli.add_command(trace.open_trace)
    cli.add_command(trace.query)
    cli.add_command(trace.check)
    cli.add_command(explain.explain)
    cli.add_command(probes.probes)
    cli.add_command(trace.diff)
    cli.add_command(bench.bench)


_register()


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the console script; never lets a traceback out without --debug."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        rv = cli.main(args=args, prog_name="tracekit", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except TracekitError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]tracekit: error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except (click.Abort, KeyboardInterrupt):
        err_console.print("tracekit: interrupted")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        err_console.print(
            f"[bold red]tracekit: internal error:[/] {type(exc).__name__}: {exc} "
            "(a bug; rerun with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(3)
