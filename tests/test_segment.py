"""Segment and snapshot codecs: round trips, merging, and every kind of damage detected."""

from __future__ import annotations

import io
import itertools
import os
import time
from unittest import mock

import pytest
import xxhash
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator import segment
from replicator.dbhash import DbChecksum, file_checksum
from replicator.errors import CorruptObject
from replicator.segment import (
    HEADER_SIZE,
    TRAILER_SIZE,
    SegmentEncoder,
    SnapshotReader,
    SnapshotWriter,
    Transaction,
    decode_segment,
    encode_segment,
    merge_segments,
)
from strategies import PAGE_SIZE, generation_names, pages, split, transaction_runs

GEN = "20261120T100000Z-abc123"
KEY = "generations/20261120T100000Z-abc123/segments/x.seg.zst"
FAST = settings(max_examples=40, deadline=None)


def plain(txs) -> list[tuple]:
    return [(t.txid, t.time_ns, t.db_size, t.db_checksum, [(p, bytes(pg)) for p, pg in t.pages])
            for t in txs]


def small_segment() -> tuple[bytes, list[Transaction]]:
    txs = [Transaction(10, 1_000, 3, 0xAB, [(1, b"a" * PAGE_SIZE), (3, bytes(range(256)) * 2)]),
           Transaction(11, 2_000, 4, 0xCD, [(4, b"z" * PAGE_SIZE)]),
           Transaction(12, 3_000, 4, 0xEF, [])]
    return encode_segment(GEN, PAGE_SIZE, txs), txs


# -- segments ---------------------------------------------------------------------------


@FAST
@given(generation_names, transaction_runs())
def test_segment_round_trip(gen, txs):
    data = encode_segment(gen, PAGE_SIZE, txs)
    header, out = decode_segment(data, KEY)
    assert plain(out) == plain(txs)
    assert header.magic == segment.SEGMENT_MAGIC
    assert header.generation == gen
    assert header.page_size == PAGE_SIZE
    assert (header.first_txid, header.last_txid) == (txs[0].txid, txs[-1].txid)
    assert (header.first_time_ns, header.last_time_ns) == (txs[0].time_ns, txs[-1].time_ns)
    assert header.db_size == txs[-1].db_size
    assert segment.parse_trailer(data).db_checksum == txs[-1].db_checksum


def test_encoder_is_reusable():
    _, txs = small_segment()
    enc = SegmentEncoder()
    assert enc.encode(GEN, PAGE_SIZE, txs) == enc.encode(GEN, PAGE_SIZE, txs) == encode_segment(GEN, PAGE_SIZE, txs)


def test_encode_refuses_empty_and_long_generation():
    with pytest.raises(ValueError):
        encode_segment(GEN, PAGE_SIZE, [])
    with pytest.raises(ValueError, match="32 bytes"):
        encode_segment("g" * 33, PAGE_SIZE, small_segment()[1])


@FAST
@given(transaction_runs(min_size=2, max_size=8), st.data())
def test_merge_of_consecutive_segments_is_their_concatenation(txs, data):
    cuts = sorted(data.draw(st.lists(st.integers(1, len(txs) - 1), unique=True, min_size=1)))
    parts = split(txs, cuts)
    merged = merge_segments([encode_segment(GEN, PAGE_SIZE, p) for p in parts])
    header, out = decode_segment(merged, KEY)
    assert plain(out) == plain(txs)
    whole_header, _ = decode_segment(encode_segment(GEN, PAGE_SIZE, txs))
    assert header == whole_header


def test_merge_of_one_segment_is_itself():
    data, _ = small_segment()
    assert merge_segments([data]) == data


def test_merge_of_merged_segments():
    _, txs = small_segment()
    a, b, c = (encode_segment(GEN, PAGE_SIZE, [t]) for t in txs)
    nested = merge_segments([merge_segments([a, b]), c])
    assert plain(decode_segment(nested)[1]) == plain(txs)


