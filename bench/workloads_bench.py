"""Issue 14's table: a busy database for 30 s, then a cold restore of the latest state, both
tools side by side (replicator after its compactor's passes, as it runs in production).

Rows: 5000 tx/s to a file replica, 5000 tx/s to S3 (SeaweedFS on 127.0.0.1), flat out to a
file replica. Each restore is checked against the source (workload.db_signature).
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

from . import procs, workload
from .common import Context, read_json, say, start_tool, wait_idle
from .restore_bench import _evict
from .s3 import S3Target, seaweedfs, weed_binary

MAX_PASSES = 6
# Cold restores per row and tool (the median is reported): one restore of a 30 MB database
# takes about a second, of which the run-to-run noise here is 0.1-0.2 s.
RESTORE_REPEATS = 5


def _objects(tool, replica) -> int:
    return len(replica.keys()) if isinstance(replica, S3Target) else tool.replica_objects(replica)


def _compact(tool, db: Path, replica, d: Path) -> dict:
    cfg = d / "compact.yml"
    if isinstance(replica, S3Target):
        cfg.write_text(f"dbs:\n  - path: {db}\n    replicas:\n{replica.replica_yaml()}")
    else:
        cfg.write_text(f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{replica}\n")
    secs, passes = 0.0, 0
    while passes < MAX_PASSES:
        t0 = time.perf_counter()
        done = subprocess.run([tool.exe, "compact", "--once", "-c", str(cfg)], capture_output=True, text=True)
        secs += time.perf_counter() - t0
        passes += 1
        line = next((ln for ln in done.stderr.splitlines() if "objects before" in ln), "")
        if done.returncode != 0 or " built 0 " in line or not line:
            break
    return {"passes": passes, "compact_s": secs}


def one(ctx: Context, tool, rate: float, seconds: float, replica, d: Path, evict_paths: list[Path]) -> dict:
    db, out = d / "src.db", d / "restored.db"
    workload.create_db(str(db))
    res: dict = {"tool": tool.name, "rate": rate}
    proc = None
    try:
        proc, _ = start_tool(tool, db, replica, d / "tool.log")
        w = procs.spawn(ctx.writer_args(db, rate, seconds, d / "writer.json", seed=7), d / "writer.log")
        rc = w.wait()
        procs._started.remove(w)
        if rc != 0:
            raise RuntimeError(f"writer exited {rc}")
        wait_idle(proc.pid)
        want = workload.db_signature(str(db), live=True)
        procs.stop(proc, 2, 300)
        wr = read_json(d / "writer.json")
        res.update(db_bytes=db.stat().st_size, wal_bytes=wr["wal_bytes"], tx=wr["tx"],
                   objects=_objects(tool, replica))
        if tool.name == "replicator":
            res.update(_compact(tool, db, replica, d))
            res["objects_compacted"] = _objects(tool, replica)
        times, ok = [], True
        for _ in range(RESTORE_REPEATS):
            out.unlink(missing_ok=True)
            _evict(evict_paths)
            secs, rc = tool.restore(db, replica, out, log=d / "restore.log")
            times.append(secs)
            ok = ok and rc == 0 and workload.db_signature(str(out)) == want
        res["restore_s"] = statistics.median(times)
        res["restore_runs_s"] = times
        res["ok"] = ok
        return res
    except Exception as err:  # noqa: BLE001 - reported, the section goes on
        res["error"] = f"{type(err).__name__}: {err}"
        return res
    finally:
        if proc is not None and proc.poll() is None:
            procs.stop(proc, 9, 10)


def run(ctx: Context) -> dict:
    seconds = ctx.s.workloads_s
    say(f"\n== 8. Issue 14's workloads: {seconds:g} s of writes, then a cold restore of the latest state "
        "(replicator after `compact --once` passes until nothing is left to build)")
    rows: list[dict] = []

    def case(label: str, rate: float, replica_for, evict_for) -> None:
        for tool in ctx.order(len(rows)):
            d = ctx.run_dir(f"wl-{''.join(c if c.isalnum() else '-' for c in label)}-{tool.short}")
            replica = replica_for(d, tool)
            r = one(ctx, tool, rate, seconds, replica, d, evict_for(d))
            r["case"] = label
            rows.append(r)
            if "error" in r:
                say(f"  {label:<22} {tool.name:<10} FAILED: {r['error']}")
                continue
            extra = (f", {r['objects_compacted']} after {r['passes']} pass(es) in {r['compact_s']:.1f} s"
                     if "passes" in r else "")
            say(f"  {label:<22} {tool.name:<10} db {r['db_bytes'] / 1e6:.0f} MB, WAL {r['wal_bytes'] / 1e6:.0f} MB; "
                f"{r['objects']} objects{extra}; restore cold {r['restore_s']:.2f} s, median of "
                f"{' '.join(f'{x:.2f}' for x in r['restore_runs_s'])} ({'ok' if r['ok'] else 'MISMATCH'})")

    case("file, 5000 tx/s", 5000, lambda d, t: d / "replica", lambda d: [d / "replica"])
    case("file, flat out", 0, lambda d, t: d / "replica", lambda d: [d / "replica"])
    if weed_binary().exists():
        from .common import run_base

        with seaweedfs(run_base() / "seaweedfs-wl") as server:
            case("S3 (SeaweedFS), 5000 tx/s", 5000, lambda d, t: S3Target(server, f"wl-{t.short}-{len(rows)}"),
                 lambda d: [run_base() / "seaweedfs-wl"])
    return {"rows": rows, "seconds": seconds}
