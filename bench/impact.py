"""Figures 2 and 3: what attaching a tool costs the writer, and what the tool itself costs.

An attached run: fresh database, the tool started (first snapshot in place), the writer for a
fixed time (flat out or at a rate) while the -wal size is polled every 50 ms; then the tool is
given time to finish what the writer produced (until it is idle), and its CPU (utime+stime
from /proc, children included) and VmHWM are read before it is stopped.
"""

from __future__ import annotations

import time

from . import procs, profile, workload
from .common import Context, mean, rate_label, read_json, remove_data, say, start_tool, wait_idle

WAL_POLL_S = 0.05
SETTLE_S = 1.0  # after the first snapshot, before the writer starts


def attached_run(ctx: Context, tool, rate: float, duration_s: float, seed: int, tag: str,
                 profile_it: bool = False) -> dict:
    d = ctx.run_dir(f"{tag}-{tool.short if tool else 'alone'}-{int(rate)}")
    db = d / "src.db"
    workload.create_db(str(db))
    res: dict = {"tool": tool.name if tool else "alone", "rate": rate, "duration_s": duration_s}
    proc = spy = None
    try:
        if tool is not None:
            proc, res["first_snapshot_s"] = start_tool(tool, db, d / "replica", d / "tool.log")
            time.sleep(SETTLE_S)
            cpu0, ns0 = procs.cpu_seconds(proc.pid), procs.cpu_ns_precise(proc.pid)
            if profile_it:
                spy = profile.start(proc.pid, d / "profile")
        t0 = time.monotonic()
        with procs.FileSizePoller(str(db) + "-wal", WAL_POLL_S) as wal:
            writer = procs.spawn(ctx.writer_args(db, rate, duration_s, d / "writer.json", seed), d / "writer.log")
            writer.wait()
            if tool is not None:
                res["catch_up_s"] = wait_idle(proc.pid)
        w = read_json(d / "writer.json")
        res.update(writer=w, wal_high_bytes=wal.high)
        if tool is not None:
            if spy is not None:
                res["profile"] = profile.finish(spy, d / "profile")
                spy = None
            cpu = procs.cpu_seconds(proc.pid) - cpu0
            res.update(cpu_s=cpu, cpu_s_precise=(procs.cpu_ns_precise(proc.pid) - ns0) / 1e9,
                       wall_s=time.monotonic() - t0, peak_rss_bytes=procs.peak_rss_bytes(proc.pid))
            res["cpu_s_per_gb_wal"] = cpu / (w["wal_bytes"] / 1e9) if w["wal_bytes"] else None
            res["cpu_s_per_mtx"] = cpu / (w["tx"] / 1e6) if w["tx"] else None
            res["stop_rc"] = procs.stop(proc, 2, 120)
            res["replica_objects"] = tool.replica_objects(d / "replica")
        remove_data(d)
        return res
    finally:
        if spy is not None:
            profile.abort(spy)
        if proc is not None and proc.poll() is None:
            procs.stop(proc, 9, 10)


def _fmt(r: dict) -> str:
    w = r["writer"]
    s = (f"{w['tx_per_s']:8.0f} tx/s, longest commit {w['lat_max_s'] * 1000:6.1f} ms "
         f"(p99 {w['lat_p99_s'] * 1000:.2f} ms, {w['stalls_over_50ms']} > 50 ms), "
         f"WAL high-water {r['wal_high_bytes'] / 2**20:6.1f} MiB")
    if "cpu_s" in r:
        s += (f", CPU {r['cpu_s']:.2f} s = {r['cpu_s_per_gb_wal']:.2f} s/GB WAL, "
              f"{r['cpu_s_per_mtx']:.1f} s/Mtx, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB, "
              f"idle again {r['catch_up_s']:.1f} s after the writer, {r['replica_objects']} replica objects")
    return s


