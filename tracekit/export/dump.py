"""A trace read back, as normalized text a person can review (pure: no I/O).

``dump_trace(parse_trace(data))`` is what the exporter's golden holds
(``tests/data/golden/mixed5.trace.txt``): a diff of two dumps says what changed in the
trace's content, which a diff of bytes or hashes cannot. The format, line by line:

* ``# ...``: a header with the counts of packets, tracks, slices, instants, counter values
  and flows, then ``problems:`` and one line per problem the reader found.
* ``group "NAME"``: a process track (the UI's group). Groups sort by name; tracks without
  a process ancestor come last under ``group (none)``.
* ``  track "NAME" rank R``: a track of the group, sorted by (rank, name, then uuid so that
  equal names keep the exporter's order). ``(empty)`` if nothing is on it.
* ``    TS +DUR NAME {ARGS}``: a slice (start and duration in ns); ``    TS instant NAME
  {ARGS}``: an instant. Items are in file order, which on one track is the nesting order,
  and indented two spaces per nesting level. ``{ARGS}`` lists the debug annotations
  sorted by key, values as JSON; a string annotation holding a JSON object or array is
  shown expanded on the lines below it (``tracekit.meta``). ``[flow 0x..]`` marks the flows
  a slice starts or continues and ``[ends flow 0x..]`` those an instant terminates.
* ``  counter "NAME" rank R: N values``: a counter track and its values as ``TS VALUE``;
  with more than ``counter_limit`` values only the first and last few are listed, and a
  ``... K values (min A, max B)`` line stands for those left out.
* ``flows``: per flow id, its event count and its first and last event (where it starts
  and where it ends), or ``never ends`` / ``never starts``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tracekit.export.reader import ParsedTrace, Placement, TrackInfo
from tracekit.model.trace import Slice

__all__ = ["COUNTER_LIMIT", "dump_trace"]

#: Counter values listed in full per track; longer ones keep their first and last
#: ``COUNTER_LIMIT // 2`` values (a counter is a rate or an occupancy: the ends and the
#: range tell a reviewer what moved).
COUNTER_LIMIT = 200
_NO_GROUP = "(none)"


def _value(v: Any) -> str:
    return json.dumps(v, sort_keys=True, ensure_ascii=False)


def _nested_json(v: Any) -> Any | None:
    """The parsed value of a string annotation holding a JSON object or array."""
    if not isinstance(v, str) or v[:1] not in ("{", "["):
        return None
    try:
        parsed = json.loads(v)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict | list) else None


def _args(args: dict[str, Any], indent: str) -> tuple[str, list[str]]:
    """``{k=v, ...}`` for the item's line, and the lines of any JSON-valued annotation."""
    if not args:
        return "", []
    inline, below = [], []
    for key in sorted(args):
        nested = _nested_json(args[key])
        if nested is None:
            inline.append(f"{key}={_value(args[key])}")
            continue
        inline.append(f"{key}=(JSON below)")
        below.append(f"{indent}  {key} =")
        text = json.dumps(nested, indent=1, sort_keys=True, ensure_ascii=False)
        below.extend(f"{indent}    {line}" for line in text.splitlines())
    return " {" + ", ".join(inline) + "}", below


def _flows(place: Placement) -> str:
    marks = [f" [flow {f:#x}]" for f in place.flows]
    marks += [f" [ends flow {f:#x}]" for f in place.terminating]
    return "".join(marks)


def _group_of(uuid: int, info: dict[int, TrackInfo]) -> str:
    """The name of the track's nearest process ancestor (itself, if a process)."""
    seen: set[int] = set()
    cur: int | None = uuid
    while cur is not None and cur in info and cur not in seen:
        seen.add(cur)
        if info[cur].process:
            return info[cur].name
        cur = info[cur].parent
    return _NO_GROUP


def _items(
    content: ParsedTrace,
) -> dict[int, list[tuple[int, bool, Slice, Placement]]]:
    """Per track uuid: (packet index, is instant, item, placement), in file order."""
    per: dict[int, list[tuple[int, bool, Slice, Placement]]] = {}
    for s, p in zip(content.slices, content.slice_places, strict=True):
        per.setdefault(p.uuid, []).append((p.packet, False, s, p))
    for s, p in zip(content.instants, content.instant_places, strict=True):
        per.setdefault(p.uuid, []).append((p.packet, True, s, p))
    for items in per.values():
        items.sort(key=lambda it: it[0])  # packet indices are unique
    return per