def test_merge_refuses_a_gap_overlap_or_other_generation():
    _, txs = small_segment()
    a, b, c = (encode_segment(GEN, PAGE_SIZE, [t]) for t in txs)
    with pytest.raises(ValueError, match="not consecutive"):
        merge_segments([a, c])
    with pytest.raises(ValueError, match="not consecutive"):
        merge_segments([b, a])
    with pytest.raises(ValueError, match="not consecutive"):
        merge_segments([a, a])
    other = encode_segment("20261120T100001Z-ffffff", PAGE_SIZE, [txs[1]])
    with pytest.raises(ValueError, match="not consecutive"):
        merge_segments([a, other])


def test_merge_names_the_corrupt_input():
    data, _ = small_segment()
    bad = bytearray(data)
    bad[HEADER_SIZE + 3] ^= 0xFF
    with pytest.raises(CorruptObject) as exc:
        merge_segments([bytes(bad)], keys=["segments/the-bad-one"])
    assert exc.value.key == "segments/the-bad-one"
    assert "segments/the-bad-one" in str(exc.value)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_changed_byte_is_detected_and_names_the_key(data):
    enc, _ = small_segment()
    pos = data.draw(st.integers(0, len(enc) - 1))
    bad = bytearray(enc)
    bad[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CorruptObject) as exc:
        decode_segment(bytes(bad), KEY)
    assert exc.value.key == KEY
    assert KEY in str(exc.value)


