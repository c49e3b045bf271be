"""The words the model, the probe sets, the exporter and the summary share (pure data).

One definition of each: the mission's phases and interrupt classes, and the class of
each source kind a chain's source can have (docs/phases.md).
"""

from __future__ import annotations

__all__ = ["CLASSES", "KIND_CLASSES", "PHASES", "UNKNOWN_CLASS"]

#: The mission's phases, in order (docs/phases.md).
PHASES = ("A", "B", "C", "D", "E", "F")
#: Interrupt classes of the mission, in display order.
CLASSES = ("hardware", "virtual", "ipi")
#: A chain whose source the recording could not name, and whose INTID does not say.
UNKNOWN_CLASS = "unknown"
#: The mission's class of each source kind (``SOURCE_KINDS`` in model/chains.py).
KIND_CLASSES = {"timer": "hardware", "irqfd": "virtual", "irq_line": "virtual", "sgi": "ipi"}
