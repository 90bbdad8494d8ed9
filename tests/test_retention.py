"""retention.py: the pure compaction planner against model listings (tests/strategies.py).

The properties are stated against restore's own planner: whatever a pass deletes, merges or
adds, every point of the window that could be restored before still can, to the same txid.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator import layout
from replicator.errors import RestoreError
from replicator.layout import SegmentInfo, SnapshotInfo
from replicator.plan import Target, plan_restore
from replicator.compactor import describe_plan
from replicator.retention import MS, CompactionPlan, Policy, retain
from replicator.storage.base import ObjectInfo
from strategies import ReplicaCase, replica_cases

FAST = settings(max_examples=150, deadline=None)


def _after(case: ReplicaCase, plan: CompactionPlan) -> layout.Listing:
    """The listing once the plan has run: deletions and merged inputs gone, merged objects
    and built snapshots added (their names as the compactor gives them)."""
    objs = {o.key: o for o in case.objects()}
    for key in plan.deletions:
        objs.pop(key)
    for key in plan.markers:
        objs[key] = ObjectInfo(key, 0)
    for c in plan.covered:
        for s in c.covered:
            objs.pop(s.key)
    for m in plan.merges:
        for s in m.inputs:
            objs.pop(s.key)
        objs[m.key] = ObjectInfo(m.key, m.size)
    for s in plan.syntheses:
        key = layout.snapshot_key(s.generation, s.txid, case.gen(s.generation).times_ms[s.txid] * MS)
        objs[key] = ObjectInfo(key, 1000)
    return layout.parse_listing(objs.values())


def _outcome(listing: layout.Listing, target: Target, now_ns: int):
    """(generation, txid) a restore would reach, or None if it cannot be planned."""
    try:
        p = plan_restore(listing, target, now_ns)
    except RestoreError:
        return None
    return p.generation, p.stop_txid


policies = st.builds(Policy, st.one_of(st.none(), st.floats(0, 40.0)), st.sampled_from([0.0, 0.05, 0.5, 3.0]),
                     st.sampled_from([(), ((0.001, 0.002),), ((0.002, 0.005), (0.01, 0.02))]), st.just(0),
                     st.sampled_from([(), (("daily", 2),), (("hourly", 3), ("yearly", 1))]))


@FAST
@given(replica_cases(), policies, st.integers(0, 60_000))
def test_every_txid_committed_in_the_window_stays_restorable(case, policy, ahead_ms):
    now_ns = (case.last_time_ms + ahead_ms) * MS
    plan = retain(case.listing, policy, now_ns)
    after = _after(case, plan)
    window_ns = None if policy.retention_s is None else now_ns - int(policy.retention_s * 1e9)
    for g in case.gens:
        for txid in range(g.first_txid, g.last_txid + 1):
            if txid not in g.times_ms:
                continue
            before = _outcome(case.listing, Target(txid=txid), now_ns)
            if before is None:
                continue
            if window_ns is None or g.times_ms[txid] * MS >= window_ns:
                assert _outcome(after, Target(txid=txid), now_ns) == before, (txid, plan)


@FAST
@given(replica_cases(), policies, st.integers(0, 60_000), st.data())
def test_every_time_in_the_window_restores_to_what_it_did(case, policy, ahead_ms, data):
    now_ns = (case.last_time_ms + ahead_ms) * MS
    plan = retain(case.listing, policy, now_ns)
    after = _after(case, plan)
    lo = case.gens[0].start_ms * MS
    if policy.retention_s is not None:
        lo = max(lo, now_ns - int(policy.retention_s * 1e9))
    for _ in range(8):
        t = data.draw(st.integers(lo, now_ns))
        try:
            before = plan_restore(case.listing, Target(time_ns=t), now_ns)
        except RestoreError:
            continue
        got = plan_restore(after, Target(time_ns=t), now_ns)
        assert got.generation == before.generation
        # The same last transaction at or before t: the chain may differ (merged, or from a
        # newer snapshot), the state it reaches may not.
        assert _reaches(got, t, case) == _reaches(before, t, case)


def _reaches(p, t_ns, case) -> int:
    g = case.gen(p.generation)
    upto = max([p.snapshot.txid] + [s.last_txid for s in p.segments])
    return max(x for x, ms in g.times_ms.items() if x <= upto and (x == p.snapshot.txid or ms * MS <= t_ns))


@FAST
@given(replica_cases(), policies, st.integers(0, 60_000))
def test_the_newest_snapshot_and_named_ones_are_never_deleted(case, policy, ahead_ms):
    now_ns = (case.last_time_ms + ahead_ms) * MS
    plan = retain(case.listing, policy, now_ns)
    newest = case.listing.generations[-1].snapshots[-1]
    assert newest.key not in plan.deletions
    for g in case.listing.generations:
        for s in g.snapshots:
            if s.name:
                assert s.key not in plan.deletions


@FAST
@given(replica_cases(overlaps=False), policies, st.integers(0, 60_000))
def test_merges_join_consecutive_segments_of_one_generation(case, policy, ahead_ms):
    plan = retain(case.listing, policy, (case.last_time_ms + ahead_ms) * MS)
    merged = set()
    for m in plan.merges:
        assert len(m.inputs) >= 2
        assert len({s.generation for s in m.inputs}) == 1
        for a, b in zip(m.inputs, m.inputs[1:]):
            assert b.first_txid == a.last_txid + 1
        info = layout.parse_key(m.key)
        assert isinstance(info, SegmentInfo)
        assert (info.first_txid, info.last_txid) == (m.inputs[0].first_txid, m.inputs[-1].last_txid)
        assert not merged & {s.key for s in m.inputs} and not {s.key for s in m.inputs} & set(plan.deletions)
        merged |= {s.key for s in m.inputs}


@FAST
@given(replica_cases(overlaps=False), st.integers(0, 60_000))
def test_syntheses_build_on_a_snapshot_with_a_contiguous_chain(case, ahead_ms):
    policy = Policy(None, snapshot_ratio=1e-6, min_snapshot_history_bytes=0)
    plan = retain(case.listing, policy, (case.last_time_ms + ahead_ms) * MS)
    assert plan.syntheses or all(b <= g.snapshots[-1] for g in case.gens for _, b in g.segments)
    prev = {}
    for s in plan.syntheses:
        base_txid = s.base.txid if s.base is not None else prev[s.generation]
        pos = base_txid
        for seg in s.segments:
            assert seg.first_txid <= pos + 1 <= seg.last_txid
            pos = seg.last_txid
        prev[s.generation] = s.txid


def test_retention_deletes_what_lies_wholly_before_the_snapshot_at_the_window_start():
    g1, g2 = "20260101T000000000Z-aaaaaa", "20260102T000000000Z-bbbbbb"
    objs = [ObjectInfo(layout.snapshot_key(g1, 1, 1_000 * MS), 10),
            ObjectInfo(layout.segment_key(g1, 2, 5, 1_001 * MS, 2_000 * MS), 10),
            ObjectInfo(layout.snapshot_key(g2, 6, 3_000 * MS), 10),
            ObjectInfo(layout.segment_key(g2, 7, 9, 3_001 * MS, 4_000 * MS), 10),
            ObjectInfo(layout.snapshot_key(g2, 9, 4_000 * MS), 10),
            ObjectInfo(layout.segment_key(g2, 10, 12, 4_001 * MS, 9_000 * MS), 10),
            ObjectInfo(layout.snapshot_key(g1, 1, 1_000 * MS, "before-migration"), 10)]
    plan = retain(layout.parse_listing(objs), Policy(retention_s=5.0, snapshot_ratio=0), 10_000 * MS)
    # The window starts at 5 s: the snapshot at txid 9 (4 s) is what it needs.
    assert set(plan.deletions) == {objs[0].key, objs[1].key, objs[2].key, objs[3].key}
    assert plan.earliest_ns == 4_000 * MS
    assert isinstance(layout.parse_key(objs[6].key), SnapshotInfo)  # the named one stays


def test_no_retention_deletes_nothing():
    g = "20260101T000000000Z-aaaaaa"
    objs = [ObjectInfo(layout.snapshot_key(g, 1, 1_000 * MS), 10),
            ObjectInfo(layout.segment_key(g, 2, 5, 1_001 * MS, 2_000 * MS), 10)]
    assert retain(layout.parse_listing(objs), Policy(None, snapshot_ratio=0), 10**18).deletions == ()


def test_a_kept_snapshot_never_stands_for_the_history_retired_around_it():
    """A named snapshot outlives the generation retention retired: restoring it by txid works,
    a time after it in that generation is refused (its state there is gone), not answered
    with the snapshot's older state; the marker says what was retired."""
    g1, g2 = "20260101T000000000Z-aaaaaa", "20260102T000000000Z-bbbbbb"
    objs = [ObjectInfo(layout.snapshot_key(g1, 1, 1_000 * MS), 10),
            ObjectInfo(layout.snapshot_key(g1, 2, 1_500 * MS, "before-migration"), 10),
            ObjectInfo(layout.segment_key(g1, 2, 5, 1_001 * MS, 2_000 * MS), 10),
            ObjectInfo(layout.snapshot_key(g2, 6, 3_000 * MS), 10),
            ObjectInfo(layout.segment_key(g2, 7, 9, 3_001 * MS, 9_000 * MS), 10)]
    listing = layout.parse_listing(objs)
    plan = retain(listing, Policy(retention_s=1.0, snapshot_ratio=0), 10_000 * MS)
    left = {o.key: o for o in objs if o.key not in plan.deletions}
    left.update({k: ObjectInfo(k, 0) for k in plan.markers})
    after = layout.parse_listing(left.values())
    assert plan.markers and objs[1].key in left
    assert plan_restore(after, Target(txid=2)).snapshot.name == "before-migration"
    for t_ms in (1_600, 2_500):
        try:
            plan_restore(after, Target(time_ns=t_ms * MS), 10_000 * MS)
        except RestoreError as err:
            assert "before the earliest restorable point" in str(err) and "--txid 2" in str(err)
        else:
            raise AssertionError(f"a time at {t_ms} ms restored from what retention retired")
    with pytest.raises(RestoreError, match="retired"):
        plan_restore(after, Target(txid=4))
    assert plan_restore(after, Target(time_ns=9_500 * MS), 10_000 * MS).generation == g2


