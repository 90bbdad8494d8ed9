"""plan_restore against model listings: the right generation and snapshot, a contiguous chain."""

from __future__ import annotations

import pytest
from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

from replicator.errors import NothingToRestore, RestoreError
from replicator.layout import parse_listing, segment_key, snapshot_key
from replicator.plan import Plan, Target, plan_restore
from replicator.storage.base import ObjectInfo
from strategies import GenSpec, ReplicaCase, covered_txids, replica_cases

MS = 1_000_000
FAST = settings(max_examples=80, deadline=None)


def assert_chain(plan: Plan, upto: int) -> int:
    """The chain starts right after the snapshot and has no holes; returns its last txid."""
    pos = plan.snapshot.txid
    for seg in plan.segments:
        assert seg.generation == plan.generation
        assert seg.first_txid <= pos + 1 <= seg.last_txid, (pos, seg)
        pos = seg.last_txid
    assert pos >= upto
    return pos


@FAST
@given(replica_cases())
def test_latest(case):
    plan = plan_restore(case.listing, Target())
    newest = max(case.gens, key=lambda g: g.last_txid)
    assert plan.generation == newest.name
    assert plan.snapshot.txid == newest.snapshots[-1]
    assert plan.expected_txid == plan.stop_txid == newest.last_txid
    assert plan.stop_time_ns is None
    assert assert_chain(plan, newest.last_txid) == newest.last_txid


def test_latest_is_the_generation_started_last_even_when_an_older_one_ran_longer():
    """Txids repeated (a replica written before they were guarded): 'latest' is the newest
    history, the generation whose first txid is highest, then the newer name."""
    old, new = "20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb"
    objs = [ObjectInfo(snapshot_key(old, 1, 1_000 * MS), 1),
            ObjectInfo(segment_key(old, 2, 5000, 1_000 * MS, 9_000 * MS), 1),
            ObjectInfo(snapshot_key(new, 1, 2_000 * MS), 1),
            ObjectInfo(segment_key(new, 2, 100, 2_000 * MS, 3_000 * MS), 1)]
    plan = plan_restore(parse_listing(objs), Target())
    assert plan.generation == new and plan.stop_txid == 100


def test_latest_follows_txids_not_names():
    old, new = "20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb"
    objs = [ObjectInfo(snapshot_key(old, 50, 1_000 * MS), 1), ObjectInfo(snapshot_key(new, 10, 2_000 * MS), 1)]
    assert plan_restore(parse_listing(objs), Target()).generation == old


@FAST
@given(replica_cases(), st.data())
def test_txid_target(case, data):
    gen = data.draw(st.sampled_from(case.gens))
    txid = data.draw(st.integers(gen.first_txid, gen.last_txid))
    plan = plan_restore(case.listing, Target(txid=txid))
    assert plan.generation == gen.name
    assert plan.snapshot.txid == max(s for s in gen.snapshots if s <= txid)  # the newest usable
    assert plan.stop_txid == plan.expected_txid == txid
    assert_chain(plan, txid)
    assert all(seg.first_txid <= txid for seg in plan.segments)  # nothing fetched for nothing


@FAST
@given(replica_cases(), st.data())
def test_txid_outside_every_generation(case, data):
    covered = covered_txids(case)
    outside = [t for t in range(0, max(covered) + 5) if t not in covered]
    txid = data.draw(st.sampled_from(outside))
    with pytest.raises(RestoreError, match="not in the replica") as exc:
        plan_restore(case.listing, Target(txid=txid))
    assert not isinstance(exc.value, NothingToRestore)


@FAST
@given(replica_cases(), st.data())
def test_time_target(case, data):
    earliest_ns = case.gens[0].start_ms * MS
    now_ns = (case.last_time_ms + 10) * MS
    target = data.draw(st.integers(earliest_ns, now_ns))
    plan = plan_restore(case.listing, Target(time_ns=target), now_ns)
    gen = [g for g in case.gens if g.start_ms * MS <= target][-1]
    assert plan.generation == gen.name
    assert plan.snapshot.txid in gen.snapshots
    assert plan.snapshot.time_ms * MS <= target
    assert plan.stop_time_ns == target and plan.expected_txid is None
    # Every transaction committed at or before the target is in the snapshot or the chain...
    wanted = max(t for t, ms in gen.times_ms.items() if ms * MS <= target)
    assert_chain(plan, wanted)
    # ...and no segment wholly after the target is fetched.
    assert all(seg.t0_ms * MS <= target for seg in plan.segments)


