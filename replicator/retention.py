"""Pure compaction planning: from a listing, a policy and the time to what a pass does.

`retain(listing, policy, now_ns)` decides, from object names alone (no GET), which objects
retention deletes, which runs of segments are merged into one object, and which snapshots
the compactor builds on the replica side. compactor.py executes the plan. Every rule keeps
every point of the window [now - retention, now] restorable (docs/design.md section 7):

- **Retention.** W = now - retention. The generation a restore at W would use (the newest
  one started at or before W) and its newest snapshot at or before W (S*) are what W needs;
  everything wholly before S* (older generations, older snapshots of that generation, and
  segments ending at or before S*'s txid) is needed by no point in the window. Named
  snapshots are kept (they are deleted only on request), and the newest snapshot of the
  newest generation always is.
- **Merging.** Consecutive segments of one generation whose first commits fall in the same
  time bucket, once it is over, are concatenated into one object (no recompression, every
  transaction record kept): buckets of MERGE_LEVELS' spans once they are older than their
  age. The number of objects a replica holds is then bounded by the window over the spans,
  whatever the commit rate.
- **Replica-side snapshots.** Where the compressed segments after a snapshot exceed `ratio`
  times that snapshot's size, a new snapshot is built from it and them (at the end of the
  segment that crosses the bound), so a restore to any point reads at most about one
  snapshot plus `ratio` snapshots' worth of segments.
"""

from __future__ import annotations

import dataclasses

from . import layout
from .layout import Generation, Listing, SegmentInfo, SnapshotInfo

MS = 1_000_000
# (age, span) in seconds: a segment whose bucket of `span` ended more than `age` ago is
# merged with the others of that bucket. 5-minute buckets after 5 minutes, hourly ones after
# an hour: a window of 720h then holds ~720 hourly objects per generation, plus at most 12
# five-minute ones and what arrived since the last pass.
MERGE_LEVELS: tuple[tuple[float, float], ...] = ((300.0, 300.0), (3600.0, 3600.0))
MAX_MERGED_BYTES = 64 << 20  # a merged object is built in memory: at most this much
MAX_SYNTHESES_PER_PASS = 8  # each one reads a whole database: bound the length of a pass
MIN_SNAPSHOT_HISTORY_BYTES = 1 << 20  # below this a new snapshot saves a restore nothing
# A compressed byte of segments costs a restore this many times a compressed byte of snapshot
# (every page version is decoded, filtered and hashed one by one; a snapshot streams). Measured
# on a 1 GiB database: 10.5 ms per MiB of segments replayed against 4.8 ms per MiB of snapshot.
# Replica-side snapshots are placed by that cost, so that `snapshot-history-ratio` x the
# snapshot is a bound on replay *time*: at 1.0, a restore to any point of the window costs at
# most about twice the latest (bytes alone gave 2.8-3.7x there).
SEGMENT_REPLAY_COST = 2.2


@dataclasses.dataclass(frozen=True)
class Policy:
    retention_s: float | None  # None: never delete (a bucket lifecycle rule does it)
    snapshot_ratio: float = 1.0  # 0: no replica-side snapshots
    merge_levels: tuple[tuple[float, float], ...] = MERGE_LEVELS
    min_snapshot_history_bytes: int = MIN_SNAPSHOT_HISTORY_BYTES
    # Tiered retention beyond the window: (rule, count) with rule in hourly, daily, weekly,
    # monthly, yearly (restic's forget --keep-* semantics).
    keep: tuple[tuple[str, int], ...] = ()


@dataclasses.dataclass(frozen=True)
class Merge:
    inputs: tuple[SegmentInfo, ...]
    key: str  # of the merged object (its name follows from the inputs' names)

    @property
    def size(self) -> int:
        return sum(s.size for s in self.inputs)


