"""compactor.py on real replicas with known histories: days of history are made in seconds
with an injected clock (a real database, a real replicator), then passes run at chosen
times and the restore oracle checks every point: each in-window txid restores to the
source's state at that txid, what retention removed is refused naming what is left."""

from __future__ import annotations

import dataclasses
import os

import apsw
import pytest

from replicator import layout
from replicator.compactor import Compactor, describe_plan
from replicator.config import DbConfig, ReplicaConfig
from replicator.demo import content_hash
from replicator.errors import RestoreError
from replicator.plan import Target, plan_restore
from replicator.replication import DbReplicator
from replicator.restore import restore
from replicator.retention import Policy
from replicator.storage import open_storage

from integration.harness import wait_for

HOUR = 3600 * 10**9
START_NS = 1_790_000_000 * 10**9  # a fixed day in 2026: names, windows and times are exact


@dataclasses.dataclass
class History:
    replica: ReplicaConfig
    states: dict[int, str]  # txid -> content hash of the source after it
    times: dict[int, int]  # txid -> the time the replicator stamped it with (ns)
    end_ns: int


class FakeClock:
    def __init__(self, start_ns: int):
        self.now = start_ns

    def __call__(self) -> int:
        return self.now


def _make_history(tmp_path, replica: ReplicaConfig, hours: int = 72, per_hour: int = 3,
                  start_ns: int = START_NS, row_bytes: int = 0) -> History:
    """`hours` of simulated history: a few commits an hour, every commit its own step, a
    daily snapshot (the default interval), and one restart in the middle."""
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(2000)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
    clock = FakeClock(start_ns)
    cfg = DbConfig(path=str(db), replicas=(replica,), monitor_interval_s=0.05)
    states: dict[int, str] = {}
    times: dict[int, int] = {}
    rep = DbReplicator(cfg, clock_ns=clock)
    rep.open()
    states[rep.tail.pos.txid] = content_hash(db)
    for hour in range(hours):
        if hour == hours // 2:  # a restart: the generation resumes
            rep.stop()
            assert rep.join()
            rep = DbReplicator(cfg, clock_ns=clock)
            rep.open()
        for i in range(per_hour):
            clock.now += HOUR // per_hour
            row = os.urandom(row_bytes) if row_bytes else f"hour {hour} row {i} ".encode() * 40
            conn.execute("INSERT INTO t(v) VALUES (?)", (row,))
            rep.step()
            states[rep.tail.pos.txid] = content_hash(db)
            times[rep.tail.pos.txid] = rep.tail._last_time_ns
            # Shipped before the next commit: a segment per commit, as a replica that keeps
            # up sees them (uploads per sync interval), not one upload for many simulated hours.
            wait_for(lambda: rep.shippers[0].shipped_txid >= rep.tail.pos.txid, 30, "the upload", interval=0.002)
    rep.stop()
    assert rep.join()
    conn.close()
    return History(replica, states, times, clock.now)


@pytest.fixture(params=["file", "s3"])
def replica(request, tmp_path) -> ReplicaConfig:
    if request.param == "file":
        path = tmp_path / "replica"
        return ReplicaConfig(name="file", url=f"file://{path}", type="file", path=str(path))
    server = request.getfixturevalue("moto_server")
    opts = request.getfixturevalue("make_bucket")(server)
    return ReplicaConfig(name="s3", url=f"s3://{opts.bucket}/{opts.prefix}", type="s3", s3=opts,
                         sync_interval_s=0.01)


def _restored(storage, out, target):
    out.unlink(missing_ok=True)
    restore(storage, out, target, now_ns=lambda: START_NS + 10**6 * HOUR)
    return content_hash(out)


def _objects(storage) -> list[layout.SnapshotInfo | layout.SegmentInfo]:
    return [layout.parse_key(o.key, o.size) for o in storage.list(layout.GENERATIONS)]