@FAST
@given(replica_cases(), st.data())
def test_time_before_the_earliest(case, data):
    earliest_ns = case.gens[0].start_ms * MS
    target = data.draw(st.integers(0, earliest_ns - 1))
    with pytest.raises(RestoreError, match="before the earliest restorable point") as exc:
        plan_restore(case.listing, Target(time_ns=target), earliest_ns + 10 * MS)
    assert "earliest is" in str(exc.value)


@FAST
@given(replica_cases(), st.integers(1, 10**12))
def test_time_in_the_future(case, ahead):
    now_ns = (case.last_time_ms + 1) * MS
    with pytest.raises(RestoreError, match="in the future"):
        plan_restore(case.listing, Target(time_ns=now_ns + ahead), now_ns)


@pytest.mark.parametrize("target", [Target(), Target(txid=1), Target(time_ns=5 * MS)])
def test_nothing_to_restore(target):
    with pytest.raises(NothingToRestore):
        plan_restore(parse_listing([]), target, 10 * MS)
    # Segments without any snapshot cannot be restored either.
    orphan = parse_listing([ObjectInfo(segment_key("20260101T000000Z-aaaaaa", 1, 2, 1 * MS, 2 * MS), 1)])
    with pytest.raises(NothingToRestore):
        plan_restore(orphan, target, 10 * MS)


@FAST
@given(replica_cases(overlaps=True), st.data())
def test_a_hole_in_the_segments(case, data):
    """With every segment holding txid x removed, exactly the targets that need a lost txid fail."""
    gen = data.draw(st.sampled_from(case.gens))
    assume(gen.segments)
    x = data.draw(st.integers(gen.first_txid + 1, max(b for _, b in gen.segments)))
    kept = [(a, b) for a, b in gen.segments if not a <= x <= b]
    holed = GenSpec(gen.name, gen.times_ms, gen.snapshots, kept)
    case = ReplicaCase([holed if g is gen else g for g in case.gens], case.order_seed)
    held = {t for a, b in kept for t in range(a, b + 1)}
    failed = 0
    for txid in range(holed.first_txid, holed.last_txid + 1):
        base = max(s for s in holed.snapshots if s <= txid)
        lost = [t for t in range(base + 1, txid + 1) if t not in held]
        if lost:
            with pytest.raises(RestoreError, match="missing") as exc:
                plan_restore(case.listing, Target(txid=txid))
            assert f"--txid {lost[0] - 1}" in str(exc.value)
            failed += 1
        else:
            assert_chain(plan_restore(case.listing, Target(txid=txid)), txid)
    event(f"some targets need the hole: {failed > 0}")




def _holed_generation() -> tuple[str, list[ObjectInfo]]:
    gen = "20260101T000000Z-aaaaaa"
    objs = [ObjectInfo(snapshot_key(gen, 1, 1_000 * MS), 1),
            ObjectInfo(segment_key(gen, 2, 3, 1_010 * MS, 1_020 * MS), 1),
            # txid 4 (at 1_030 ms) is missing
            ObjectInfo(segment_key(gen, 5, 6, 1_040 * MS, 1_050 * MS), 1)]
    return gen, objs


def test_missing_segment_fails_latest_with_a_hint():
    gen, objs = _holed_generation()
    with pytest.raises(RestoreError, match="missing transactions after txid 3") as exc:
        plan_restore(parse_listing(objs), Target())
    assert gen in str(exc.value) and "--txid 3" in str(exc.value)
    assert plan_restore(parse_listing(objs), Target(txid=3)).segments[-1].last_txid == 3


def test_hole_after_a_time_target_does_not_matter():
    _, objs = _holed_generation()
    plan = plan_restore(parse_listing(objs), Target(time_ns=1_015 * MS), 2_000 * MS)
    assert [(s.first_txid, s.last_txid) for s in plan.segments] == [(2, 3)]


def test_hole_that_may_hold_the_target_fails_the_time_restore():
    """Txid 4 lies somewhere in 1_020..1_040 ms: a target of 1_035 ms may need it."""
    _, objs = _holed_generation()
    with pytest.raises(RestoreError, match="missing transactions after txid 3"):
        plan_restore(parse_listing(objs), Target(time_ns=1_035 * MS), 2_000 * MS)


def test_hole_within_the_last_segments_millisecond_is_not_provably_after():
    """Segment 2-3 ends at most at 1_020 ms (rounded up): txid 4 may be at 1_019.8 ms."""
    _, objs = _holed_generation()
    with pytest.raises(RestoreError, match="missing"):
        plan_restore(parse_listing(objs), Target(time_ns=1_019 * MS + 900_000), 2_000 * MS)


