"""Hypothesis strategies shared by the tests of the pure core (segments, layout, plans).

Listings come with their ground truth (`ReplicaCase`): which txids each generation holds,
when each was committed, where the snapshots are, so plan properties can be stated against
the model rather than against the code under test.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from hypothesis import strategies as st

from replicator import layout
from replicator.layout import SNAPSHOT_NAME, Listing
from replicator.segment import Transaction
from replicator.storage.base import ObjectInfo

PAGE_SIZE = 512  # the smallest SQLite page size keeps examples small and fast
MAX_PGNO = 16
U64 = st.integers(0, 2**64 - 1)
# 13-digit milliseconds in key names: anything up to the year 2286 fits.
MAX_KEY_TIME_NS = 9_999_999_999_998 * 1_000_000
EPOCH_2020_MS = 1_577_836_800_000
EPOCH_2030_MS = 1_893_456_000_000


def pages(page_size: int = PAGE_SIZE) -> st.SearchStrategy[bytes]:
    """One page: mostly a repeated pattern (compressible, like real pages) or random bytes."""
    patterned = st.tuples(st.binary(min_size=1, max_size=8), st.integers(0, 255)).map(
        lambda t: (t[0] * page_size)[: page_size - 1] + bytes([t[1]]))
    return st.one_of(patterned, st.binary(min_size=page_size, max_size=page_size))


@st.composite
def transaction_runs(draw: st.DrawFn, min_size: int = 1, max_size: int = 6,
                     page_size: int = PAGE_SIZE, first_txid: int | None = None) -> list[Transaction]:
    """Consecutive transactions with non-decreasing times, as a segment holds them."""
    txid = first_txid if first_txid is not None else draw(st.integers(1, 2**48))
    time_ns = draw(st.integers(0, 2**62))
    n = draw(st.integers(min_size, max_size))
    txs = []
    for i in range(n):
        pgnos = draw(st.lists(st.integers(1, MAX_PGNO), unique=True, max_size=4))
        db_size = draw(st.integers(max(pgnos, default=1), MAX_PGNO))
        tx_pages = [(p, draw(pages(page_size))) for p in sorted(pgnos)]
        txs.append(Transaction(txid + i, time_ns, db_size, draw(U64), tx_pages))
        time_ns += draw(st.integers(0, 10**9))
    return txs


generation_names = st.builds(
    layout.new_generation,
    st.integers(EPOCH_2020_MS, EPOCH_2030_MS).map(lambda ms: ms * 1_000_000),
    st.text("0123456789abcdef", min_size=6, max_size=6),
)
snapshot_names = st.none() | st.from_regex(SNAPSHOT_NAME, fullmatch=True)
txids = U64
key_times_ns = st.integers(0, MAX_KEY_TIME_NS)


# -- listings with ground truth -------------------------------------------------------------


@dataclasses.dataclass
class GenSpec:
    """One generation as the model knows it."""

    name: str
    times_ms: dict[int, int]  # txid -> commit time (ms); includes the first snapshot's txid
    snapshots: list[int]  # txids, ascending; the first is the generation's start
    segments: list[tuple[int, int]]  # (first, last) txids, possibly overlapping

    @property
    def first_txid(self) -> int:
        return self.snapshots[0]

    @property
    def last_txid(self) -> int:
        return max([self.snapshots[-1]] + [b for _, b in self.segments])

    @property
    def start_ms(self) -> int:
        return self.times_ms[self.snapshots[0]]

    def objects(self) -> list[ObjectInfo]:
        out = [ObjectInfo(layout.snapshot_key(self.name, t, self.times_ms[t] * 1_000_000), 100 + t)
               for t in self.snapshots]
        out += [ObjectInfo(layout.segment_key(self.name, a, b, self.times_ms[a] * 1_000_000,
                                              self.times_ms[b] * 1_000_000), 10 + b - a)
                for a, b in self.segments]
        return out


@dataclasses.dataclass
class ReplicaCase:
    gens: list[GenSpec]
    order_seed: int  # listings arrive in any order: parse_listing must sort

    def objects(self) -> list[ObjectInfo]:
        objs = [o for g in self.gens for o in g.objects()]
        random.Random(self.order_seed).shuffle(objs)
        return objs

    @property
    def listing(self) -> Listing:
        return layout.parse_listing(self.objects())

    @property
    def last_time_ms(self) -> int:
        return max(t for g in self.gens for t in g.times_ms.values())

    def gen(self, name: str) -> GenSpec:
        return next(g for g in self.gens if g.name == name)


def _partition(draw: st.DrawFn, first: int, last: int) -> list[tuple[int, int]]:
    """Consecutive runs covering first..last."""
    if first > last:
        return []
    inner = list(range(first + 1, last + 1))
    cuts = sorted(draw(st.lists(st.sampled_from(inner), unique=True)) if inner else [])
    bounds = [first] + cuts + [last + 1]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(len(bounds) - 1)]


@st.composite
def replica_cases(draw: st.DrawFn, max_generations: int = 3, max_txs: int = 12,
                  overlaps: bool = True) -> ReplicaCase:
    """Generations with snapshots and a contiguous chain of segments after the first snapshot.

    TXIDs increase across generations (never reused, sometimes skipping some), names sort by
    creation time, several commits may share a millisecond, and merged segments may overlap
    the ones they were merged from (a compactor that has not deleted the originals yet).
    """
    txid = draw(st.integers(1, 1000))
    now_ms = draw(st.integers(EPOCH_2020_MS, EPOCH_2030_MS))
    gens = []
    for _ in range(draw(st.integers(1, max_generations))):
        name = layout.new_generation(now_ms * 1_000_000, draw(st.text("0123456789abcdef", min_size=6, max_size=6)))
        n = draw(st.integers(0, max_txs))
        times: dict[int, int] = {}
        for t in range(txid, txid + n + 1):
            times[t] = now_ms
            now_ms += draw(st.integers(0, 3))
        last = txid + n
        later_snaps = draw(st.lists(st.integers(txid + 1, last), unique=True)) if n else []
        segs = _partition(draw, txid + 1, last)
        if overlaps and len(segs) >= 2 and draw(st.booleans()):
            i = draw(st.integers(0, len(segs) - 2))
            j = draw(st.integers(i + 1, len(segs) - 1))
            segs.append((segs[i][0], segs[j][1]))  # merged, originals still present
        gens.append(GenSpec(name, times, sorted({txid, *later_snaps}), sorted(segs)))
        txid = last + 1 + draw(st.integers(0, 3))
        now_ms += 1000 + draw(st.integers(0, 10_000))  # next generation: a later second
    return ReplicaCase(gens, draw(st.integers(0, 2**32)))


def covered_txids(case: ReplicaCase) -> set[int]:
    return {t for g in case.gens for t in range(g.first_txid, g.last_txid + 1)}


def split(seq: Sequence, cuts: Sequence[int]) -> list[list]:
    """seq cut at the given sorted indices (0 < cut < len)."""
    bounds = [0, *cuts, len(seq)]
    return [list(seq[bounds[i]:bounds[i + 1]]) for i in range(len(bounds) - 1)]