@dataclasses.dataclass(frozen=True)
class Synthesis:
    """A new snapshot at `segments[-1].last_txid`: `base` with `segments` applied. Its key
    needs the exact commit time, which is read from the last segment when it is built."""

    generation: str
    base: SnapshotInfo | None  # None: the previous synthesis of this pass (in order)
    segments: tuple[SegmentInfo, ...]

    @property
    def txid(self) -> int:
        return self.segments[-1].last_txid


@dataclasses.dataclass(frozen=True)
class Covered:
    """Segments whose every transaction `cover` holds too (a merged object whose inputs a
    crashed pass did not delete, a re-upload): retired once `cover` is checked whole."""

    cover: SegmentInfo
    covered: tuple[SegmentInfo, ...]


@dataclasses.dataclass(frozen=True)
class CompactionPlan:
    deletions: tuple[str, ...] = ()
    merges: tuple[Merge, ...] = ()
    syntheses: tuple[Synthesis, ...] = ()
    earliest_ns: int | None = None  # the earliest restorable time once the plan has run
    deleted_bytes: int = 0
    covered: tuple[Covered, ...] = ()
    markers: tuple[str, ...] = ()  # retirement markers (layout.retired_key), written before deleting
    kept: tuple[tuple[str, tuple[str, ...]], ...] = ()  # snapshots before the window kept, and by which rules

    @property
    def empty(self) -> bool:
        return not (self.deletions or self.merges or self.syntheses or self.covered)


def retain(listing: Listing, policy: Policy, now_ns: int) -> CompactionPlan:
    gens = [g for g in listing.generations if g.snapshots]
    if not gens:
        return CompactionPlan()
    deleted: dict[str, int] = {}
    markers: list[str] = []
    earliest = gens[0].start_ms * MS if gens[0].start_ms is not None else None
    reasons = _kept_snapshots(gens, policy, now_ns)
    kept_old: list[tuple[str, tuple[str, ...]]] = []
    if policy.retention_s is not None:
        cut = _retention_cut(gens, now_ns - int(policy.retention_s * 1e9))
        if cut is not None:
            keep_from, anchor = cut
            for g in gens[:keep_from]:
                for obj in g.snapshots + g.segments:
                    if obj.key not in reasons:
                        deleted[obj.key] = obj.size
                if any(s.key in reasons for s in g.snapshots):  # kept: its history is gone
                    _mark(markers, deleted, g, g.last_txid, g.end_ms)  # type: ignore[arg-type]
                else:
                    deleted.update((r.key, 0) for r in g.retired)
            g = gens[keep_from]
            before = len(deleted)
            for s in g.snapshots:
                if s.txid < anchor.txid and s.key not in reasons:
                    deleted[s.key] = s.size
            for seg in g.segments:
                if seg.last_txid <= anchor.txid:
                    deleted[seg.key] = seg.size
            if len(deleted) > before or any(s.key in reasons and s.txid < anchor.txid for s in g.snapshots):
                _mark(markers, deleted, g, anchor.txid, anchor.time_ms)
            earliest = anchor.time_ms * MS
            kept_old = [(s.key, reasons[s.key]) for gg in gens[:keep_from + 1] for s in gg.snapshots
                        if s.key in reasons and (gg is not g or s.txid < anchor.txid)]
    kept = [g for g in gens if any(o.key not in deleted for o in g.snapshots)]
    covered = [c for g in kept for c in _covered(g, deleted)]
    skip = dict(deleted) | {s.key: s.size for c in covered for s in c.covered}
    merges = [m for g in kept for m in _merges(g, policy, now_ns, skip)]
    syntheses = _newest_first([s for g in kept for s in _syntheses(g, policy, skip)], MAX_SYNTHESES_PER_PASS)
    return CompactionPlan(tuple(sorted(deleted)), tuple(merges), tuple(syntheses), earliest,
                          sum(deleted.values()), tuple(covered), tuple(markers), tuple(kept_old))


