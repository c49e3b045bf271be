"""Options shared by the commands that run a scenario (`guest run`, `record`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["scenario_options"]

F = TypeVar("F", bound=Callable[..., Any])


def scenario_options(fn: F) -> F:
    """--scenario, --count, --vcpus and --machine, identical wherever a scenario runs."""
    for option in reversed(
        (
            click.option(
                "--scenario",
                "scenario_name",
                default=None,
                help="Scenario from configs/scenarios.toml (default: its default), or "
                "linux-mmio / linux-pci: a Linux L2 (configs/linux-l2.toml).",
            ),
            click.option("--count", type=int, default=None, help="Interrupts per source."),
            click.option("--vcpus", type=int, default=2, show_default=True, help="L2 vCPUs."),
            click.option(
                "--machine",
                default="vhe",
                show_default=True,
                help="Machine profile from configs/machines/ (or a .toml path).",
            ),
        )
    ):
        fn = option(fn)
    return fn
