"""Figure 7: days of replication and compaction on S3, simulated on an injected clock.

A real database, a real replicator (in this process, on a clock that advances by the
simulated step) and a real S3 store (SeaweedFS on 127.0.0.1): every step commits a few
transactions and ships them; every `pass_every_h` simulated hours `replicator compact`'s pass
runs (retention 720h, snapshot-history-ratio 1.0, the defaults). Measured: objects and bytes in
the replica as the days go by (they must level off), and restores of the latest state and of
points 1 hour, 1 day and 29 days back (each proven against the source's state then). Only the
replicator: Litestream cannot run on a simulated clock.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import apsw

from .common import Context, say
from .s3 import S3Target, seaweedfs

HOUR_NS = 3600 * 10**9


class _Clock:
    def __init__(self, now_ns: int):
        self.now = now_ns

    def __call__(self) -> int:
        return self.now


def _digest(path: Path) -> str:
    conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        h = hashlib.sha256()
        for row in conn.execute("SELECT id, n, v FROM t ORDER BY id"):
            h.update(repr(row).encode())
        return h.hexdigest()
    finally:
        conn.close()


def run(ctx: Context) -> dict:
    from replicator import layout
    from replicator.compactor import Compactor
    from replicator.config import DbConfig, ReplicaConfig, S3Options
    from replicator.plan import Target
    from replicator.replication import DbReplicator
    from replicator.restore import restore
    from replicator.retention import Policy
    from replicator.storage import open_storage

    s = ctx.s
    days, step_min, tx_per_step, pass_every_h = s.sim_days, s.sim_step_min, s.sim_tx_per_step, s.sim_pass_every_h
    say(f"\n== 7. {days} simulated days on S3 (SeaweedFS): a step every {step_min} min with {tx_per_step} "
        f"transactions, a compaction pass every {pass_every_h} h (retention 720h)")
    d = ctx.run_dir("simulate")
    res: dict = {"days": days, "step_min": step_min, "tx_per_step": tx_per_step, "pass_every_h": pass_every_h,
                 "daily": [], "restores": {}}
    started = time.monotonic()
    with seaweedfs(d / "weed") as server:
        target = S3Target(server, "sim")
        opts = S3Options(bucket=target.bucket, prefix=target.prefix, region=server.region, endpoint=server.endpoint,
                         force_path_style=True, access_key_id=server.access_key, secret_access_key=server.secret_key)
        replica = ReplicaConfig(name="s3", url=f"s3://{target.bucket}/{target.prefix}", type="s3", s3=opts,
                                sync_interval_s=0.0)
        db = d / "sim.db"
        conn = apsw.Connection(str(db))
        conn.set_busy_timeout(5000)
        list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, v BLOB)"))
        end_ns = time.time_ns()
        clock = _Clock(end_ns - days * 24 * HOUR_NS)
        rep = DbReplicator(DbConfig(path=str(db), replicas=(replica,), monitor_interval_s=3600), clock_ns=clock)
        rep.open()
        storage = open_storage(replica)
        comp = Compactor(storage, Policy(retention_s=720 * 3600.0, snapshot_ratio=1.0), clock_ns=clock)
        targets_ns = {"latest": None, "1h": end_ns - HOUR_NS, "1d": end_ns - 24 * HOUR_NS,
                      "29d": end_ns - 29 * 24 * HOUR_NS}
        states: dict[str, str] = {}
        rng = __import__("random").Random(s.seed)
        steps = days * 24 * 60 // step_min
        next_pass = clock.now + pass_every_h * HOUR_NS
        rows = 2000
        try:
            for i in range(steps):
                clock.now += step_min * 60 * 10**9
                for label, t in targets_ns.items():  # the source's state just before a target
                    if t is not None and label not in states and clock.now > t:
                        states[label] = _digest_live(conn)
                with conn:
                    for _ in range(tx_per_step):
                        k = rng.randint(1, rows)
                        conn.execute("INSERT OR REPLACE INTO t(id, n, v) VALUES (?, ?, ?)",
                                     (k, i, os.urandom(rng.randint(200, 2000))))
                rep.step()
                if clock.now >= next_pass:
                    next_pass += pass_every_h * HOUR_NS
                    _drain(rep)
                    comp.run_pass()
                if i % (24 * 60 // step_min) == 0:
                    objs = list(storage.list(layout.GENERATIONS))
                    res["daily"].append({"day": i * step_min // (24 * 60), "objects": len(objs),
                                         "bytes": sum(o.size for o in objs)})
            _drain(rep)
            comp.run_pass()
            states["latest"] = _digest_live(conn)  # (the file alone lags the WAL)
        finally:
            rep.stop()
            rep.join()
        conn.close()
        objs = list(storage.list(layout.GENERATIONS))
        listing = layout.parse_listing(objs)
        res["final"] = {"objects": len(objs), "bytes": sum(o.size for o in objs),
                        "snapshots": sum(len(g.snapshots) for g in listing.generations),
                        "segments": sum(len(g.segments) for g in listing.generations),
                        "db_bytes": db.stat().st_size}
        out = d / "restored.db"
        for label, t in targets_ns.items():
            out.unlink(missing_ok=True)
            t0 = time.perf_counter()
            r = restore(storage, out, Target(time_ns=t) if t is not None else Target())
            secs = time.perf_counter() - t0
            ok = _digest(out) == states.get(label)
            res["restores"][label] = {"s": secs, "segments": r.segments, "ok": ok}
            say(f"  restore {label:>6}: {secs:.2f} s ({r.segments} segments after its snapshot) "
                f"{'ok' if ok else 'MISMATCH'}")
    f = res["final"]
    say(f"  after {days} days: {f['objects']} objects ({f['snapshots']} snapshots, {f['segments']} segments), "
        f"{f['bytes'] / 2**20:.1f} MiB for a {f['db_bytes'] / 2**20:.1f} MiB database; "
        f"{time.monotonic() - started:.0f} s")
    return res


def _digest_live(conn: apsw.Connection) -> str:
    h = hashlib.sha256()
    for row in conn.execute("SELECT id, n, v FROM t ORDER BY id"):
        h.update(repr(row).encode())
    return h.hexdigest()


def _drain(rep) -> None:
    """Everything committed so far on the replica before a pass looks at it."""
    deadline = time.monotonic() + 60
    while rep.shippers[0].shipped_txid < rep.tail.pos.txid and time.monotonic() < deadline:
        time.sleep(0.005)