def test_tiered_rules_keep_the_newest_snapshot_of_each_of_the_last_buckets():
    """restic's semantics: for the last N calendar buckets holding a snapshot, the newest one
    of each; rules ORed; only snapshots the window would retire are reported as kept."""
    day = 86_400_000
    g = "20260101T000000000Z-aaaaaa"
    base = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    objs = []
    for d in range(40):  # two snapshots a day, a segment between each
        for h, txid in ((6, 2 * d + 1), (18, 2 * d + 2)):
            objs.append(ObjectInfo(layout.snapshot_key(g, txid, (base + d * day + h * 3_600_000) * MS), 10))
        objs.append(ObjectInfo(layout.segment_key(g, 2 * d + 2, 2 * d + 2, (base + d * day + 17 * 3_600_000) * MS,
                                                  (base + d * day + 18 * 3_600_000) * MS), 10))
        if d < 39:
            objs.append(ObjectInfo(layout.segment_key(g, 2 * d + 3, 2 * d + 3, (base + (d + 1) * day) * MS,
                                                      (base + (d + 1) * day + 6 * 3_600_000) * MS), 10))
    now = (base + 40 * day) * MS
    plan = retain(layout.parse_listing(objs), Policy(retention_s=7 * 86_400, snapshot_ratio=0,
                                                      keep=(("daily", 10), ("weekly", 4))), now)
    kept = dict(plan.kept)
    kept_days = sorted((layout.parse_key(k).time_ms - base) // day for k, why in kept.items() if "daily" in why)
    # Days 33..39 lie in the window and day 32 holds its anchor (18:00): the rule keeps 30 and 31.
    assert kept_days == [30, 31]
    weekly = [k for k, why in kept.items() if "weekly" in why]
    assert weekly and all(layout.parse_key(k).time_ms % day == 18 * 3_600_000 for k in weekly)  # newest of its week
    assert not set(kept) & set(plan.deletions)
    lines = describe_plan(plan)
    assert any(line.startswith("keep ") and "daily" in line for line in lines)


def test_a_named_snapshot_is_kept_until_its_keep_for_runs_out():
    g = "20260101T000000000Z-aaaaaa"
    objs = [ObjectInfo(layout.snapshot_key(g, 1, 1_000 * MS), 10),
            ObjectInfo(layout.snapshot_key(g, 2, 1_500 * MS, "pre-migration", keep_until_ms=20_000), 10),
            ObjectInfo(layout.segment_key(g, 2, 5, 1_001 * MS, 2_000 * MS), 10),
            ObjectInfo(layout.snapshot_key(g, 5, 5_000 * MS), 10),
            ObjectInfo(layout.segment_key(g, 6, 9, 5_001 * MS, 9_000 * MS), 10)]
    listing = layout.parse_listing(objs)
    assert listing.generations[0].snapshots[1].keep_until_ms == 20_000
    policy = Policy(retention_s=1.0, snapshot_ratio=0)
    assert objs[1].key not in retain(listing, policy, 10_000 * MS).deletions  # still within its keep-for
    assert objs[1].key in retain(listing, policy, 30_000 * MS).deletions  # run out: retired like the rest


def test_a_backlog_longer_than_a_pass_builds_the_newest_point_first():
    """20 snapshots' worth of history, 8 builds a pass: the first build leaps from the base
    to the newest segment (what the latest restore replays), then the oldest points follow;
    the next pass fills in the middle and builds nothing past the leap."""
    from replicator.retention import MAX_SYNTHESES_PER_PASS

    g = "20260101T000000000Z-aaaaaa"
    objs = [ObjectInfo(layout.snapshot_key(g, 1, 1_000 * MS), 100)]
    for k in range(20):
        objs.append(ObjectInfo(layout.segment_key(g, 2 + k, 2 + k, (1_001 + k) * MS, (1_001 + k) * MS), 100))
    policy = Policy(None, snapshot_ratio=1.0, min_snapshot_history_bytes=0)
    plan = retain(layout.parse_listing(objs), policy, 10_000 * MS)
    assert len(plan.syntheses) == MAX_SYNTHESES_PER_PASS
    leap, *rest = plan.syntheses
    assert leap.base is not None and leap.base.txid == 1 and leap.txid == 21
    assert [s.txid for s in rest] == list(range(2, 2 + len(rest)))  # the oldest points, in order

    built = [ObjectInfo(layout.snapshot_key(g, s.txid, (1_000 + s.txid - 1) * MS), 100) for s in plan.syntheses]
    again = retain(layout.parse_listing(objs + built), policy, 10_000 * MS)
    txids = [s.txid for s in again.syntheses]
    assert txids and min(txids) > max(s.txid for s in rest) and max(txids) < 21
