"""One interrupt's journey, step by step, from a trace read back (pure).

``tracekit explain`` walks one chain A to F the way ``../shared/notes/original-flow.md``
describes the flow, with what the recording saw at each step: the L1 CPU and vCPU, the
time, the kernel function (+ offset) and the values it read or inferred. Everything comes
from the ``.pftrace``: the chain slice and its phase slices (their spans), the probe-hit
instants of each L1 CPU, QEMU's GIC events and the L2 vCPU tracks.

``kicks`` answers the note's open question ("on a single core, what does a kick even
mean?"): for every ``kvm_vcpu_kick``, where the target vCPU was and what the kick did.

The package, by concept:

* :mod:`.index`: the time index over the trace's slices and instants, choosing a chain;
* :mod:`.steps`: the :class:`Step` and :class:`Explanation` records and the walk that
  gathers steps;
* :mod:`.chain`: the per-phase step builders and :func:`explain_chain`;
* :mod:`.kicks`: what each ``kvm_vcpu_kick`` did.
"""

from __future__ import annotations

from tracekit.model.explain.chain import MISSING_MEANING, explain_chain
from tracekit.model.explain.index import PHASE_ORDER, TraceIndex, select_chain
from tracekit.model.explain.kicks import KICK_IPI_WINDOW_NS, KickOutcome, kick_outcome, kicks
from tracekit.model.explain.steps import Explanation, Step

__all__ = [
    "KICK_IPI_WINDOW_NS",
    "MISSING_MEANING",
    "PHASE_ORDER",
    "Explanation",
    "KickOutcome",
    "Step",
    "TraceIndex",
    "explain_chain",
    "kick_outcome",
    "kicks",
    "select_chain",
]
