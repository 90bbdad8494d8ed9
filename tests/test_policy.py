"""policy.py: the decisions as properties over everything they could be asked."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from replicator import policy
from replicator.policy import SnapshotFacts, checkpoint_due, history_due, snapshot_due

frames = st.integers(0, 10**7)
seconds = st.floats(0, 10**6, allow_nan=False)
min_pages = st.integers(1, 10**5)


@given(frames, seconds, st.booleans(), min_pages, seconds)
def test_checkpoint_never_due_with_nothing_to_backfill(_, idle, guarded, pages, interval):
    assert not checkpoint_due(0, idle, guarded, pages, interval)


@given(frames, frames, seconds, st.booleans(), min_pages, seconds)
def test_checkpoint_due_is_monotone_in_the_unbackfilled_frames(a, b, idle, guarded, pages, interval):
    lo, hi = sorted((a, b))
    if checkpoint_due(lo, idle, guarded, pages, interval):
        assert checkpoint_due(hi, idle, guarded, pages, interval)


@given(frames, seconds, min_pages, seconds)
def test_the_checkpointer_lock_only_ever_delays_a_checkpoint(n, idle, pages, interval):
    if checkpoint_due(n, idle, False, pages, interval):
        assert checkpoint_due(n, idle, True, pages, interval)
    if n >= policy.UNGUARDED_CHECKPOINT_FACTOR * pages:  # the WAL must not grow without bound
        assert checkpoint_due(n, idle, False, pages, interval)


@given(st.integers(1, 10**6), min_pages, seconds)
def test_an_idle_wal_is_checkpointed_after_the_interval(n, pages, interval):
    assert checkpoint_due(n, interval, True, pages, interval)


@given(st.integers(0, 10**6), st.integers(0, 10**7), st.integers(0, 20))
def test_backfill_rounds_end(tail, previous, rounds):
    if policy.another_backfill_round(tail, previous, rounds):
        assert tail > policy.CHECKPOINT_TAIL_FRAMES and tail < previous // 2
        assert rounds < policy.MAX_BACKFILL_ROUNDS


@given(st.integers(0, 10))
def test_the_fence_limit_is_given_up_after_its_retries(retries):
    limit = policy.fence_tail_limit(retries)
    assert (limit is None) == (retries >= policy.MAX_FENCE_RETRIES)


sizes = st.integers(0, 1 << 40)
ratios = st.floats(0, 100, allow_nan=False)


@given(sizes, sizes, ratios, seconds)
def test_history_never_due_below_the_floor_or_with_the_ratio_off(history, snap, ratio, idle):
    if history < policy.SNAPSHOT_HISTORY_FLOOR_BYTES or ratio == 0:
        assert not history_due(history, snap, ratio, idle)


@given(sizes, st.floats(0.01, 100), seconds)
def test_history_due_waits_for_a_pause_until_the_force_multiple(snap, ratio, idle):
    threshold = max(ratio * snap, policy.SNAPSHOT_HISTORY_FLOOR_BYTES)
    at_threshold = int(threshold) + 1
    assert history_due(at_threshold, snap, ratio, idle) == (idle >= policy.HISTORY_SNAPSHOT_QUIET_S)
    assert history_due(int(policy.HISTORY_SNAPSHOT_FORCE * threshold) + 1, snap, ratio, 0.0)


@given(st.integers(0, 10**18), st.integers(0, 10**18), st.floats(0, 10**5), sizes, sizes, ratios, seconds)
def test_snapshot_due_by_interval_or_history_only(now, last, interval, history, snap, ratio, idle):
    facts = SnapshotFacts(now, last, interval, history, snap, ratio, idle)
    reason = snapshot_due(facts)
    by_interval = interval > 0 and (now - last) / 1e9 >= interval
    assert (reason == "interval") == by_interval
    if reason is None:
        assert not history_due(history, snap, ratio, idle)


@given(st.integers(0, 1 << 30), st.floats(0, 10, allow_nan=False))
def test_batch_window_widens_only_for_a_fast_writer(n, elapsed):
    window = policy.batch_window(n, elapsed)
    assert window in (policy.MIN_BATCH_INTERVAL_S, policy.BUSY_BATCH_INTERVAL_S)
    if n == 0 or n < policy.BUSY_WAL_BYTES_PER_S * elapsed:
        assert window == policy.MIN_BATCH_INTERVAL_S
