"""Two diagnostic probes behind the profile notes in RESULTS.md (not part of the suite):

    python -m bench.probes threads [--rate R] [--seconds S]   CPU per replicator thread
    python -m bench.probes fences  [--rate R] [--seconds S]   how long each write fence is held
    python -m bench.probes perf    [--rate R] [--seconds S]   where the CPU goes, native code included

Both run `replicator replicate` on a fresh database with the benchmark's writer attached.
`threads` reads utime+stime of every thread from /proc and names them with `py-spy dump`.
`fences` starts the replicator through a wrapper that times `DbHandles.fence` (the write lock
the replicator takes, during which the application cannot commit) and logs those held > 5 ms,
with the phase (move_mark, checkpoint_finish, snapshot_now) they belong to. `perf` samples the replicator
with `perf record` (Linux perf, if installed) and prints the shares of the kernel, the Python
interpreter, zstd, xxhash and our C scanner, then the top symbols. None changes replicator/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import procs, workload
from .common import WORK

_FENCE_WRAPPER = r'''
import contextlib, os, sys, threading, time
from replicator import checkpointer, handles, replication
log = open(os.environ["FENCE_LOG"], "a", buffering=1)
orig, local = handles.DbHandles.fence, threading.local()

@contextlib.contextmanager
def fence(self):
    t0 = time.perf_counter()
    with orig(self):
        t1 = time.perf_counter()
        try:
            yield
        finally:
            held = time.perf_counter() - t1
            if held > float(os.environ.get("FENCE_MIN_MS", "5")) / 1000:
                log.write(f"{held * 1000:.1f} {1000 * (t1 - t0):.1f} {getattr(local, 'phase', None) or 'copy'}\n")
handles.DbHandles.fence = fence

def phase(f, name):
    def inner(*a, **k):
        prev, local.phase = getattr(local, "phase", None), name
        try:
            return f(*a, **k)
        finally:
            local.phase = prev
    return inner
checkpointer.finish = phase(checkpointer.finish, "checkpoint_finish")
checkpointer.move_mark = phase(checkpointer.move_mark, "move_mark")
replication.move_mark = checkpointer.move_mark
replication.DbReplicator.snapshot_now = phase(replication.DbReplicator.snapshot_now, "snapshot_now")
from replicator.cli import main
sys.argv[0] = "replicator"
main()
'''


def _per_thread(pid: int) -> dict[int, float]:
    out = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        raw = (t / "stat").read_text()
        f = raw[raw.rindex(")") + 2:].split()
        out[int(t.name)] = (int(f[11]) + int(f[12])) / procs.CLK_TCK
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.probes")
    p.add_argument("probe", choices=["threads", "fences", "perf"])
    p.add_argument("--rate", type=float, default=0, help="writer tx/s (0 = flat out)")
    p.add_argument("--seconds", type=float, default=12)
    a = p.parse_args(argv)
    if a.probe == "perf" and shutil.which("perf") is None:
        sys.exit("the perf probe needs Linux perf (`perf` on PATH)")
    d = WORK / f"probe-{a.probe}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    db = d / "src.db"
    workload.create_db(str(db))
    exe = Path(sys.executable).parent / "replicator"
    if a.probe == "fences":
        (d / "wrapper.py").write_text(_FENCE_WRAPPER)
        os.environ["FENCE_LOG"] = str(d / "fences.log")
        args = [sys.executable, str(d / "wrapper.py"), "replicate", str(db), f"file://{d / 'replica'}"]
    else:
        args = [str(exe), "replicate", str(db), f"file://{d / 'replica'}"]
    tool = procs.spawn(args, d / "tool.log")
    perf = None
    try:
        time.sleep(2)
        if a.probe == "perf":
            perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-p", str(tool.pid), "-o",
                                     str(d / "perf.data")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = _per_thread(tool.pid)
        cpu0 = procs.cpu_seconds(tool.pid)
        w = procs.spawn([sys.executable, "-m", "bench.workload", "writer", str(db), "--rate", str(a.rate),
                         "--duration", str(a.seconds), "--result", str(d / "writer.json")], d / "writer.log")
        w.wait()
        procs._started.remove(w)
        time.sleep(2)
        if perf is not None:
            perf.send_signal(2)
            perf.wait(60)
        after = _per_thread(tool.pid)
        cpu = procs.cpu_seconds(tool.pid) - cpu0
        dump = subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(tool.pid)],
                              capture_output=True, text=True).stdout if a.probe == "threads" else ""
    finally:
        procs.stop(tool, 2, 60)
        procs.cleanup()
    wr = json.loads((d / "writer.json").read_text())
    print(f"writer: {wr['tx_per_s']:.0f} tx/s, {wr['wal_bytes'] / 1e9:.3f} GB WAL, longest commit "
          f"{wr['lat_max_s'] * 1000:.1f} ms; replicator CPU {cpu:.2f} s = {cpu / (wr['wal_bytes'] / 1e9):.1f} s/GB, "
          f"{cpu / wr['tx'] * 1e6:.0f} us/tx")
    if a.probe == "threads":
        names = {int(m.group(1)): f"{m.group(2)} (in {m.group(3)})"
                 for m in re.finditer(r'Thread (\d+) \(\w+\): "([^"]+)"\n\s+(\S+)', dump)}
        for tid in sorted(after, key=lambda t: -(after[t] - before.get(t, 0))):
            print(f"  {after[tid] - before.get(tid, 0):6.2f} s  {names.get(tid, tid)}")
        print(f"  (threads that ended during the run, e.g. checkpoint backfills: "
              f"{cpu - sum(after[t] - before.get(t, 0) for t in after):.2f} s)")
    elif a.probe == "perf":
        for sort, top in (("dso", 8), ("sym", 25)):
            out = subprocess.run(["perf", "report", "-i", str(d / "perf.data"), "--no-children", "--sort", sort,
                                  "--stdio", "-g", "none"], capture_output=True, text=True).stdout
            rows = [line for line in out.splitlines() if line.strip() and not line.startswith("#")]
            print(f"  by {sort}:")
            for line in rows[:top]:
                print("   " + line.strip())
    else:
        log = d / "fences.log"
        rows = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
        rows.sort(key=lambda r: -float(r[0]))
        print(f"  {len(rows)} fences held > {os.environ.get('FENCE_MIN_MS', '5')} ms; longest (held ms, waited ms, phase):")
        for r in rows[:10]:
            print(f"  {r[0]:>8} {r[1]:>8}  {r[2]}")


if __name__ == "__main__":
    main()