# restic's `forget --keep-*`: for the last N calendar buckets (UTC) that hold a snapshot, the
# newest snapshot of each; rules are ORed.
_BUCKETS = {
    "hourly": lambda d: (d.year, d.month, d.day, d.hour),
    "daily": lambda d: (d.year, d.month, d.day),
    "weekly": lambda d: d.isocalendar()[:2],
    "monthly": lambda d: (d.year, d.month),
    "yearly": lambda d: (d.year,),
}


def _kept_snapshots(gens: list[Generation], policy: Policy, now_ns: int) -> dict[str, tuple[str, ...]]:
    """Snapshot key -> the rules that keep it beyond the window ("named", "hourly", ...)."""
    import datetime as dt

    reasons: dict[str, list[str]] = {}
    snaps = sorted((s for g in gens for s in g.snapshots), key=lambda s: (s.time_ms, s.txid), reverse=True)
    for s in snaps:
        if s.name and (s.keep_until_ms is None or s.keep_until_ms * MS > now_ns):
            reasons.setdefault(s.key, []).append("named")
    for rule, n in policy.keep:
        seen: set = set()
        for s in snaps:
            if len(seen) >= n:
                break
            bucket = _BUCKETS[rule](dt.datetime.fromtimestamp(s.time_ms / 1000, dt.timezone.utc))
            if bucket not in seen:
                seen.add(bucket)
                reasons.setdefault(s.key, []).append(rule)
    return {k: tuple(v) for k, v in reasons.items()}


def _mark(markers: list[str], deleted: dict[str, int], g: Generation, txid: int, time_ms: int) -> None:
    """Retire g's history up to txid: a marker (unless there is one already), and the older
    markers it supersedes go."""
    key = layout.retired_key(g.name, txid, time_ms)
    if all(r.key != key for r in g.retired):
        markers.append(key)
    deleted.update((r.key, 0) for r in g.retired if r.txid < txid)


def _newest_first(syntheses: list[Synthesis], cap: int) -> list[Synthesis]:
    """At most `cap` builds: chains of syntheses (one on an existing snapshot, then those
    built on it) with the most recent history first, each chain in its own order.

    A chain longer than the room left would build its oldest points and leave the newest
    history (what the latest restore replays) for later passes, so it starts with a leap: one
    build from the chain's base straight to its newest point, then as much of the chain as
    fits; the next passes fill in the middle (the leap then ends their count).
    """
    chains: list[list[Synthesis]] = []
    for s in syntheses:
        if s.base is None and chains:
            chains[-1].append(s)
        else:
            chains.append([s])
    chains.sort(key=lambda c: (c[0].generation, c[0].base.txid if c[0].base else 0), reverse=True)
    out: list[Synthesis] = []
    for chain in chains:
        room = cap - len(out)
        if room <= 0:
            break
        if len(chain) > room:
            leap = Synthesis(chain[0].generation, chain[0].base, tuple(seg for s in chain for seg in s.segments))
            out += [leap, *chain[:room - 1]]
        else:
            out += chain
    return out


def _covered(gen: Generation, deleted: dict[str, int]) -> list[Covered]:
    """Segments lying wholly inside another one of the generation."""
    segs = sorted((s for s in gen.segments if s.key not in deleted), key=lambda s: (s.first_txid, -s.last_txid))
    found: dict[str, list[SegmentInfo]] = {}
    covers: dict[str, SegmentInfo] = {}
    cover: SegmentInfo | None = None
    for seg in segs:
        if cover is not None and seg.last_txid <= cover.last_txid:
            found.setdefault(cover.key, []).append(seg)
            covers[cover.key] = cover
        else:
            cover = seg
    return [Covered(covers[k], tuple(v)) for k, v in found.items()]


