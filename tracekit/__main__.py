"""``python -m tracekit`` is the ``tracekit`` command."""

from tracekit.cli import main

main()
