"""Which TCP sockets processes listen on (from /proc; Linux only)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["descendants", "listening_tcp", "pids_named"]


def _listen_inodes() -> dict[int, str]:
    out: dict[int, str] = {}
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A":  # TCP_LISTEN
                out[int(parts[9])] = parts[1]
    return out


def listening_tcp(pids: list[int]) -> list[tuple[int, str]]:
    """(pid, local address) of every listening TCP socket owned by ``pids``."""
    listening = _listen_inodes()
    found = []
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            links = [os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)]
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:["):
                inode = int(link[8:-1])
                if inode in listening:
                    found.append((pid, listening[inode]))
    return found


def pids_named(*names: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if any(comm.startswith(n[:15]) for n in names):
                out.append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out
