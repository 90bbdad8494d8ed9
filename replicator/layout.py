"""Every key name of a replica: built and parsed here and nowhere else.

    replica.json                                    format version, db name, page size
    lease.json                                      single-writer lease
    compactor.lease.json                            the compactor's lease (one compactor per replica)
    generations/<gen>/snapshots/<txid>_<ms>[_<name>].snap.zst
    generations/<gen>/segments/<first>-<last>_<t0ms>-<t1ms>.seg.zst

TXIDs are 16 hex digits and times 13-digit milliseconds, so lexical order is txid order and
a listing alone is enough to plan any restore.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
from typing import Iterable

from .storage.base import ObjectInfo

REPLICA_META = "replica.json"
LEASE = "lease.json"
COMPACTOR_LEASE = "compactor.lease.json"  # the compactor's own: it and the replicator run side by side
GENERATIONS = "generations/"
_GEN = re.compile(r"^\d{8}T\d{6}(\d{3})?Z-[0-9a-f]{6}$")
_SNAP = re.compile(r"^([0-9a-f]{16})_(\d{13})(?:_([A-Za-z0-9._-]{1,64})(?:~(\d{13}))?)?\.snap\.zst$")
_SEG = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})_(\d{13})-(\d{13})\.seg\.zst$")
_RETIRED = re.compile(r"^([0-9a-f]{16})_(\d{13})\.retired$")
SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def new_generation(now_ns: int, token: str | None = None) -> str:
    """Sortable by creation time (to the millisecond); the random suffix keeps starts apart."""
    when = dt.datetime.fromtimestamp(now_ns // 1_000_000_000, dt.timezone.utc)
    millis = (now_ns // 1_000_000) % 1000
    return when.strftime("%Y%m%dT%H%M%S") + f"{millis:03d}Z-" + (token or secrets.token_hex(3))


def is_generation(name: str) -> bool:
    return bool(_GEN.match(name))


def _ms_floor(ns: int) -> int:
    return ns // 1_000_000


def _ms_ceil(ns: int) -> int:
    return -(-ns // 1_000_000)


def snapshot_key(gen: str, txid: int, time_ns: int, name: str | None = None,
                 keep_until_ms: int | None = None) -> str:
    """A named snapshot may carry the time until which retention keeps it (`--keep-for`):
    in the name, so that the decision needs no GET."""
    suffix = f"_{name}" if name else ""
    if name and keep_until_ms is not None:
        suffix += f"~{keep_until_ms:013d}"
    return f"{GENERATIONS}{gen}/snapshots/{txid:016x}_{_ms_floor(time_ns):013d}{suffix}.snap.zst"


def segment_key(gen: str, first: int, last: int, t0_ns: int, t1_ns: int) -> str:
    # t0 rounds down and t1 up, so a range test on names never excludes a needed segment.
    return (f"{GENERATIONS}{gen}/segments/{first:016x}-{last:016x}_"
            f"{_ms_floor(t0_ns):013d}-{_ms_ceil(t1_ns):013d}.seg.zst")


def retired_key(gen: str, txid: int, time_ms: int) -> str:
    """An empty marker: the generation's history up to `txid` (committed by `time_ms`) was
    retired by retention, but for the snapshots still listed. A restore to a time or txid
    before it is refused instead of silently returning a kept snapshot's older state."""
    return f"{GENERATIONS}{gen}/retired/{txid:016x}_{time_ms:013d}.retired"


@dataclasses.dataclass(frozen=True)
class RetiredInfo:
    generation: str
    txid: int
    time_ms: int
    key: str
    size: int = 0


@dataclasses.dataclass(frozen=True)
class SnapshotInfo:
    generation: str
    txid: int
    time_ms: int
    name: str | None
    key: str
    size: int
    keep_until_ms: int | None = None  # a named snapshot's --keep-for, as a time


@dataclasses.dataclass(frozen=True)
class SegmentInfo:
    generation: str
    first_txid: int
    last_txid: int
    t0_ms: int
    t1_ms: int
    key: str
    size: int


