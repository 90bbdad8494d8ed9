"""Key names: built and parsed back exactly; lexical order is txid order; listings grouped."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator import layout
from replicator.layout import SegmentInfo, SnapshotInfo, parse_key, parse_listing, segment_key, snapshot_key
from replicator.storage.base import ObjectInfo
from strategies import generation_names, key_times_ns, replica_cases, snapshot_names, txids

FAST = settings(max_examples=100, deadline=None)
GEN = "20261120T100000Z-abc123"


@FAST
@given(generation_names, txids, key_times_ns, snapshot_names, st.integers(0, 2**40))
def test_snapshot_key_round_trip(gen, txid, time_ns, name, size):
    key = snapshot_key(gen, txid, time_ns, name)
    assert parse_key(key, size) == SnapshotInfo(gen, txid, time_ns // 1_000_000, name, key, size)


@FAST
@given(generation_names, txids, txids, key_times_ns, key_times_ns)
def test_segment_key_round_trip(gen, a, b, t0, t1):
    first, last = min(a, b), max(a, b)
    t0, t1 = min(t0, t1), max(t0, t1)
    key = segment_key(gen, first, last, t0, t1)
    info = parse_key(key, 5)
    assert info == SegmentInfo(gen, first, last, t0 // 1_000_000, -(-t1 // 1_000_000), key, 5)
    # Rounded outwards: the named range always contains the real one.
    assert info.t0_ms * 1_000_000 <= t0 and t1 <= info.t1_ms * 1_000_000


def test_time_rounding():
    key = segment_key(GEN, 1, 2, 1_999_999, 2_000_001)
    assert key.endswith("_0000000000001-0000000000003.seg.zst")
    assert snapshot_key(GEN, 1, 1_999_999).endswith("_0000000000001.snap.zst")


@FAST
@given(generation_names, txids, txids, key_times_ns, key_times_ns, snapshot_names, snapshot_names)
def test_lexical_order_is_txid_order(gen, a, b, ta, tb, na, nb):
    if a == b:
        return
    lo, hi = sorted((a, b))
    # Whatever the times and names, the txid decides.
    assert (snapshot_key(gen, lo, ta, na) < snapshot_key(gen, hi, tb, nb))
    assert segment_key(gen, lo, hi, min(ta, tb), max(ta, tb)) < segment_key(gen, hi, hi, max(ta, tb), max(ta, tb))


@FAST
@given(st.integers(0, 2**32), st.integers(0, 2**32), st.text("0123456789abcdef", min_size=6, max_size=6),
       st.text("0123456789abcdef", min_size=6, max_size=6))
def test_generation_names_sort_by_creation_second(s1, s2, tok1, tok2):
    g1 = layout.new_generation(s1 * 1_000_000_000, tok1)
    g2 = layout.new_generation(s2 * 1_000_000_000, tok2)
    assert layout.is_generation(g1) and layout.is_generation(g2)
    if s1 < s2:
        assert g1 < g2
    elif s1 > s2:
        assert g1 > g2


def test_new_generation_random_suffix():
    a, b = layout.new_generation(0), layout.new_generation(0)
    assert a.startswith("19700101T000000") and layout.is_generation(a)
    assert a != b


@pytest.mark.parametrize("key", [
    "replica.json",
    "generations/",
    "generations/not-a-gen/snapshots/0000000000000001_0000000000001.snap.zst",
    f"generations/{GEN}/snapshots/1_0000000000001.snap.zst",  # not fixed width
    f"generations/{GEN}/snapshots/0000000000000001_0000000000001.snap",
    f"generations/{GEN}/snapshots/0000000000000001_0000000000001_bad/name.snap.zst",
    f"generations/{GEN}/snapshots/000000000000000G_0000000000001.snap.zst",
    f"generations/{GEN}/segments/0000000000000001_0000000000001.snap.zst",  # wrong folder
    f"generations/{GEN}/snapshots/0000000000000001-0000000000000002_0000000000001-0000000000002.seg.zst",
    f"generations/{GEN}/segments/0000000000000001-0000000000000002_0000000000001.seg.zst",
    f"generations/{GEN}/segments/extra/0000000000000001-0000000000000002_0000000000001-0000000000002.seg.zst",
    f"prefix/generations/{GEN}/segments/0000000000000001-0000000000000002_0000000000001-0000000000002.seg.zst",
])
def test_foreign_keys_do_not_parse(key):
    assert parse_key(key) is None


@settings(max_examples=60, deadline=None)
@given(replica_cases())
def test_parse_listing_groups_and_sorts(case):
    listing = case.listing
    assert [g.name for g in listing.generations] == [g.name for g in case.gens]  # creation order
    assert listing.unknown == []
    for got, spec in zip(listing.generations, case.gens):
        assert [s.txid for s in got.snapshots] == spec.snapshots
        assert [(s.first_txid, s.last_txid) for s in got.segments] == sorted(spec.segments)
        assert all(s.generation == spec.name for s in got.snapshots + got.segments)
        assert got.first_txid == spec.first_txid
        assert got.last_txid == spec.last_txid
        assert got.start_ms == spec.start_ms
        assert got.end_ms == max(spec.times_ms.values())
    assert listing.last_txid == case.gens[-1].last_txid


def test_unknown_keys_are_reported_and_metadata_is_not():
    keys = [
        "replica.json",
        "lease.json",
        snapshot_key(GEN, 1, 5_000_000),
        "generations/" + GEN + "/snapshots/garbage.tmp",
        "generations/junk",
        segment_key(GEN, 2, 3, 6_000_000, 7_000_000),
        "notes.txt",
    ]
    random.Random(1).shuffle(keys)
    listing = parse_listing(ObjectInfo(k, 1) for k in keys)
    assert sorted(listing.unknown) == sorted(["generations/" + GEN + "/snapshots/garbage.tmp",
                                              "generations/junk", "notes.txt"])
    assert len(listing.generations) == 1
    gen = listing.generations[0]
    assert (len(gen.snapshots), len(gen.segments)) == (1, 1)
    assert (gen.first_txid, gen.last_txid, gen.start_ms, gen.end_ms) == (1, 3, 5, 7)


def test_empty_listing():
    listing = parse_listing([])
    assert listing.generations == [] and listing.unknown == [] and listing.last_txid == 0


def test_generation_with_segments_only():
    listing = parse_listing([ObjectInfo(segment_key(GEN, 2, 3, 6_000_000, 7_000_000), 1)])
    gen = listing.generations[0]
    assert gen.first_txid is None and gen.start_ms is None
    assert gen.last_txid == 3 and gen.end_ms == 7


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="/._-0123456789abcdefTZxyz~", max_size=120), max_size=30))
def test_a_hostile_listing_parses_into_known_kinds_or_unknown(keys):
    """Names from a LIST are the attacker's too: each is a snapshot, segment or marker whose
    fields parse, or goes to `unknown`; nothing raises."""
    from replicator.storage import ObjectInfo

    listing = layout.parse_listing(ObjectInfo(k, 0) for k in keys)
    for g in listing.generations:
        assert layout.is_generation(g.name)
        for s in g.segments:
            assert s.first_txid <= s.last_txid
