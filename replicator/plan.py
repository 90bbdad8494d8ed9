"""Pure restore planning: from a listing and a target to the objects a restore needs.

No I/O: everything comes from object names (see layout.py), so a plan costs one LIST.
"""

from __future__ import annotations

import dataclasses

from .durations import format_timestamp
from .errors import NothingToRestore, RestoreError
from .layout import Generation, Listing, SegmentInfo, SnapshotInfo


@dataclasses.dataclass(frozen=True)
class Target:
    """What to restore to: a txid, a time (ns since epoch), a named snapshot's state, or
    none of them for the latest."""

    txid: int | None = None
    time_ns: int | None = None
    snapshot: str | None = None  # `snapshot --name`: exactly that snapshot's state

    def describe(self) -> str:
        if self.snapshot is not None:
            return f"snapshot {self.snapshot}"
        if self.txid is not None:
            return f"txid {self.txid}"
        if self.time_ns is not None:
            return format_timestamp(self.time_ns)
        return "latest"


@dataclasses.dataclass(frozen=True)
class Plan:
    generation: str
    snapshot: SnapshotInfo
    segments: tuple[SegmentInfo, ...]
    stop_txid: int | None  # apply transactions up to and including this txid
    stop_time_ns: int | None  # ...and only those observed at or before this time
    expected_txid: int | None  # known from names for txid/latest targets

    @property
    def download_bytes(self) -> int:
        """What the restore downloads (compressed object sizes)."""
        return self.snapshot.size + sum(s.size for s in self.segments)


def _restorable(listing: Listing) -> list[Generation]:
    return [g for g in listing.generations if g.snapshots]


def _ms_to_ns(ms: int) -> int:
    return ms * 1_000_000


def plan_restore(listing: Listing, target: Target, now_ns: int | None = None) -> Plan:
    gens = _restorable(listing)
    if not gens:
        raise NothingToRestore("replica holds no snapshot: nothing to restore")
    if target.snapshot is not None:
        snap = _named_snapshot(gens, target.snapshot)
        return Plan(snap.generation, snap, (), snap.txid, None, snap.txid)
    if target.txid is not None:
        gen = _generation_for_txid(gens, target.txid)
        retired = gen.retired_upto
        if retired is not None and target.txid < retired.txid and target.txid not in {s.txid for s in gen.snapshots}:
            raise RestoreError(f"txid {target.txid} was retired by the retention window",
                               _earliest_hint(listing, gens))
        snaps = [s for s in gen.snapshots if s.txid <= target.txid]
        snapshot = snaps[-1]
        end_txid = target.txid
    elif target.time_ns is not None:
        gen = _generation_for_time(listing, gens, target.time_ns, now_ns)
        snapshot = _snapshot_for_time(gen, target.time_ns)
        end_txid = gen.last_txid or snapshot.txid
    else:
        # The newest history is the generation started last: txids never repeat within a
        # replica, so that is the one whose first txid is highest (the listing's order).
        # Never "the highest last txid": an older generation that ran long would win.
        gen = gens[-1]
        snapshot = gen.snapshots[-1]
        end_txid = gen.last_txid or snapshot.txid
    segments = _chain(gen, snapshot.txid, end_txid, target.time_ns)
    expected = None if target.time_ns is not None else end_txid
    return Plan(gen.name, snapshot, tuple(segments), end_txid, target.time_ns, expected)


def _named_snapshot(gens: list[Generation], name: str) -> SnapshotInfo:
    """The newest snapshot carrying `name` (a name given twice is the newer's)."""
    named = [s for g in gens for s in g.snapshots if s.name == name]
    if named:
        return max(named, key=lambda s: s.txid)
    names = sorted({s.name for g in gens for s in g.snapshots if s.name})
    raise RestoreError(f"no snapshot named {name!r}",
                       "names: " + ", ".join(names) if names else "the replica holds no named snapshot")


def _generation_for_txid(gens: list[Generation], txid: int) -> Generation:
    for gen in reversed(gens):
        if (gen.first_txid or 0) <= txid <= (gen.last_txid or 0):
            return gen
    ranges = ", ".join(f"{g.first_txid}-{g.last_txid}" for g in gens)
    raise RestoreError(f"txid {txid} is not in the replica", f"restorable txids: {ranges}")


def _generation_for_time(listing: Listing, gens: list[Generation], time_ns: int,
                         now_ns: int | None) -> Generation:
    if now_ns is not None and time_ns > now_ns:
        raise RestoreError(f"{format_timestamp(time_ns)} is in the future",
                           "omit --timestamp to restore the latest state")
    candidates = [g for g in gens if _ms_to_ns(g.start_ms or 0) <= time_ns]
    start = candidates[-1].restorable_from_ms if candidates else None
    if start is None or time_ns < _ms_to_ns(start):
        # Before the first snapshot, or in history retention retired (a kept snapshot alone
        # would silently stand for states it does not hold): refused, naming what is left.
        raise RestoreError(f"{format_timestamp(time_ns)} is before the earliest restorable point",
                           _earliest_hint(listing, gens))
    return candidates[-1]


def _earliest_hint(listing: Listing, gens: list[Generation]) -> str:
    starts = [g.restorable_from_ms for g in gens if g.restorable_from_ms is not None]
    kept = [s for g in gens if g.retired_upto is not None for s in g.snapshots if s.txid < g.retired_upto.txid]
    hint = f"earliest is {format_timestamp(_ms_to_ns(min(starts)))}" if starts else "nothing restorable by time"
    if kept:
        hint += "; snapshots kept from before it restore by --txid " + ", ".join(str(s.txid) for s in kept[:5])
    return hint


def _snapshot_for_time(gen: Generation, time_ns: int) -> SnapshotInfo:
    # Names hold milliseconds rounded down: a snapshot in the target's own millisecond may
    # be later than the target, so prefer one strictly earlier when there is one.
    strict = [s for s in gen.snapshots if _ms_to_ns(s.time_ms + 1) <= time_ns]
    if strict:
        return strict[-1]
    return [s for s in gen.snapshots if _ms_to_ns(s.time_ms) <= time_ns][0]


def _chain(gen: Generation, after_txid: int, end_txid: int, time_ns: int | None) -> list[SegmentInfo]:
    """Segments covering after_txid+1..end_txid; overlaps (from re-uploads) are allowed."""
    chain: list[SegmentInfo] = []
    pos = after_txid
    while pos < end_txid:
        covering = [s for s in gen.segments if s.first_txid <= pos + 1 <= s.last_txid]
        if not covering and time_ns is not None and chain and _ms_to_ns(chain[-1].t1_ms - 1) >= time_ns:
            break  # t1 is rounded up: txid `pos`, and so every missing one, came after the target
        if not covering:
            raise RestoreError(f"replica is missing transactions after txid {pos} in generation {gen.name}",
                               f"restore with --txid {pos} to get what is there")
        best = max(covering, key=lambda s: s.last_txid)
        if time_ns is not None and _ms_to_ns(best.t0_ms) > time_ns:
            break  # every transaction in it is after the target
        chain.append(best)
        pos = best.last_txid
    return chain
