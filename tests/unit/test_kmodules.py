from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.errors import GuestBuildError
from tracekit.guest.kmodules import load_order, module_name, parse_modules_dep

pytestmark = pytest.mark.unit

# The shape of Debian 6.1's modules.dep for the virtio modules (depmod lists indirect
# dependencies too, in an order that is not the load order).
DEP = (Path(__file__).parents[1] / "data" / "linux-l2" / "modules.dep").read_text()


def test_names_are_normalized() -> None:
    assert module_name("kernel/drivers/some-thing.ko.xz") == "some_thing"
    assert "some_thing" in parse_modules_dep(DEP)


def test_load_order_dependencies_first_each_once() -> None:
    order = load_order(
        ["virtio_mmio", "virtio-pci", "virtio_blk", "virtio_net"], parse_modules_dep(DEP)
    )
    assert order == (
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio_mmio.ko",
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
        "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/net/core/failover.ko",
        "kernel/drivers/net/net_failover.ko",
        "kernel/drivers/net/virtio_net.ko",
    )


def test_unknown_module_and_cycle() -> None:
    with pytest.raises(GuestBuildError, match="'e1000' is not in"):
        load_order(["e1000"], parse_modules_dep(DEP))
    with pytest.raises(GuestBuildError, match="cycle: a -> b -> a"):
        load_order(["a"], parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n"))
