"""When to checkpoint, when to snapshot, how long to batch: pure functions of what the
worker has seen, so each decision can be checked alone (tests/test_policy.py).
"""

from __future__ import annotations

import dataclasses

# History-triggered snapshots (snapshot-history-ratio) wait for at least this much compressed
# segment data since the newest snapshot: a snapshot holds checkpoints back while it reads
# (the WAL grows meanwhile), so a small database under a busy writer must not be snapshotted
# every few seconds (measured at 256 MiB of WAL, flat out: a snapshot every ~3 s and a WAL
# high-water of 184 MB instead of 24 MB).
SNAPSHOT_HISTORY_FLOOR_BYTES = 1 << 30
HISTORY_SNAPSHOT_QUIET_S = 1.0  # "the writer paused": no commit for this long
# ... or regardless at this multiple (a writer that never pauses: 20 s flat out here wrote
# 2 GiB, and a forced snapshot at 2x put the WAL high-water at 95 MB instead of ~35 MB).
HISTORY_SNAPSHOT_FORCE = 4
# Without the checkpointer lock (an application checkpoint holds it), wait for this many times
# min-checkpoint-page-count before checkpointing anyway: only our rounds move the read mark,
# so an application that kept winning the lock would otherwise grow the WAL without bound.
UNGUARDED_CHECKPOINT_FACTOR = 4
MIN_BATCH_INTERVAL_S = 0.005  # at most ~200 batches a second; adds <= 5 ms to the RPO
# A writer producing WAL faster than this gets one batch per BUSY_BATCH_INTERVAL_S instead:
# the per-batch costs (spool file, state record, upload round, prune) are then paid ~50 times
# a second, not ~200, for ~15 ms more RPO, only while it writes this fast.
BUSY_WAL_BYTES_PER_S = 32 << 20
BUSY_BATCH_INTERVAL_S = 0.020
# Phase (c) of a checkpoint holds the write lock while it backfills what the writer added
# during (b); (a)+(b) are repeated while that tail is longer than this and halves each round
# (a flat-out writer keeps it at a few hundred frames: rounds past that only grow the WAL).
CHECKPOINT_TAIL_FRAMES = 128
MAX_BACKFILL_ROUNDS = 6
# Phase (c) backfills at most this many frames inside its fence (~8 ms here); a longer tail
# (the writer got far while the fence was being taken) means another unfenced round, up to
# MAX_FENCE_RETRIES times per checkpoint, after which (c) backfills whatever is there.
FENCE_TAIL_FRAMES = 1024
MAX_FENCE_RETRIES = 3


def checkpoint_due(unbackfilled: int, idle_s: float, guarded: bool, min_pages: int,
                   idle_interval_s: float) -> bool:
    """Start a checkpoint cycle now?

    Counted from the WAL's unbackfilled frames, not from our position in it: after a
    checkpoint of an idle database the WAL restarts only with the next write, and our
    position stays high until then. Preferably while the application cannot checkpoint
    (`guarded`: it would do the backfill of frames below our new read mark inside its own
    commit), but not at any price (UNGUARDED_CHECKPOINT_FACTOR).
    """
    due = unbackfilled >= min_pages or (unbackfilled > 0 and idle_s >= idle_interval_s)
    return due and (guarded or unbackfilled >= UNGUARDED_CHECKPOINT_FACTOR * min_pages)


def another_backfill_round(tail: int, previous_tail: int, rounds: int) -> bool:
    """Repeat (a)+(b) before the fenced (c)? While the tail is long and still halving."""
    return tail > CHECKPOINT_TAIL_FRAMES and tail < previous_tail // 2 and rounds < MAX_BACKFILL_ROUNDS


def fence_tail_limit(retries: int) -> int | None:
    """The most frames (c) may backfill inside its fence, or None once it has given up
    MAX_FENCE_RETRIES times (then it backfills whatever is there)."""
    return FENCE_TAIL_FRAMES if retries < MAX_FENCE_RETRIES else None


@dataclasses.dataclass(frozen=True)
class SnapshotFacts:
    """What the snapshot decision looks at (all from the worker's own bookkeeping)."""

    now_ns: int
    last_snapshot_ns: int
    interval_s: float  # the smallest snapshot-interval of the replicas; 0 = none
    history_bytes: int  # compressed segments since the newest snapshot
    last_snapshot_bytes: int  # that snapshot's size
    ratio: float  # snapshot-history-ratio; 0 = off
    idle_s: float  # since the last commit


def snapshot_due(f: SnapshotFacts) -> str | None:
    """Why a snapshot is due now ("interval" or "history"), or None."""
    if f.interval_s > 0 and (f.now_ns - f.last_snapshot_ns) / 1e9 >= f.interval_s:
        return "interval"
    if history_due(f.history_bytes, f.last_snapshot_bytes, f.ratio, f.idle_s):
        return "history"
    return None


def history_due(history_bytes: int, last_snapshot_bytes: int, ratio: float, idle_s: float) -> bool:
    """Enough segments since the newest snapshot that a restore would read more than `ratio`
    times that snapshot: a new snapshot bounds restore time. Measured in compressed bytes
    (what a restore downloads), so a restart recovers the count from one LIST of the replicas.

    Taken once the writer pauses (a snapshot holds checkpoints back while it reads, and the
    WAL grows by whatever is written meanwhile), or regardless at HISTORY_SNAPSHOT_FORCE times
    the amount.
    """
    threshold = max(ratio * last_snapshot_bytes, SNAPSHOT_HISTORY_FLOOR_BYTES)
    return ratio > 0 and history_bytes >= threshold and (
        idle_s >= HISTORY_SNAPSHOT_QUIET_S or history_bytes >= HISTORY_SNAPSHOT_FORCE * threshold)


def batch_window(batch_bytes: int, elapsed_s: float) -> float:
    """The wait before the next copy batch, from the WAL bytes the last one copied over
    `elapsed_s`: coalescing a busy writer's wake-ups keeps per-batch costs from scaling with
    the commit rate."""
    busy = batch_bytes > 0 and batch_bytes >= BUSY_WAL_BYTES_PER_S * elapsed_s
    return BUSY_BATCH_INTERVAL_S if busy else MIN_BATCH_INTERVAL_S
