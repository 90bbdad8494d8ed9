"""Figure 6b, object-store requests per hour: idle and under load, S3 replica on SeaweedFS.

Per tool: fresh database, the tool replicating it to a prefix of the bench bucket (default
settings), first snapshot in place and settled (CPU idle, no request for a few seconds); then
the requests the server counts (weed's own Prometheus counter, read before and after each
window) over an idle window with no writes, and over a window with the writer at a fixed
rate. Nothing else talks to the server during a window: the bench lists the bucket only
before and after.
"""

from __future__ import annotations

import time

from . import procs, workload
from .common import Context, rate_label, read_json, remove_data, run_base, say, start_tool, wait_idle
from .s3 import S3Target, seaweedfs, weed_binary

QUIET_S = 3.0  # no request for this long counts as settled ...
QUIET_TIMEOUT_S = 30.0  # ... unless the tool never goes quiet (then the idle window shows it)
TYPES = ("PUT", "POST", "COPY", "GET", "LIST", "DELETE")  # weed's labels; HEAD is counted as GET
PHASES = ("idle", "load")


def run(ctx: Context) -> dict:
    s = ctx.s
    if not weed_binary().exists():
        say(f"\n== 6b. Object-store requests skipped: no SeaweedFS binary at {weed_binary()}")
        return {"skipped": f"no SeaweedFS binary at {weed_binary()}"}
    say(f"\n== 6b. Object-store requests (S3 replica on SeaweedFS; idle {s.requests_idle_s:g} s, then "
        f"writer at {rate_label(s.requests_rate)} for {s.requests_load_s:g} s; {s.requests_rounds} round(s))")
    runs = []
    with seaweedfs(run_base() / "seaweedfs-requests", metrics=True) as server:
        for rnd in range(s.requests_rounds):
            for tool in ctx.order(rnd):
                r = one_run(ctx, server, tool, rnd)
                runs.append(r)
                if r.get("error"):
                    say(f"  {tool.name:<10} round {rnd + 1}: FAILED {r['error']}")
                    continue
                for ph in PHASES:
                    w = r[ph]
                    say(f"  {tool.name:<10} {ph:<4} {w['seconds']:5.0f} s: {_fmt(w['requests'])} "
                        f"= {sum(w['requests'].values()) / w['seconds'] * 3600:.0f} requests/h")
    summary = {t.name: summarise([r for r in runs if r["tool"] == t.name and not r.get("error")])
               for t in ctx.tools}
    for name, sm in summary.items():
        if sm:
            say(f"  -> {name}: idle {sm['idle']['total_per_hour']:.0f} requests/h, "
                f"{rate_label(s.requests_rate)} {sm['load']['total_per_hour']:.0f} requests/h")
    return {"runs": runs, "summary": summary}


def one_run(ctx: Context, server, tool, rnd: int) -> dict:
    s = ctx.s
    d = ctx.run_dir(f"requests-{tool.short}")
    db = d / "src.db"
    replica = S3Target(server, f"requests-{tool.short}-{rnd}")
    workload.create_db(str(db))
    res: dict = {"tool": tool.name, "round": rnd}
    proc = writer = None
    try:
        proc, res["first_snapshot_s"] = start_tool(tool, db, replica, d / "tool.log")
        res["settle_s"], res["settled_quiet"] = settle(server, proc.pid)
        c0, t0 = server.s3_requests(), time.monotonic()
        time.sleep(s.requests_idle_s)
        c1, t1 = server.s3_requests(), time.monotonic()
        res["idle"] = {"seconds": t1 - t0, "requests": delta(c0, c1)}
        writer = procs.spawn(ctx.writer_args(db, s.requests_rate, s.requests_load_s, d / "writer.json",
                                             seed=6000 + rnd), d / "writer.log")
        writer.wait()
        c2, t2 = server.s3_requests(), time.monotonic()
        procs.stop(writer)
        w = read_json(d / "writer.json")
        res["load"] = {"seconds": t2 - t1, "requests": delta(c1, c2), "writer_tx_per_s": w["tx_per_s"],
                       "wal_bytes": w["wal_bytes"]}
        if proc.poll() is not None:
            res["error"] = f"{tool.name} exited early ({proc.returncode}); see {d / 'tool.log'}"
            return res
        res["stop_rc"] = procs.stop(proc, 2, 60)
        res["replica_objects"] = len(replica.keys())
        remove_data(d)
        return res
    except Exception as err:  # noqa: BLE001 - one failed run is reported, the suite goes on
        res["error"] = f"{type(err).__name__}: {err}"
        return res
    finally:
        procs.end_run(d, [writer, proc])


def settle(server, pid: int) -> tuple[float, bool]:
    """Wait until the tool's CPU is idle and the store saw no request for QUIET_S, so what follows
    the first snapshot (manifests, leases, a first segment) is not charged to the idle window."""
    start = time.monotonic()
    wait_idle(pid)
    last, since = server.s3_requests(), time.monotonic()
    while time.monotonic() - since < QUIET_S:
        if time.monotonic() - start > QUIET_TIMEOUT_S:
            return time.monotonic() - start, False
        time.sleep(0.25)
        cur = server.s3_requests()
        if cur != last:
            last, since = cur, time.monotonic()
    return time.monotonic() - start, True


def delta(before: dict, after: dict) -> dict[str, int]:
    """Requests between two readings, {"TYPE STATUS": count} (JSON keys; the bucket is dropped:
    only the tool under test talks to the server in a window)."""
    out: dict[str, int] = {}
    for key, n in after.items():
        if n != before.get(key, 0):
            k = f"{key[1]} {key[2]}"
            out[k] = out.get(k, 0) + n - before.get(key, 0)
    return dict(sorted(out.items()))


def by_type(requests: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, n in requests.items():
        typ = k.split()[0]
        out[typ] = out.get(typ, 0) + n
    return out


def errors(requests: dict[str, int]) -> int:
    return sum(n for k, n in requests.items() if int(k.split()[1]) >= 400)


def order_types(types) -> list[str]:
    return [t for t in TYPES if t in types] + sorted(t for t in types if t not in TYPES)


def summarise(runs: list[dict]) -> dict:
    """Per phase: requests per hour by type, in total and of them errors (all rounds pooled)."""
    if not runs:
        return {}
    out = {}
    for ph in PHASES:
        secs = sum(r[ph]["seconds"] for r in runs)
        pooled: dict[str, int] = {}
        for r in runs:
            for k, n in r[ph]["requests"].items():
                pooled[k] = pooled.get(k, 0) + n
        types = by_type(pooled)
        out[ph] = {"seconds": secs, "per_hour": {t: n / secs * 3600 for t, n in types.items()},
                   "total_per_hour": sum(types.values()) / secs * 3600,
                   "errors_per_hour": errors(pooled) / secs * 3600}
    return out


def _fmt(requests: dict[str, int]) -> str:
    types = by_type(requests)
    return ", ".join(f"{t} {types[t]}" for t in order_types(types)) or "no requests"