@dataclasses.dataclass
class Generation:
    name: str
    snapshots: list[SnapshotInfo] = dataclasses.field(default_factory=list)
    segments: list[SegmentInfo] = dataclasses.field(default_factory=list)
    retired: list[RetiredInfo] = dataclasses.field(default_factory=list)

    @property
    def retired_upto(self) -> RetiredInfo | None:
        """The newest retirement marker: history up to it is gone but for listed snapshots."""
        return max(self.retired, key=lambda r: r.txid) if self.retired else None

    @property
    def first_txid(self) -> int | None:
        return self.snapshots[0].txid if self.snapshots else None

    @property
    def last_txid(self) -> int | None:
        txids = [s.txid for s in self.snapshots] + [s.last_txid for s in self.segments] + [r.txid for r in self.retired]
        return max(txids) if txids else None

    @property
    def start_ms(self) -> int | None:
        return self.snapshots[0].time_ms if self.snapshots else None

    @property
    def end_ms(self) -> int | None:
        times = [s.time_ms for s in self.snapshots] + [s.t1_ms for s in self.segments] + [r.time_ms for r in self.retired]
        return max(times) if times else None

    @property
    def restorable_from_ms(self) -> int | None:
        """Where timestamp restores may start: the first snapshot, or past a retirement
        marker; None when retention retired all of it (only kept snapshots, by txid)."""
        r = self.retired_upto
        if r is None:
            return self.start_ms
        return r.time_ms if any(s.txid >= r.txid for s in self.snapshots) else None


@dataclasses.dataclass
class Listing:
    """What a replica holds, parsed from one LIST; generations in creation order."""

    generations: list[Generation]
    unknown: list[str] = dataclasses.field(default_factory=list)

    @property
    def last_txid(self) -> int:
        return max((g.last_txid or 0 for g in self.generations), default=0)


def parse_key(key: str, size: int = 0) -> SnapshotInfo | SegmentInfo | None:
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "generations" or not is_generation(parts[1]):
        return None
    gen, kind, name = parts[1], parts[2], parts[3]
    if kind == "snapshots" and (m := _SNAP.match(name)):
        until = int(m.group(4)) if m.group(4) else None
        return SnapshotInfo(gen, int(m.group(1), 16), int(m.group(2)), m.group(3), key, size, until)
    if kind == "segments" and (m := _SEG.match(name)):
        return SegmentInfo(gen, int(m.group(1), 16), int(m.group(2), 16), int(m.group(3)),
                           int(m.group(4)), key, size)
    return None


def parse_retired(key: str) -> RetiredInfo | None:
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "generations" or not is_generation(parts[1]) or parts[2] != "retired":
        return None
    m = _RETIRED.match(parts[3])
    return RetiredInfo(parts[1], int(m.group(1), 16), int(m.group(2)), key) if m else None


def parse_listing(objects: Iterable[ObjectInfo]) -> Listing:
    gens: dict[str, Generation] = {}
    unknown: list[str] = []
    for obj in objects:
        info = parse_key(obj.key, obj.size)
        if info is None:
            retired = parse_retired(obj.key)
            if retired is not None:
                gens.setdefault(retired.generation, Generation(retired.generation)).retired.append(retired)
            elif obj.key not in (REPLICA_META, LEASE, COMPACTOR_LEASE):
                unknown.append(obj.key)
            continue
        g = gens.setdefault(info.generation, Generation(info.generation))
        (g.snapshots if isinstance(info, SnapshotInfo) else g.segments).append(info)  # type: ignore[arg-type]
    for g in gens.values():
        g.snapshots.sort(key=lambda s: (s.txid, s.time_ms))
        g.segments.sort(key=lambda s: (s.first_txid, s.last_txid))
    # Txids only grow, also across generations, so the first snapshot's txid is the true
    # creation order; names (clock time) break ties and place snapshot-less generations.
    ordered = sorted(gens.values(), key=lambda g: (g.first_txid is None, g.first_txid or 0, g.name))
    return Listing(ordered, unknown)
