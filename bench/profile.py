"""Optional sampling profile of the replicator while it works (`--profile`): py-spy record in raw
(collapsed stack) format, summarised as the functions holding most on-CPU samples."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path

from . import procs

RATE_HZ = 200
TOP = 15


def _py_spy() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


def start(pid: int, out_base: Path) -> subprocess.Popen | None:
    exe = _py_spy()
    if exe is None:
        print("  note: py-spy not found; no profile", flush=True)
        return None
    return procs.spawn([exe, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--nonblocking",
                        "--format", "raw", "-o", str(out_base.with_suffix(".txt"))],
                       out_base.with_suffix(".log"))


def abort(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        procs.stop(proc, 9, 10)


def finish(proc: subprocess.Popen | None, out_base: Path) -> dict | None:
    if proc is None:
        return None
    procs.stop(proc, 2, 30)  # py-spy writes its output on SIGINT
    raw = out_base.with_suffix(".txt")
    if not raw.exists():
        return None
    summary = summarize(raw.read_text())
    from .common import run_base

    keep = run_base() / "profiles"
    keep.mkdir(parents=True, exist_ok=True)
    dest = keep / f"{out_base.parent.name}-{out_base.name}.txt"
    shutil.copy(raw, dest)
    summary["file"] = str(dest)
    return summary


def summarize(collapsed: str) -> dict:
    """Self and inclusive sample shares per function from `stack;frames count` lines."""
    self_n: collections.Counter = collections.Counter()
    incl_n: collections.Counter = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_n[_short(frames[-1])] += n
        for f in {_short(f) for f in frames}:
            incl_n[f] += n
    return {"samples": total,
            "self": [(f, n / total) for f, n in self_n.most_common(TOP)] if total else [],
            "inclusive": [(f, n / total) for f, n in incl_n.most_common(TOP * 2)] if total else []}


def _short(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module.py)`; line numbers merged."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = file.split("/")
    if "replicator" in parts:
        file = "/".join(parts[parts.index("replicator"):])
    else:
        file = parts[-1]
    return f"{name} ({file})"