HOLED = ReplicaCase([GenSpec("20260101T000000Z-aaaaaa",
                             {1: 1_000, 2: 1_010, 3: 1_020, 4: 1_030, 5: 1_040, 6: 1_050},
                             [1], [(2, 3), (4, 4), (5, 6)])], 0)


@FAST
@example(case=HOLED, gen_pick=0, hole_pick=2, target_pick=35 * MS)  # hole at txid 4, target 1_035 ms
@given(replica_cases(), st.integers(0, 2**16), st.integers(0, 2**16), st.integers(0, 2**62))
def test_time_restore_over_a_hole_is_never_silently_short(case, gen_pick, hole_pick, target_pick):
    """Refusing is always safe; a plan, if made, holds every transaction at or before the target."""
    gen = case.gens[gen_pick % len(case.gens)]
    assume(gen.segments)
    lo, hi = gen.first_txid + 1, max(b for _, b in gen.segments)
    x = lo + hole_pick % (hi - lo + 1)
    holed = GenSpec(gen.name, gen.times_ms, gen.snapshots, [(a, b) for a, b in gen.segments if not a <= x <= b])
    case = ReplicaCase([holed if g is gen else g for g in case.gens], case.order_seed)
    earliest_ns, now_ns = case.gens[0].start_ms * MS, (case.last_time_ms + 10) * MS
    target = earliest_ns + target_pick % (now_ns - earliest_ns + 1)
    try:
        plan = plan_restore(case.listing, Target(time_ns=target), now_ns)
    except RestoreError as err:
        assert "missing" in str(err)
        event("refused")
        return
    chosen = case.gen(plan.generation)
    # A hole at the very end leaves no trace in the listing: it just ends the generation.
    known = [t for t, ms in chosen.times_ms.items() if ms * MS <= target and t <= chosen.last_txid]
    assert_chain(plan, max(known))
    event("planned")


def test_snapshot_in_the_targets_own_millisecond_is_not_trusted():
    """Names hold ms rounded down: a snapshot named in the target's ms may be after it."""
    gen = "20260101T000000Z-aaaaaa"
    objs = [ObjectInfo(snapshot_key(gen, 1, 1_000 * MS), 1),
            ObjectInfo(snapshot_key(gen, 3, 1_020 * MS + 700_000), 1),
            ObjectInfo(segment_key(gen, 2, 3, 1_010 * MS, 1_020 * MS + 700_000), 1)]
    plan = plan_restore(parse_listing(objs), Target(time_ns=1_020 * MS + 100_000), 2_000 * MS)
    assert plan.snapshot.txid == 1
    assert [s.last_txid for s in plan.segments] == [3]


def test_describe():
    assert Target().describe() == "latest"
    assert Target(txid=5).describe() == "txid 5"
    assert Target(time_ns=1_250 * MS).describe() == "1970-01-01T00:00:01.250Z"


def test_a_named_snapshot_is_restored_exactly():
    """The newest snapshot with the name, alone: none of the segments after it."""
    g1, g2 = "20261101T000000000Z-aaaaaa", "20261102T000000000Z-bbbbbb"
    keys = [snapshot_key(g1, 1, 1000 * MS), snapshot_key(g1, 5, 2000 * MS, "pre-migration"),
            segment_key(g1, 2, 9, 1500 * MS, 3000 * MS), snapshot_key(g2, 10, 4000 * MS),
            snapshot_key(g2, 12, 5000 * MS, "pre-migration"), snapshot_key(g2, 13, 6000 * MS, "other"),
            segment_key(g2, 11, 20, 4500 * MS, 7000 * MS)]
    listing = parse_listing(ObjectInfo(k, 100) for k in keys)
    plan = plan_restore(listing, Target(snapshot="pre-migration"))
    assert (plan.generation, plan.snapshot.txid, plan.segments) == (g2, 12, ())
    assert plan.stop_txid == plan.expected_txid == 12 and plan.download_bytes == 100
    with pytest.raises(RestoreError) as e:
        plan_restore(listing, Target(snapshot="nope"))
    assert str(e.value) == "no snapshot named 'nope' (names: other, pre-migration)"
    unnamed = parse_listing([ObjectInfo(snapshot_key(g1, 1, 1000 * MS), 1)])
    with pytest.raises(RestoreError, match="the replica holds no named snapshot"):
        plan_restore(unnamed, Target(snapshot="nope"))