def _retention_cut(gens: list[Generation], window_ns: int) -> tuple[int, SnapshotInfo] | None:
    """(index of the generation a restore at the window's start uses, its newest snapshot
    strictly before that start), or None when the window reaches back past everything."""
    for i in range(len(gens) - 1, -1, -1):
        # Names hold milliseconds rounded down: only a snapshot of an earlier millisecond is
        # surely at or before the window's start (restore's own rule, plan._snapshot_for_time).
        usable = [s for s in gens[i].snapshots if (s.time_ms + 1) * MS <= window_ns]
        if usable:
            return i, max(usable, key=lambda s: s.txid)
    return None


def _merges(gen: Generation, policy: Policy, now_ns: int, deleted: dict[str, int]) -> list[Merge]:
    """Runs of consecutive segments in one completed bucket, at the coarsest level they are old enough for."""
    segs = sorted((s for s in gen.segments if s.key not in deleted), key=lambda s: (s.first_txid, s.last_txid))
    out: list[Merge] = []
    run: list[SegmentInfo] = []
    run_bucket: tuple[float, int] | None = None

    def flush() -> None:
        if len(run) >= 2:
            first, last = run[0], run[-1]
            key = layout.segment_key(gen.name, first.first_txid, last.last_txid, first.t0_ms * MS, last.t1_ms * MS)
            out.append(Merge(tuple(run), key))
        run.clear()

    for seg in segs:
        bucket = _bucket(seg, policy, now_ns)
        if (bucket is not None and bucket == run_bucket and run and seg.first_txid == run[-1].last_txid + 1
                and sum(s.size for s in run) + seg.size <= MAX_MERGED_BYTES):
            run.append(seg)
            continue
        flush()
        run_bucket = bucket
        if bucket is not None:
            run.append(seg)
    flush()
    return out


def _bucket(seg: SegmentInfo, policy: Policy, now_ns: int) -> tuple[float, int] | None:
    """(span, index) of the coarsest bucket the segment's first commit falls in that ended at
    least its level's age ago, or None. By the first commit alone: a segment may run past its
    bucket's end (an upload after an outage spans it), and the merged object then does too."""
    now_ms = now_ns // MS
    best = None
    for age_s, span_s in policy.merge_levels:
        span_ms = int(span_s * 1000)
        index = seg.t0_ms // span_ms
        if (index + 1) * span_ms + age_s * 1000 <= now_ms:
            best = (span_s, index)
    return best


def _syntheses(gen: Generation, policy: Policy, deleted: dict[str, int]) -> list[Synthesis]:
    """Snapshots where the segments after the previous one outgrow ratio x its size."""
    if policy.snapshot_ratio <= 0:
        return []
    snaps = sorted((s for s in gen.snapshots if s.key not in deleted), key=lambda s: s.txid)
    segs = sorted((s for s in gen.segments if s.key not in deleted), key=lambda s: (s.first_txid, -s.last_txid))
    out: list[Synthesis] = []
    base: SnapshotInfo | None = snaps[0] if snaps else None
    if base is None:
        return []
    base_size, pos, acc, run = base.size, base.txid, 0, []
    later = [s for s in snaps[1:]]
    for seg in segs:
        if seg.last_txid <= pos or seg.first_txid > pos + 1:
            if seg.first_txid > pos + 1:
                break  # a gap: nothing after it can be built (restore reports the gap)
            continue
        while later and later[0].txid <= seg.last_txid:  # an existing snapshot resets the count
            nxt = later.pop(0)
            if nxt.txid >= pos:
                base, base_size, acc, run = nxt, nxt.size, 0, []
                pos = nxt.txid
        if seg.last_txid <= pos:
            continue
        run.append(seg)
        acc += seg.size
        pos = seg.last_txid
        if acc * SEGMENT_REPLAY_COST >= max(policy.snapshot_ratio * base_size, policy.min_snapshot_history_bytes):
            out.append(Synthesis(gen.name, base, tuple(run)))
            base, acc, run = None, 0, []  # the next one builds on this one
            # its size is not known before it is built: assume the database did not shrink
    return out