def test_a_pass_keeps_every_point_of_the_window_and_refuses_the_rest(tmp_path, replica):
    h = _make_history(tmp_path, replica, hours=54)
    storage = open_storage(replica)
    before = _objects(storage)
    policy = Policy(retention_s=24 * 3600, snapshot_ratio=0.5, min_snapshot_history_bytes=0)
    comp = Compactor(storage, policy, clock_ns=lambda: h.end_ns)
    plan, _ = comp.plan()
    assert plan.deletions and plan.merges and plan.syntheses, describe_plan(plan)
    summary = comp.run_pass()
    comp.release()
    after = _objects(storage)
    assert summary.deleted == len(plan.deletions) and summary.snapshots == len(plan.syntheses)
    assert len(after) < len(before)
    window_ns = h.end_ns - 24 * HOUR
    anchor = min(o.txid for o in after if isinstance(o, layout.SnapshotInfo))
    in_window = [t for t in h.states if h.times.get(t, 0) >= window_ns]
    assert in_window and min(in_window) > anchor  # retention kept what the window needs
    out = tmp_path / "out.db"
    kept = refused = 0
    txids = sorted(h.states)
    # Every kept txid near the anchor and the window's start, every third one elsewhere; a
    # sample of the refused ones (each restore costs a few requests).
    sample = set(txids[::3]) | {t for t in txids if abs(t - anchor) <= 3 or abs(t - min(in_window)) <= 3}
    for txid, digest in sorted((t, h.states[t]) for t in sample):
        if txid >= anchor:
            assert _restored(storage, out, Target(txid=txid)) == digest, txid
            kept += 1
        else:
            with pytest.raises(RestoreError, match="not in the replica"):
                _restored(storage, out, Target(txid=txid))
            refused += 1
    assert kept >= 20 and refused >= 20
    assert _restored(storage, out, Target()) == h.states[max(h.states)]
    with pytest.raises(RestoreError, match="earliest is"):
        _restored(storage, out, Target(time_ns=h.times[anchor + 1] - 6 * HOUR))
    # The snapshots built on the replica side bound what a restore replays.
    built = ({o.key for o in after if isinstance(o, layout.SnapshotInfo)}
             - {o.key for o in before if isinstance(o, layout.SnapshotInfo)})
    latest = plan_restore(layout.parse_listing(storage.list(layout.GENERATIONS)), Target())
    replayed = sum(s.size for s in latest.segments)
    assert built and latest.snapshot.key in built
    assert replayed <= policy.snapshot_ratio * latest.snapshot.size + max(s.size for s in latest.segments), \
        (latest.snapshot, replayed)


def test_a_second_pass_at_the_same_time_has_nothing_left_to_do(tmp_path, replica):
    h = _make_history(tmp_path, replica, hours=30)
    storage = open_storage(replica)
    policy = Policy(retention_s=12 * 3600, snapshot_ratio=0.5, min_snapshot_history_bytes=0)
    comp = Compactor(storage, policy, clock_ns=lambda: h.end_ns)
    comp.run_pass()
    for _ in range(8):  # syntheses are bounded per pass: a few passes finish the work
        comp.run_pass()
    plan, _ = comp.plan()
    comp.release()
    assert plan.empty, describe_plan(plan)


def test_retention_disabled_deletes_nothing_but_still_merges(tmp_path, replica):
    h = _make_history(tmp_path, replica, hours=12)
    storage = open_storage(replica)
    before = {o.key for o in storage.list(layout.GENERATIONS)}
    comp = Compactor(storage, Policy(retention_s=None, snapshot_ratio=0), clock_ns=lambda: h.end_ns)
    summary = comp.run_pass()
    comp.release()
    assert summary.deleted == 0 and summary.merged_outputs > 0
    out = tmp_path / "out.db"
    for txid, digest in list(h.states.items())[::5]:
        assert _restored(storage, out, Target(txid=txid)) == digest
    assert {o.key for o in storage.list(layout.GENERATIONS)} != before


def test_a_dry_run_changes_nothing(tmp_path, replica):
    h = _make_history(tmp_path, replica, hours=30)
    storage = open_storage(replica)
    before = sorted((o.key, o.size) for o in storage.list(""))
    comp = Compactor(storage, Policy(retention_s=3 * 3600), clock_ns=lambda: h.end_ns)
    summary = comp.run_pass(dry_run=True)
    assert summary.deleted > 0
    assert sorted((o.key, o.size) for o in storage.list("")) == before  # not even a lease


def test_two_compactors_never_both_delete(tmp_path, replica):
    """One pass at a time per replica: the second compactor is refused naming the first."""
    from replicator import lease
    from replicator.compactor import LEASE_TTL_S
    from replicator.errors import LeaseHeld

    h = _make_history(tmp_path, replica, hours=6)
    storage = open_storage(replica)
    first = lease.acquire(storage, "host-a:compactor:1", LEASE_TTL_S, key=layout.COMPACTOR_LEASE, role="compactor")
    before = sorted(o.key for o in storage.list(layout.GENERATIONS))
    second = Compactor(storage, Policy(retention_s=3600), owner="host-b:compactor:2", clock_ns=lambda: h.end_ns)
    with pytest.raises(LeaseHeld, match="host-a:compactor:1"):
        second.run_pass()
    assert sorted(o.key for o in storage.list(layout.GENERATIONS)) == before
    first.release()
    second.run_pass()  # free again: it goes ahead
    assert sorted(o.key for o in storage.list(layout.GENERATIONS)) != before