def test_changed_body_byte_is_a_body_checksum_mismatch():
    enc, _ = small_segment()
    bad = bytearray(enc)
    bad[(HEADER_SIZE + len(enc) - TRAILER_SIZE) // 2] ^= 0x40
    with pytest.raises(CorruptObject, match="body checksum mismatch") as exc:
        decode_segment(bytes(bad), KEY)
    assert str(exc.value).startswith(f"corrupt object {KEY}:")


def test_every_truncation_is_reported_as_truncated():
    enc, _ = small_segment()
    for n in range(len(enc)):
        with pytest.raises(CorruptObject, match="truncated") as exc:
            decode_segment(enc[:n], KEY)
        assert exc.value.key == KEY


def test_a_missing_middle_is_reported_as_truncated():
    enc, _ = small_segment()
    cut = enc[:HEADER_SIZE + 5] + enc[HEADER_SIZE + 6:]
    with pytest.raises(CorruptObject, match="truncated"):
        decode_segment(cut, KEY)


def test_bad_magic():
    enc, _ = small_segment()
    with pytest.raises(CorruptObject, match="bad magic"):
        decode_segment(b"NOTMAGIC" + enc[8:], KEY)
    with pytest.raises(CorruptObject, match="bad magic"):
        decode_segment(b"\0" * 200, KEY)


def test_a_snapshot_is_not_a_segment():
    out = io.BytesIO()
    w = SnapshotWriter(out, GEN, PAGE_SIZE, 1, 0, 1)
    w.write_pages(bytes(PAGE_SIZE))
    w.finish()
    with pytest.raises(CorruptObject, match="bad magic"):
        decode_segment(out.getvalue(), KEY)


def test_garbage_body_with_a_matching_hash_is_still_caught():
    enc, _ = small_segment()
    body = b"this is not zstd at all, though its hash is right"
    forged = (enc[:HEADER_SIZE] + body
              + segment._TRAILER.pack(len(body), xxhash.xxh64_intdigest(body), 0xEF, segment.TRAILER_MAGIC))
    with pytest.raises(CorruptObject) as exc:
        decode_segment(forged, KEY)
    assert exc.value.key == KEY


# -- snapshots --------------------------------------------------------------------------


def make_snapshot(image_pages: list[bytes], chunks: list[int] | None = None) -> tuple[bytes, int]:
    out = io.BytesIO()
    w = SnapshotWriter(out, GEN, PAGE_SIZE, 7, 123_456_789, len(image_pages))
    for part in split(image_pages, chunks or []):
        w.write_pages(b"".join(part))
    value = w.finish()
    return out.getvalue(), value


def read_snapshot(data: bytes, size: int | None = None, key: str = KEY):
    reader = SnapshotReader(io.BytesIO(data), key, len(data) if size is None else size)
    got = bytearray()
    for first, run in reader.pages():
        assert first == len(got) // PAGE_SIZE + 1
        got += run
    return reader, bytes(got), reader.verify()


def checksum_of(image_pages: list[bytes]) -> int:
    ck = DbChecksum(PAGE_SIZE)
    for i, p in enumerate(image_pages, 1):
        ck.update(i, p)
    return ck.value


@FAST
@given(st.lists(pages(), min_size=1, max_size=12), st.data(), st.integers(1, 64))
def test_snapshot_round_trip(image_pages, data, read_chunk):
    cuts = sorted(data.draw(st.lists(st.integers(1, len(image_pages) - 1), unique=True))
                  if len(image_pages) > 1 else [])
    snap, value = make_snapshot(image_pages, cuts)
    expected = checksum_of(image_pages)
    assert value == expected
    assert value == file_checksum(io.BytesIO(b"".join(image_pages)), PAGE_SIZE, len(image_pages))
    with mock.patch.object(segment, "SNAPSHOT_CHUNK", read_chunk):  # many small reads
        reader, got, trailer = read_snapshot(snap)
    assert got == b"".join(image_pages)
    assert trailer.db_checksum == expected
    h = reader.header
    assert (h.magic, h.generation, h.page_size) == (segment.SNAPSHOT_MAGIC, GEN, PAGE_SIZE)
    assert (h.first_txid, h.last_txid, h.first_time_ns, h.db_size) == (7, 7, 123_456_789, len(image_pages))


def test_snapshot_writer_refuses_the_wrong_page_count():
    w = SnapshotWriter(io.BytesIO(), GEN, PAGE_SIZE, 1, 0, 3)
    w.write_pages(bytes(2 * PAGE_SIZE))
    with pytest.raises(ValueError, match="2 pages"):
        w.finish()


IMAGE = [bytes([i]) * PAGE_SIZE for i in range(1, 9)] + [bytes(range(256)) * 2]


@pytest.mark.parametrize("read_chunk", [segment.SNAPSHOT_CHUNK, 5])
def test_every_truncated_snapshot_is_detected(read_chunk):
    snap, _ = make_snapshot(IMAGE)
    with mock.patch.object(segment, "SNAPSHOT_CHUNK", read_chunk):
        for n in range(len(snap)):
            with pytest.raises(CorruptObject) as exc:
                read_snapshot(snap[:n])  # the store reports the short size
            assert exc.value.key == KEY
            if n >= HEADER_SIZE:
                with pytest.raises(CorruptObject, match="truncated"):
                    read_snapshot(snap[:n], size=len(snap))  # the stream ends early


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_corrupted_snapshot_never_passes_as_the_original(data):
    snap, value = make_snapshot(IMAGE)
    pos = data.draw(st.integers(0, len(snap) - 1))
    bad = bytearray(snap)
    bad[pos] ^= data.draw(st.integers(1, 255))
    try:
        _, got, trailer = read_snapshot(bytes(bad))
    except CorruptObject as err:
        assert err.key == KEY
        return
    # Only the recorded database checksum can change undetected by the codec itself; a
    # restore compares it with the file it wrote, so it cannot pass there either.
    assert len(snap) - TRAILER_SIZE + 16 <= pos < len(snap) - TRAILER_SIZE + 24
    assert got == b"".join(IMAGE)
    assert trailer.db_checksum != value


# -- snapshot frames: compressed in parallel, read back whatever the read boundaries --------


def body_of(snap: bytes) -> bytes:
    return snap[HEADER_SIZE:len(snap) - TRAILER_SIZE]


def frames_of(body: bytes) -> list[bytes]:
    """Split a body into its zstd frames (each must be whole)."""
    frames = []
    while body:
        d = zstandard.ZstdDecompressor().decompressobj()
        d.decompress(body)
        assert d.eof
        n = len(body) - len(d.unused_data)
        frames.append(body[:n])
        body = body[n:]
    return frames


MANY = [(bytes([i]) * 8 + bytes(range(i, i + 8))) * (PAGE_SIZE // 16) for i in range(1, 12)]


def test_a_snapshot_body_is_one_checksummed_frame_per_frame_of_pages():
    with mock.patch.object(segment, "SNAPSHOT_FRAME", 2 * PAGE_SIZE):
        snap, value = make_snapshot(MANY, [5])  # writes of 5 and 6 pages: frames 2+2+1, 2+2+2
    frames = frames_of(body_of(snap))
    assert [zstandard.frame_content_size(f) // PAGE_SIZE for f in frames] == [2, 2, 1, 2, 2, 2]
    assert all(zstandard.get_frame_parameters(f).has_checksum for f in frames)
    assert b"".join(zstandard.ZstdDecompressor().decompress(f) for f in frames) == b"".join(MANY)
    assert value == checksum_of(MANY)


def test_snapshot_reads_ending_exactly_at_a_frame_boundary():
    with mock.patch.object(segment, "SNAPSHOT_FRAME", 2 * PAGE_SIZE):
        snap, value = make_snapshot(MANY, [3, 4, 9])
    ends = list(itertools.accumulate(len(f) for f in frames_of(body_of(snap))))
    for read_chunk in {ends[0], ends[1] - ends[0], ends[1], ends[2] // 2}:
        with mock.patch.object(segment, "SNAPSHOT_CHUNK", read_chunk):
            _, got, trailer = read_snapshot(snap)
        assert got == b"".join(MANY)
        assert trailer.db_checksum == value


def test_an_empty_image_is_one_empty_frame():
    snap, value = make_snapshot([])
    assert len(frames_of(body_of(snap))) == 1
    _, got, trailer = read_snapshot(snap)
    assert got == b"" and trailer.db_checksum == value == 0


@pytest.mark.parametrize("cut", [3, 40, 1000])
def test_a_body_ending_inside_a_frame_is_corrupt(cut):
    """With a forged hash (a hostile replica forges them all): what is missing shows as
    missing pages; only the frame's own 4-byte content checksum may go unnoticed, and then
    every page is still the right one."""
    snap, _ = make_snapshot(IMAGE)
    body = body_of(snap)[:-cut]
    forged = (snap[:HEADER_SIZE] + body
              + segment._TRAILER.pack(len(body), xxhash.xxh64_intdigest(body), 0, segment.TRAILER_MAGIC))
    if cut >= 40:
        with pytest.raises(CorruptObject):
            read_snapshot(forged)
    else:
        try:
            _, got, _ = read_snapshot(forged)
        except CorruptObject:
            return
        assert got == b"".join(IMAGE)


def test_snapshot_to_a_file_is_written_back_as_it_goes(tmp_path):
    """Into a real file, fdatasync runs on its own descriptor as the body grows; the bytes
    are those written to memory, and no descriptor is left open."""
    fds_before = len(os.listdir("/proc/self/fd"))
    synced = []
    real = os.fdatasync

    def fdatasync(fd):
        synced.append(fd)
        real(fd)

    path = tmp_path / "s.snap"
    with mock.patch.object(segment, "SNAPSHOT_FRAME", 2 * PAGE_SIZE), \
            mock.patch.object(segment, "SNAPSHOT_WRITEBACK_BYTES", 1), \
            mock.patch.object(segment.os, "fdatasync", fdatasync):
        with open(path, "wb") as out:
            w = SnapshotWriter(out, GEN, PAGE_SIZE, 7, 123_456_789, len(MANY))
            for i in range(0, len(MANY), 3):
                w.write_pages(b"".join(MANY[i:i + 3]))
            w.finish()
        expected, _ = make_snapshot(MANY, list(range(3, len(MANY), 3)))
    assert synced and path.read_bytes() == expected
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_the_writer_waits_for_frames_in_body_order():
    """Frames finishing out of order are still written in page order."""
    real = segment._compress_frame
    delays = iter([0.05, 0.0, 0.03, 0.0, 0.0, 0.01] * 2)

    def slow(data):
        time.sleep(next(delays))
        return real(data)

    with mock.patch.object(segment, "SNAPSHOT_FRAME", 2 * PAGE_SIZE), \
            mock.patch.object(segment, "_compress_frame", slow):
        snap, value = make_snapshot(MANY, [4, 8])
    _, got, trailer = read_snapshot(snap)
    assert got == b"".join(MANY) and trailer.db_checksum == value == checksum_of(MANY)


def test_a_failed_early_writeback_of_a_snapshot_is_raised_by_finish(tmp_path, monkeypatch):
    """The early fdatasync runs on a dup of the file's descriptor: the same open file, whose
    writeback error Linux reports once. It used to be swallowed there, so the final fsync
    never saw it and a snapshot the disk had failed to write was published as good."""
    monkeypatch.setattr(segment, "SNAPSHOT_WRITEBACK_BYTES", 1)

    def eio(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(segment.os, "fdatasync", eio)
    ps = 4096
    with open(tmp_path / "snap", "wb") as out:
        writer = SnapshotWriter(out, "20261201T000000Z-abcdef", ps, 1, 1, 64)
        for i in range(8):
            writer.write_pages(bytes([i]) * ps * 8)
        with pytest.raises(OSError, match="Input/output error"):
            writer.finish()


# -- fuzzing: a hostile replica controls every byte (docs/design.md, hostile inputs) -----------

_FUZZ_TXS = [Transaction(7 + i, 10**9 + i, 3, 0xABC + i, [(1 + i % 3, bytes([i]) * PAGE_SIZE)]) for i in range(5)]
_FUZZ_SEGMENT = SegmentEncoder().encode("20261120T100000Z-abc123", PAGE_SIZE, _FUZZ_TXS)


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, value in edits:
        b[pos % len(b)] = value
    return bytes(b[:cut]) if cut is not None else bytes(b)


def _recrc(data: bytes) -> bytes:
    """Recompute what a forger would: header CRC and body hash, so structure is what is tested."""
    if len(data) < segment.HEADER_SIZE + segment.TRAILER_SIZE:
        return data
    raw = data[:segment._HDR.size]
    body = data[segment.HEADER_SIZE:len(data) - segment.TRAILER_SIZE]
    _, _, ck, magic = segment._TRAILER.unpack(data[-segment.TRAILER_SIZE:])
    return (raw + segment._HDR_CRC.pack(__import__("zlib").crc32(raw)) + body
            + segment._TRAILER.pack(len(body), xxhash.xxh64_intdigest(body), ck, magic))


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, len(_FUZZ_SEGMENT))), forge=st.booleans())
def test_a_mutated_segment_decodes_or_is_corrupt(edits, cut, forge):
    data = _mutate(_FUZZ_SEGMENT, edits, cut)
    if forge:
        data = _recrc(data)
    try:
        header, txs = decode_segment(data, KEY)
    except CorruptObject:
        return
    assert header.page_size in segment.PAGE_SIZES
    for tx in txs:
        assert all(pgno >= 1 and len(p) == header.page_size for pgno, p in tx.pages)
        assert tx.db_size >= 1


@settings(max_examples=200, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 4000)), forge=st.booleans())
def test_a_mutated_snapshot_reads_or_is_corrupt(edits, cut, forge):
    snap, _ = make_snapshot(IMAGE)
    data = _mutate(snap, edits, cut)
    if forge:
        data = _recrc(data)
    try:
        reader, got, _ = read_snapshot(data)
    except CorruptObject:
        return
    assert len(got) == reader.header.db_size * reader.header.page_size


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_never_an_object(data):
    with pytest.raises(CorruptObject):
        decode_segment(data, KEY)
