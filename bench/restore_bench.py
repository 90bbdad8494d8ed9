"""Figures 4 and 6: restore time (cold and warm, against cp and sqlite3 .backup), how it grows
with history, the time to the first snapshot of a large database, and replica size / db size.

One database of --restore-size-mb (pages ~3/4 random bytes) is built once and copied for each
tool. Each tool replicates its copy; then history is added in steps (random row updates, the
same transactions for both tools) until the WAL written since the snapshot reaches each
factor x db size. After each step the tool is stopped gracefully (it ships everything), and
the replica is restored cold (replica files evicted from the page cache) and warm, and
checked against the source.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from . import procs, profile, workload
from .common import Context, read_json, say, start_tool, wait_idle
from .tools import Tool

SQLITE3 = shutil.which("sqlite3")


IN_WINDOW_POINTS = 3
MAX_PASSES = 6


def _evict(paths: list[Path]) -> str:
    if procs.drop_caches_global():
        return "drop_caches"
    files = []
    for p in paths:
        if p.is_dir():
            files.extend(x for x in p.rglob("*") if x.is_file())
        elif p.exists():
            files.append(p)
    procs.drop_file_cache(files)
    return "fadvise"


def _timed(args: list[str], out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - start


def floors(ctx: Context, src: Path, d: Path) -> dict:
    out = d / "floor.db"
    res = {}
    cmds = {"cp": ["cp", str(src), str(out)]}
    if SQLITE3:
        cmds["sqlite3 .backup"] = [SQLITE3, str(src), f".backup '{out}'"]
    else:
        ctx.note("sqlite3 CLI not found: no .backup floor")
    for name, args in cmds.items():
        times = {}
        for kind in ("cold", "warm"):
            out.unlink(missing_ok=True)
            if kind == "cold":
                res["evict"] = _evict([src])
            times[kind] = _timed(args, out)
        out.unlink(missing_ok=True)
        res[name] = times
        say(f"  floor {name:<16} cold {times['cold']:.2f} s, warm {times['warm']:.2f} s")
    return res


def restore_pair(ctx: Context, tool: Tool, src: Path, replica: Path, d: Path, label: str, want: dict,
                 profile_it: bool = False) -> dict:
    """Cold then warm restore of the latest state, each checked against the source's signature
    `want` (taken while the tool still ran: opening and closing the source after the tool stopped
    would make ours the last connection, whose close checkpoints and deletes the WAL, and the
    next start of a tool could then not continue its history)."""
    out = d / f"restored-{tool.short}.db"
    res: dict = {}
    for kind in ("cold", "warm"):
        out.unlink(missing_ok=True)
        if kind == "cold":
            res["evict"] = _evict([replica])
        secs, rc = tool.restore(src, replica, out, log=d / f"restore-{tool.short}.log")
        got = workload.db_signature(str(out)) if rc == 0 else None
        res[kind] = secs
        res[f"{kind}_ok"] = rc == 0 and got == want
        if rc == 0 and got != want:
            res[f"{kind}_mismatch"] = {"want": want, "got": got}
    if profile_it:
        res["profile"] = _profile_restore(tool, src, replica, out, d)
    out.unlink(missing_ok=True)
    res["replica_bytes"] = tool.replica_bytes(replica)
    res["replica_objects"] = tool.replica_objects(replica)
    res["replica_snapshots"] = tool.replica_snapshots(replica)
    ok = "ok" if res["cold_ok"] and res["warm_ok"] else "MISMATCH/FAILED"
    say(f"  {tool.name:<10} {label}: restore cold {res['cold']:.2f} s, warm {res['warm']:.2f} s ({ok}); "
        f"replica {res['replica_bytes'] / 2**20:.0f} MiB, {res['replica_snapshots']} snapshot(s)")
    return res


def _profile_restore(tool: Tool, src: Path, replica: Path, out: Path, d: Path) -> dict | None:
    exe = profile._py_spy()
    if exe is None or tool.name != "replicator":
        return None
    out.unlink(missing_ok=True)
    raw = d / "profile-restore.txt"
    args = [exe, "record", "--rate", str(profile.RATE_HZ), "--format", "raw", "-o", str(raw), "--",
            *tool.restore_args(src, replica, out, None)]
    subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not raw.exists():
        return None
    summary = profile.summarize(raw.read_text())
    from .common import run_base

    keep = run_base() / "profiles"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(raw, keep / "restore.txt")
    summary["file"] = str(keep / "restore.txt")
    return summary


def run(ctx: Context) -> dict:
    s = ctx.s
    size = s.restore_size_mb << 20
    say(f"\n== 4/6. Restore, first snapshot and replica size ({s.restore_size_mb} MiB database, history "
        f"{', '.join(f'{f:g}x' for f in s.history_factors)} of its size in WAL)")
    d = ctx.run_dir("restore")
    base = d / "base.db"
    t = time.perf_counter()
    workload.build_db(str(base), size, seed=s.seed)
    db_bytes = base.stat().st_size
    res: dict = {"db_bytes": db_bytes, "build_s": time.perf_counter() - t, "tools": {}, "points": []}
    say(f"  built {db_bytes / 2**20:.0f} MiB in {res['build_s']:.1f} s")
    res["floors"] = floors(ctx, base, d)
    srcs, reps = {}, {}
    for tool in ctx.tools:
        srcs[tool.name] = d / f"src-{tool.short}.db"
        reps[tool.name] = d / f"replica-{tool.short}"
        shutil.copyfile(base, srcs[tool.name])
    base.unlink()

    # Start: time to the first snapshot, replica size once settled.
    wants: dict[str, dict] = {}
    for tool in ctx.order(0):
        proc = None
        spies: list = []
        prof = None
        try:
            hook = None
            if s.profile and tool.name == "replicator":
                def hook(p):
                    spies.append(profile.start(p.pid, d / "profile-snapshot"))
            proc, first = start_tool(tool, srcs[tool.name], reps[tool.name], d / f"tool-{tool.short}.log",
                                     on_start=hook)
            if spies:
                prof = profile.finish(spies.pop(), d / "profile-snapshot")
            at_first = tool.replica_bytes(reps[tool.name])
            wait_idle(proc.pid)
            rss = procs.peak_rss_bytes(proc.pid)
            wants[tool.name] = workload.db_signature(str(srcs[tool.name]), live=True)
            rc = procs.stop(proc, 2, 300)
        finally:
            for spy in spies:
                profile.abort(spy)
            if proc is not None and proc.poll() is None:
                procs.stop(proc, 9, 10)
        settled = tool.replica_bytes(reps[tool.name])
        res["tools"][tool.name] = {"first_snapshot_s": first, "replica_bytes_at_first": at_first,
                                   "replica_bytes_after_start": settled, "snapshot_peak_rss_bytes": rss,
                                   "stop_rc": rc, "profile": prof}
        say(f"  {tool.name:<10} first snapshot after {first:.2f} s; replica/db after start "
            f"{settled / db_bytes:.2f}x (at first object {at_first / db_bytes:.2f}x); peak RSS "
            f"{rss / 2**20:.0f} MiB")

    point = {"factor": 0.0, "wal_bytes": 0, "tools": {}}
    for tool in ctx.order(1):
        point["tools"][tool.name] = restore_pair(ctx, tool, srcs[tool.name], reps[tool.name], d, "history 0x",
                                                 wants[tool.name])
    res["points"].append(point)

    done, v = 0.0, 0
    for k, factor in enumerate(s.history_factors):
        n_tx = workload.history_tx_for(int((factor - done) * db_bytes))
        point = {"factor": factor, "tools": {}, "ingest": {}}
        last_v = v
        for tool in ctx.order(k):
            ing = _add_history(ctx, tool, srcs[tool.name], reps[tool.name], d, n_tx, seed=5000 + k, first_v=v,
                               profile_it=s.profile and tool.name == "replicator" and k == len(s.history_factors) - 1)
            point["ingest"][tool.name] = ing
            wants[tool.name] = ing.pop("want")
            last_v = ing["last_v"]
            say(f"  {tool.name:<10} +{ing['wal_bytes'] / 2**20:.0f} MiB WAL ({n_tx} tx) in {ing['writer_s']:.1f} s, "
                f"caught up {ing['catch_up_s']:.1f} s later; CPU {ing['cpu_s']:.1f} s = "
                f"{ing['cpu_s_per_gb_wal']:.2f} s/GB WAL; peak RSS {ing['peak_rss_bytes'] / 2**20:.0f} MiB")
        v = last_v
        done = factor
        point["wal_bytes"] = int(factor * db_bytes)
        last = k == len(s.history_factors) - 1
        for tool in ctx.order(k + 1):
            point["tools"][tool.name] = restore_pair(ctx, tool, srcs[tool.name], reps[tool.name], d,
                                                     f"history {factor:g}x", wants[tool.name],
                                                     profile_it=s.profile and last)
            if tool.name == "replicator":
                point["compacted"] = _compacted_restore(ctx, tool, srcs[tool.name], reps[tool.name], d,
                                                        f"history {factor:g}x, compacted", wants[tool.name])
        res["points"].append(point)
    for tool in ctx.tools:
        final = res["points"][-1]["tools"][tool.name]
        res["tools"][tool.name]["replica_bytes_after_updates"] = final["replica_bytes"]
        res["tools"][tool.name]["replica_objects_after_updates"] = final["replica_objects"]
    shutil.rmtree(d / "replica-L", ignore_errors=True)
    shutil.rmtree(d / "replica-R", ignore_errors=True)
    for p in d.glob("*.db*"):
        if p.is_file():
            p.unlink()
    for p in d.glob(".*litestream"):
        shutil.rmtree(p, ignore_errors=True)
    for p in d.glob("*-replicator"):
        shutil.rmtree(p, ignore_errors=True)
    return res


def _compacted_restore(ctx: Context, tool: Tool, src: Path, replica: Path, d: Path, label: str,
                       want: dict) -> dict:
    """The same restore after one `replicator compact --once` pass over a copy of the replica
    (hard links: objects are immutable, and the compactor only adds and unlinks), so that the
    history steps that follow still measure the uncompacted replica."""
    copy = d / "replica-C"
    shutil.rmtree(copy, ignore_errors=True)
    subprocess.run(["cp", "-al", str(replica), str(copy)], check=True)
    cfg = d / "compact.yml"
    cfg.write_text(f"dbs:\n  - path: {src}\n    replicas:\n      - url: file://{copy}\n")
    # One pass, then (for the in-window points) more until a pass has nothing left to build:
    # the first pass over a backlog leaps to the newest point and leaves the middle of the
    # chain to the next passes (hourly in production; here back to back).
    secs, summary, passes, first_s, res_first = 0.0, "", 0, None, None
    while passes < MAX_PASSES:
        t0 = time.perf_counter()
        done = subprocess.run([tool.exe, "compact", "--once", "-c", str(cfg)], capture_output=True, text=True)
        secs += time.perf_counter() - t0
        passes += 1
        if done.returncode != 0:
            say(f"  compact failed: {done.stderr.strip()[-300:]}")
            break
        line = next((ln for ln in done.stderr.splitlines() if "objects before" in ln), "")
        summary = summary or line.split(": ", 1)[-1]
        if first_s is None:
            first_s = secs
            res_first = restore_pair(ctx, tool, src, copy, d, label, want)
        if " built 0 " in line or "built" not in line:
            break
    res = res_first if res_first is not None else restore_pair(ctx, tool, src, copy, d, label, want)
    res["compact_s"], res["compact_summary"] = first_s or secs, summary
    res["passes"], res["passes_s"] = passes, secs
    if passes > 1:
        res["converged"] = restore_pair(ctx, tool, src, copy, d, f"{label}, after {passes} passes", want)
    res["points"] = _in_window_points(tool, src, copy, d, res.get("converged", res)["cold"])
    shutil.rmtree(copy, ignore_errors=True)
    return res


def _in_window_points(tool: Tool, src: Path, replica: Path, d: Path, latest_cold_s: float) -> list[dict]:
    """Cold restores to the worst points of the window: a millisecond before each of the
    newest generation's snapshots (up to IN_WINDOW_POINTS, the longest replays first), which
    replay everything from the snapshot before. Each is verified by the restore itself
    (the database checksum the segments record for its txid, and integrity_check)."""
    from replicator import layout
    from replicator.storage import open_storage

    listing = layout.parse_listing(open_storage(f"file://{replica}").list(layout.GENERATIONS))
    if not listing.generations:
        return []
    gen = listing.generations[-1]
    snaps = sorted(gen.snapshots, key=lambda x: x.txid)
    gaps = []
    for prev, nxt in zip(snaps, snaps[1:]):
        replay = sum(sg.size for sg in gen.segments if prev.txid < sg.first_txid <= nxt.txid)
        if nxt.time_ms - 1 > prev.time_ms:
            gaps.append((replay, nxt.time_ms - 1))
    out, points = d / f"restored-{tool.short}-pit.db", []
    for replay, ms in sorted(gaps, reverse=True)[:IN_WINDOW_POINTS]:
        out.unlink(missing_ok=True)
        _evict([replica])
        secs, rc = tool.restore(src, replica, out, timestamp_ns=ms * 1_000_000, log=d / f"restore-{tool.short}.log")
        points.append({"time_ms": ms, "replay_bytes": replay, "cold": secs, "ok": rc == 0,
                       "vs_latest": secs / latest_cold_s if latest_cold_s else None})
        say(f"    in-window point {ms} (replays {replay / 2**20:.0f} MiB): cold {secs:.2f} s "
            f"= {points[-1]['vs_latest']:.2f}x the latest ({'ok' if rc == 0 else 'FAILED'})")
    out.unlink(missing_ok=True)
    return points


def _add_history(ctx: Context, tool: Tool, src: Path, replica: Path, d: Path, n_tx: int, seed: int,
                 first_v: int, profile_it: bool) -> dict:
    proc = spy = None
    result = d / f"history-{tool.short}.json"
    result.unlink(missing_ok=True)  # a writer that fails must not leave the last step's figures
    try:
        proc, _ = start_tool(tool, src, replica, d / f"tool-{tool.short}.log")
        time.sleep(1.0)
        cpu0 = procs.cpu_seconds(proc.pid)
        if profile_it:
            spy = profile.start(proc.pid, d / "profile-history")
        t0 = time.monotonic()
        w = procs.spawn([ctx.py, "-m", "bench.workload", "history", str(src), "--tx", str(n_tx), "--seed", str(seed),
                         "--first-v", str(first_v), "--result", str(result)], d / f"history-{tool.short}.log")
        rc = w.wait()
        procs._started.remove(w)
        if rc != 0:
            tail = (d / f"history-{tool.short}.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"the history writer beside {tool.name} failed (exit {rc}): {tail}")
        writer_s = time.monotonic() - t0
        catch_up = wait_idle(proc.pid, window_s=2.0)
        prof = profile.finish(spy, d / "profile-history") if spy is not None else None
        spy = None
        cpu = procs.cpu_seconds(proc.pid) - cpu0
        rss = procs.peak_rss_bytes(proc.pid)
        want = workload.db_signature(str(src), live=True)  # while the tool holds its connections
        procs.stop(proc, 2, 600)
        h = read_json(result)
        return {"writer_s": writer_s, "catch_up_s": catch_up, "cpu_s": cpu, "wal_bytes": h["wal_bytes"],
                "cpu_s_per_gb_wal": cpu / (h["wal_bytes"] / 1e9), "peak_rss_bytes": rss, "last_v": h["last_v"],
                "tx": h["tx"], "profile": prof, "want": want}
    finally:
        if spy is not None:
            profile.abort(spy)
        if proc is not None and proc.poll() is None:
            procs.stop(proc, 9, 10)
