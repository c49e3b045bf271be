"""Test tiers and shared fixtures.

Every test carries exactly one tier marker (unit, fakepeer, integration, e2e); `make test`
runs all four. A missing dependency (guest assets, QEMU, GDB) fails the test with the
command that fixes it; nothing is skipped silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TIERS = ("unit", "fakepeer", "integration", "e2e")
REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        if len(tiers) != 1:
            raise pytest.UsageError(
                f"{item.nodeid} must carry exactly one tier marker of {TIERS}, has {tiers}"
            )


@pytest.fixture(scope="session")
def guest_assets():  # type: ignore[no-untyped-def]
    """The built guest stack; a test that needs it fails (never skips) when it is missing."""
    from tracekit.errors import EnvironmentProblem
    from tracekit.guest.assets import load_assets

    try:
        return load_assets()
    except EnvironmentProblem as exc:
        pytest.fail(f"guest assets missing: {exc} (run `make setup`)", pytrace=False)


def real_image_path() -> Path:
    """The kernel Image to test on: ``$TRACEKIT_TEST_IMAGE``, else the one
    ``tracekit guest build`` cached; without either the test fails (never skips)."""
    value = os.environ.get("TRACEKIT_TEST_IMAGE")
    if value:
        return Path(value)
    from tracekit.errors import EnvironmentProblem
    from tracekit.guest.assets import load_assets

    try:
        return load_assets().image_path
    except EnvironmentProblem as exc:
        pytest.fail(f"no kernel Image to test: {exc}; or set TRACEKIT_TEST_IMAGE", pytrace=False)


@pytest.fixture(scope="session")
def tools():  # type: ignore[no-untyped-def]
    from tracekit.config import load_tools

    return load_tools()


@pytest.fixture()
def in_ci() -> bool:
    return os.environ.get("CI") == "true"