def _track_lines(items: Iterable[tuple[int, bool, Slice, Placement]]) -> list[str]:
    out = []
    for _, instant, s, place in items:
        indent = "    " + "  " * s.depth
        when = f"{s.start} instant" if instant else f"{s.start} +{s.end - s.start}"
        inline, below = _args(s.args, indent)
        out.append(f"{indent}{when} {s.name}{inline}{_flows(place)}")
        out.extend(below)
    return out


def _counter_lines(values: list[tuple[int, float]], limit: int) -> list[str]:
    def line(ts: int, v: float) -> str:
        return f"    {ts} {_value(v)}"

    if len(values) <= limit:
        return [line(ts, v) for ts, v in values]
    keep = max(limit // 2, 1)
    middle = [v for _, v in values[keep:-keep]]
    return [
        *(line(ts, v) for ts, v in values[:keep]),
        f"    ... {len(middle)} values (min {_value(min(middle))}, max {_value(max(middle))})",
        *(line(ts, v) for ts, v in values[-keep:]),
    ]


def _flow_lines(content: ParsedTrace) -> list[str]:
    # (ts, packet, track name, event name) of every event a flow id is on.
    steps: dict[int, list[tuple[int, int, str, str]]] = {}
    ends: set[int] = set()
    pairs = [
        *zip(content.slices, content.slice_places, strict=True),
        *zip(content.instants, content.instant_places, strict=True),
    ]
    for s, p in pairs:
        for f in (*p.flows, *p.terminating):
            steps.setdefault(f, []).append((s.start, p.packet, s.track, s.name))
        ends.update(p.terminating)
    out = [f"flows ({len(steps)})"]
    for fid in sorted(steps):
        seq = sorted(steps[fid])
        first, last = seq[0], seq[-1]
        out.append(f"  flow {fid:#x}: {len(seq)} events")
        out.append(f'    from {first[0]} "{first[2]}" {first[3]}')
        if fid in ends:
            out.append(f'    to   {last[0]} "{last[2]}" {last[3]}')
        else:
            out.append("    never ends")
        if fid not in content.flows_started:
            out.append("    never starts")
    return out


def dump_trace(content: ParsedTrace, *, counter_limit: int = COUNTER_LIMIT) -> str:
    """The normalized text of a parsed trace (the module docstring gives the format)."""
    info = content.track_info
    per = _items(content)
    counter_of = {uuid: name for name, uuid in content.counter_uuids.items()}
    n_values = sum(len(v) for v in content.counters.values())
    flow_ids = content.flows_started | content.flows_terminated
    lines = [
        "# tracekit trace dump (format: tracekit/export/dump.py)",
        f"# {content.packets} packets, {len(info)} tracks, {len(content.slices)} slices, "
        f"{len(content.instants)} instants, {n_values} counter values, {len(flow_ids)} flows",
        f"problems: {len(content.problems)}",
        *(f"  {p}" for p in content.problems),
    ]
    groups: dict[str, list[int]] = {}
    for uuid, ti in info.items():
        # A process track is its group's heading, listed as a track only if it holds events.
        if ti.process and uuid not in per and uuid not in counter_of:
            continue
        groups.setdefault(_group_of(uuid, info), []).append(uuid)
    order = sorted(groups, key=lambda g: (g == _NO_GROUP, g))
    for group in order:
        lines.append(f'group "{group}"' if group != _NO_GROUP else f"group {_NO_GROUP}")
        for uuid in sorted(groups[group], key=lambda u: (info[u].rank, info[u].name, u)):
            ti = info[uuid]
            if ti.counter or uuid in counter_of:
                values = content.counters.get(counter_of[uuid], []) if uuid in counter_of else []
                lines.append(f'  counter "{ti.name}" rank {ti.rank}: {len(values)} values')
                lines.extend(_counter_lines(values, counter_limit))
            if uuid in per:
                lines.append(f'  track "{ti.name}" rank {ti.rank}')
                lines.extend(_track_lines(per[uuid]))
            elif not (ti.counter or uuid in counter_of):
                lines.append(f'  track "{ti.name}" rank {ti.rank} (empty)')
    lines.extend(_flow_lines(content))
    return "\n".join(lines) + "\n"
