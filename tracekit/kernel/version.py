"""Which kernel an arm64 ``Image`` is, read from the Image itself (pure).

Every Linux image carries ``linux_banner`` (init/version.c): ``Linux version <release>
(<builder>) (<compiler>) #<n> SMP ...``. The release (what ``uname -r`` prints) starts with
the kernel's major.minor: the *family* a probe set is written for (``configs/probes/``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tracekit.errors import KernelImageError

__all__ = ["KernelVersion", "family_of", "read_kernel_version"]

_BANNER = re.compile(rb"Linux version (\d+\.\d+[\w.+~-]*) \([^\x00\n]{0,400}")


@dataclass(frozen=True)
class KernelVersion:
    #: ``uname -r``, e.g. ``6.1.0-57-cloud-arm64``.
    release: str
    #: major.minor, e.g. ``6.1``: what probe sets are keyed by.
    family: str
    #: The whole banner, e.g. ``Linux version 6.1.0-57-cloud-arm64 (...) #1 SMP Debian 6.1.192-3``.
    banner: str


def family_of(release: str) -> str:
    """``6.12.57+deb13-cloud-arm64`` -> ``6.12``; ``""`` when it does not start with X.Y."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return f"{m.group(1)}.{m.group(2)}" if m else ""


def read_kernel_version(image: bytes, *, source: str = "the kernel image") -> KernelVersion:
    """The banner of ``image``; the last one wins (the first copy may be a format string)."""
    found = list(_BANNER.finditer(image))
    if not found:
        raise KernelImageError(
            f"{source} has no 'Linux version' banner",
            hint="pass an uncompressed arm64 Linux Image (arch/arm64/boot/Image)",
        )
    m = found[-1]
    banner = m.group(0).decode("ascii", "replace")
    release = m.group(1).decode("ascii", "replace")
    return KernelVersion(release=release, family=family_of(release), banner=banner)