def run_impact(ctx: Context) -> dict:
    s = ctx.s
    say(f"\n== 2. Writer impact (writer flat out {s.impact_s:g} s alone and with each tool; "
        f"{s.impact_rounds} round(s), order alternating)")
    runs = []
    for rnd in range(s.impact_rounds):
        order = [None, *ctx.order(rnd)]
        if rnd % 2:
            order = list(reversed(order))
        for tool in order:
            prof = ctx.s.profile and tool is not None and tool.name == "replicator" and rnd == 0
            r = attached_run(ctx, tool, 0, s.impact_s, seed=2000 + rnd, tag="impact", profile_it=prof)
            runs.append(r)
            say(f"  {r['tool']:<10} round {rnd + 1}: {_fmt(r)}")
    summary = {}
    for name in ["alone", *[t.name for t in ctx.tools]]:
        mine = [r for r in runs if r["tool"] == name]
        summary[name] = {
            "tx_per_s": mean([r["writer"]["tx_per_s"] for r in mine]),
            "lat_max_s": max(r["writer"]["lat_max_s"] for r in mine),
            "lat_p99_s": mean([r["writer"]["lat_p99_s"] for r in mine]),
            "stalls_over_50ms": sum(r["writer"]["stalls_over_50ms"] for r in mine),
            "wal_high_bytes": max(r["wal_high_bytes"] for r in mine),
        }
        if name != "alone":
            summary[name].update(
                cpu_s_per_gb_wal=mean([r["cpu_s_per_gb_wal"] for r in mine]),
                cpu_s_per_mtx=mean([r["cpu_s_per_mtx"] for r in mine]),
                peak_rss_bytes=max(r["peak_rss_bytes"] for r in mine),
                catch_up_s=mean([r["catch_up_s"] for r in mine]),
            )
    alone = summary["alone"]["tx_per_s"]
    for t in ctx.tools:
        summary[t.name]["throughput_vs_alone"] = summary[t.name]["tx_per_s"] / alone
        say(f"  -> {t.name}: {summary[t.name]['throughput_vs_alone'] * 100:.1f}% of the writer's "
            f"throughput alone ({alone:.0f} tx/s)")
    return {"runs": runs, "summary": summary}


def run_cpu(ctx: Context) -> dict:
    s = ctx.s
    say(f"\n== 3. CPU and memory (writer at {s.cpu_rate} tx/s for {s.cpu_rate_s:g} s; idle database "
        f"for {s.idle_s:g} s)")
    runs, idle = [], []
    for i, tool in enumerate(ctx.order(0)):
        r = attached_run(ctx, tool, s.cpu_rate, s.cpu_rate_s, seed=3000 + i, tag="cpu",
                         profile_it=s.profile and tool.name == "replicator")
        runs.append(r)
        say(f"  {tool.name:<10} {rate_label(s.cpu_rate)}: {_fmt(r)}")
    for tool in ctx.order(1):
        r = idle_run(ctx, tool)
        idle.append(r)
        say(f"  {tool.name:<10} idle: {r['cpu_s']:.3f} s CPU in {r['idle_s']:.0f} s = {r['cpu_pct']:.3f} % "
            f"(schedstat: {r['cpu_pct_precise']:.3f} %), peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB")
    return {"rate_runs": runs, "idle": idle}


def idle_run(ctx: Context, tool) -> dict:
    """A quiet database: a few writes, a pause to settle, then CPU over idle_s."""
    d = ctx.run_dir(f"idle-{tool.short}")
    db = d / "src.db"
    workload.create_db(str(db))
    proc = None
    try:
        proc, _ = start_tool(tool, db, d / "replica", d / "tool.log")
        w = procs.spawn(ctx.writer_args(db, 200, 1.0), d / "writer.log")
        w.wait()
        procs._started.remove(w)
        time.sleep(3.0)
        wait_idle(proc.pid)
        cpu0, ns0 = procs.cpu_seconds(proc.pid), procs.cpu_ns_precise(proc.pid)
        t0 = time.monotonic()
        time.sleep(ctx.s.idle_s)
        cpu, ns = procs.cpu_seconds(proc.pid) - cpu0, procs.cpu_ns_precise(proc.pid) - ns0
        el = time.monotonic() - t0
        res = {"tool": tool.name, "idle_s": el, "cpu_s": cpu, "cpu_pct": 100 * cpu / el,
               "cpu_pct_precise": 100 * ns / 1e9 / el, "peak_rss_bytes": procs.peak_rss_bytes(proc.pid)}
        procs.stop(proc, 2, 60)
        remove_data(d)
        return res
    finally:
        if proc is not None and proc.poll() is None:
            procs.stop(proc, 9, 10)
