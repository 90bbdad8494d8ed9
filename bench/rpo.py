"""Figure 1, RPO: how many seconds of committed writes a crash loses.

Per run: fresh database, the tool replicating it (first snapshot in place), the writer at a
rate for a random few seconds, then one SIGKILL to the process group holding both (they die in
the same instant), a restore of the latest state, and
    RPO = last commit time in the source - last commit time in the restored database.
"""

from __future__ import annotations

import time

from . import procs, workload
from .common import Context, median, rate_label, remove_data, run_base, say, start_tool, worst
from .s3 import S3Target, seaweedfs, weed_binary


def run(ctx: Context) -> dict:
    s = ctx.s
    out: dict = {"runs": [], "summary": {}}
    say(f"\n== 1. RPO (file replica; {s.rpo_runs} runs per rate and tool; writer runs "
        f"{s.rpo_write_s[0]:g}-{s.rpo_write_s[1]:g} s, then SIGKILL of writer and tool together)")
    _rates(ctx, s.rpo_rates, out["runs"], out["summary"], lambda d, tool, rate, i: d / "replica")
    if not s.rpo_s3_rates:
        return out
    if not weed_binary().exists():
        say(f"  (S3 rows skipped: no SeaweedFS binary at {weed_binary()})")
        return out
    say("\n== 1b. RPO (S3 replica: SeaweedFS on 127.0.0.1, default settings of both tools)")
    out["s3_runs"], out["s3_summary"] = [], {}
    with seaweedfs(run_base() / "seaweedfs") as server:
        _rates(ctx, s.rpo_s3_rates, out["s3_runs"], out["s3_summary"],
               lambda d, tool, rate, i: S3Target(server, f"rpo-{tool.short}-{int(rate)}-{i}"))
    return out


def _rates(ctx: Context, rates, runs: list, summary: dict, replica_for) -> None:
    s = ctx.s
    for rate in rates:
        for i in range(s.rpo_runs):
            hold_s = ctx.rng.uniform(*s.rpo_write_s)
            for tool in ctx.order(i):
                r = one_run(ctx, tool, rate, hold_s, seed=1000 + i,
                            replica_for=lambda d, tool=tool, i=i: replica_for(d, tool, rate, i))
                runs.append(r)
                if r.get("error"):
                    say(f"  {rate_label(rate):>9} {tool.name:<10} run {i + 1}: FAILED {r['error']}")
                else:
                    say(f"  {rate_label(rate):>9} {tool.name:<10} run {i + 1}: RPO {r['rpo_s']:.3f} s "
                        f"({r['missing_tx']} of {r['source_tx']} tx missing, writer {r['writer_tx_per_s']:.0f} tx/s, "
                        f"restore {r['restore_s']:.2f} s)")
        for tool in ctx.tools:
            vals = [r["rpo_s"] for r in runs if r["tool"] == tool.name and r["rate"] == rate]
            ok = [v for v in vals if v is not None]
            summary[f"{tool.name}|{rate}"] = {"median_s": median(ok), "worst_s": worst(ok),
                                              "runs": len(vals), "failed": len(vals) - len(ok)}
            if ok:
                say(f"  -> {tool.name} {rate_label(rate)}: median {median(ok):.3f} s, worst {worst(ok):.3f} s")


def one_run(ctx: Context, tool, rate: float, hold_s: float, seed: int, replica_for=None) -> dict:
    d = ctx.run_dir(f"rpo-{tool.short}-{int(rate)}")
    db, out = d / "src.db", d / "restored.db"
    replica = replica_for(d) if replica_for else d / "replica"
    workload.create_db(str(db))
    res: dict = {"tool": tool.name, "rate": rate, "hold_s": hold_s, "rpo_s": None}
    proc = writer = None
    try:
        proc, _ = start_tool(tool, db, replica, d / "tool.log")
        writer_start_ns = time.time_ns()
        writer = procs.spawn(ctx.writer_args(db, rate, seed=seed), d / "writer.log", process_group=proc.pid)
        time.sleep(hold_s)
        alive = writer.poll() is None and proc.poll() is None
        procs.kill_group(proc.pid, [proc, writer])
        if not alive:
            res["error"] = f"a process exited early (tool {proc.returncode}, writer {writer.returncode})"
            return res
        times = workload.commit_times(str(db), live=True)
        span_s = (times[-1] - times[0]) / 1e9 if len(times) > 1 else 0
        res.update(source_tx=len(times), writer_tx_per_s=(len(times) - 1) / span_s if span_s else 0.0)
        secs, rc = tool.restore(db, replica, out, log=d / "restore.log")
        res["restore_s"] = secs
        if rc != 0:
            res["error"] = f"restore exited {rc} (see {d / 'restore.log'})"
            return res
        sig = workload.db_signature(str(out))
        restored_last = sig.get("w_tmax")
        src_last = times[-1] if times else writer_start_ns
        res["rpo_s"] = (src_last - (restored_last or writer_start_ns)) / 1e9
        res["missing_tx"] = len(times) - sig.get("w_rows", 0)
        remove_data(d)
        return res
    except Exception as err:  # noqa: BLE001 - one failed run is reported, the suite goes on
        res["error"] = f"{type(err).__name__}: {err}"
        return res
    finally:
        procs.end_run(d, [writer, proc], s3_configs=isinstance(replica, S3Target))
