"""Figure 5, point-in-time accuracy: for targets across a replicated history, how far the
restored state lands from the last transaction committed at or before the target.

    error = commit time of the last transaction at or before the target
            - commit time of the last transaction in the restored database
positive: the restore misses transactions committed before the target; negative: it holds
transactions committed after the target.
"""

from __future__ import annotations

import bisect
import time

from . import procs, workload
from .common import Context, median, read_json, remove_data, say, start_tool, wait_idle, worst

SYNC_GRACE_S = 2.0  # after the writer stops, before the tool is stopped: let timers fire


def run(ctx: Context) -> dict:
    s = ctx.s
    say(f"\n== 5. Point-in-time accuracy (writer {s.pitr_rate} tx/s for {s.pitr_s:g} s, "
        f"{s.pitr_targets} --timestamp targets per tool)")
    out: dict = {"runs": {}}
    for tool in ctx.order(0):
        r = one_tool(ctx, tool)
        out["runs"][tool.name] = r
        errs = [abs(t["error_ms"]) for t in r["targets"] if t.get("error_ms") is not None]
        failed = sum(1 for t in r["targets"] if t.get("error_ms") is None)
        after = sum(1 for t in r["targets"] if (t.get("error_ms") or 0) < 0)
        r["summary"] = {"median_abs_ms": median(errs), "worst_abs_ms": worst(errs), "failed": failed,
                        "after_target": after, "n": len(r["targets"])}
        say(f"  -> {tool.name}: |error| median {_ms(median(errs))}, worst {_ms(worst(errs))}; "
            f"{after} restore(s) past the target, {failed} failed")
    return out


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} ms"


def one_tool(ctx: Context, tool) -> dict:
    s = ctx.s
    d = ctx.run_dir(f"pitr-{tool.short}")
    db, replica = d / "src.db", d / "replica"
    workload.create_db(str(db))
    proc = None
    try:
        proc, _ = start_tool(tool, db, replica, d / "tool.log")
        w = procs.spawn(ctx.writer_args(db, s.pitr_rate, s.pitr_s, d / "writer.json", seed=4000), d / "writer.log")
        w.wait()
        procs._started.remove(w)
        read_json(d / "writer.json")
        time.sleep(SYNC_GRACE_S)
        wait_idle(proc.pid)
        procs.stop(proc, 2, 120)
    finally:
        if proc is not None and proc.poll() is None:
            procs.stop(proc, 9, 10)
    times = workload.commit_times(str(db), live=True)
    lo, hi = times[0] + 500_000_000, times[-1] - 200_000_000
    step = (hi - lo) / s.pitr_targets
    targets = []
    for i in range(s.pitr_targets):
        target = int(lo + step * (i + ctx.rng.random()))
        expected = times[bisect.bisect_right(times, target) - 1]
        out = d / f"pitr-{i}.db"
        secs, rc = tool.restore(db, replica, out, timestamp_ns=target, log=d / "restore.log")
        row = {"target_ns": target, "expected_ns": expected, "restore_s": secs}
        if rc == 0:
            got = workload.db_signature(str(out)).get("w_tmax")
            row["restored_ns"] = got
            row["error_ms"] = (expected - (got if got is not None else times[0])) / 1e6
        else:
            row["error"] = f"restore exited {rc}"
        out.unlink(missing_ok=True)
        targets.append(row)
        say(f"  {tool.name:<10} target {i + 1}: " + (f"error {row['error_ms']:+.1f} ms" if "error_ms" in row
                                                     else row["error"]))
    remove_data(d)
    return {"targets": targets, "source_tx": len(times)}
