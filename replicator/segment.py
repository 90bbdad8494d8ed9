"""Replica object formats: segments (runs of transactions) and snapshots (full images).

Both are: a small uncompressed header, a body of one or more concatenated zstd frames (each
with zstd's own content checksum), and a trailer with the body's length and xxh64 plus the
database checksum after the object's last transaction. Concatenated frames are themselves a
valid body, so merging segments never needs recompression.

Segment body (decompressed): records of
    txid u64, time_ns u64, db_size_pages u32, db_checksum u64, n_pages u32,
    then n_pages x (pgno u32, page bytes)
Snapshot body (decompressed): pages 1..db_size_pages, in order.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import struct
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Iterator, NamedTuple, Sequence

import xxhash
import zstandard

from .errors import CorruptObject

FORMAT_VERSION = 1
SEGMENT_MAGIC = b"RPLSEG01"
SNAPSHOT_MAGIC = b"RPLSNP01"
TRAILER_MAGIC = b"RPLEND01"
ZSTD_LEVEL = -1  # fast: ~1.4 GB/s on WAL pages at nearly level 1's ratio; compression is per-commit CPU
SEGMENT_FRAME_BYTES = 4 << 20  # uncompressed bytes per zstd frame of a segment body
SNAPSHOT_CHUNK = 4 << 20  # compressed bytes per read while streaming a snapshot back
# Snapshot bodies are one zstd frame per 4 MiB of pages, compressed on a pool of threads
# (zstd releases the GIL) while the calling thread hashes pages and writes finished frames.
SNAPSHOT_FRAME = 4 << 20
SNAPSHOT_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                               else os.cpu_count() or 1))
# A snapshot file is handed to the disk while it is written (an fdatasync on a thread each
# time this much more was written): the page cache would otherwise hold all of it until the
# caller's final fsync, which then wrote ~800 MB of a 1 GiB image on its own (1.4-2.5 s here).
SNAPSHOT_WRITEBACK_BYTES = 16 << 20

_HDR = struct.Struct("<8sHIB32sQQQQI")  # magic, version, page_size, gen_len, gen, a, b, c, d, db_size
_HDR_CRC = struct.Struct("<I")
_TRAILER = struct.Struct("<QQQ8s")  # body_len, body_xxh64, db_checksum, magic
REC = struct.Struct("<QQIQI")
PAGE_NO = struct.Struct("<I")
HEADER_SIZE = _HDR.size + _HDR_CRC.size
TRAILER_SIZE = _TRAILER.size
# A hostile replica controls every byte restore reads (its hashes too: they catch accidents,
# not an attacker), so sizes are checked before anything is allocated from them.
PAGE_SIZES = frozenset(1 << n for n in range(9, 17))  # SQLite's: 512 .. 65536
# A segment body decompresses to at most this much: every frame the encoder writes holds at
# most SEGMENT_FRAME_BYTES, and a merged object (<= 64 MiB compressed) of pages that compress
# 10x stays below it; a zstd bomb is cut off here instead of filling memory.
MAX_SEGMENT_RECORDS_BYTES = 1 << 30


class Transaction(NamedTuple):
    """One decoded record (restore builds one per commit: a NamedTuple is ~4x cheaper)."""

    txid: int
    time_ns: int
    db_size: int  # pages after commit
    db_checksum: int
    pages: Sequence[tuple[int, bytes | memoryview]]


@dataclasses.dataclass(frozen=True)
class Header:
    magic: bytes
    page_size: int
    generation: str
    first_txid: int  # snapshots: the txid of the image (first == last)
    last_txid: int
    first_time_ns: int
    last_time_ns: int
    db_size: int  # pages after last_txid


@dataclasses.dataclass(frozen=True)
class Trailer:
    body_len: int
    body_hash: int
    db_checksum: int


def _pack_header(h: Header) -> bytes:
    gen = h.generation.encode()
    if len(gen) > 32:
        raise ValueError("generation name longer than 32 bytes")
    raw = _HDR.pack(h.magic, FORMAT_VERSION, h.page_size, len(gen), gen.ljust(32, b"\0"),
                    h.first_txid, h.last_txid, h.first_time_ns, h.last_time_ns, h.db_size)
    return raw + _HDR_CRC.pack(zlib.crc32(raw))


def parse_header(data: bytes, key: str = "<object>", magic: bytes | None = None) -> Header:
    if len(data) < HEADER_SIZE:
        raise CorruptObject(key, "truncated header")
    raw = data[:_HDR.size]
    (m, version, page_size, gen_len, gen, a, b, c, d, db_size) = _HDR.unpack(raw)
    if m not in (SEGMENT_MAGIC, SNAPSHOT_MAGIC) or (magic and m != magic):
        raise CorruptObject(key, "not a replicator object (bad magic)")
    if _HDR_CRC.unpack_from(data, _HDR.size)[0] != zlib.crc32(raw):
        raise CorruptObject(key, "header checksum mismatch")
    if version != FORMAT_VERSION:
        raise CorruptObject(key, f"unsupported format version {version}")
    if page_size not in PAGE_SIZES:
        raise CorruptObject(key, f"invalid page size {page_size}")
    if gen_len > 32 or a > b or c > d:
        raise CorruptObject(key, "invalid header (generation name, txid or time range)")
    try:
        generation = gen[:gen_len].decode("ascii")
    except UnicodeDecodeError:
        raise CorruptObject(key, "invalid generation name in the header") from None
    return Header(m, page_size, generation, a, b, c, d, db_size)


def parse_trailer(data: bytes, key: str = "<object>") -> Trailer:
    if len(data) < TRAILER_SIZE:
        raise CorruptObject(key, "truncated (no trailer)")
    body_len, body_hash, db_checksum, magic = _TRAILER.unpack(data[-TRAILER_SIZE:])
    if magic != TRAILER_MAGIC:
        raise CorruptObject(key, "truncated (no trailer)")
    return Trailer(body_len, body_hash, db_checksum)


def _compressor() -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)


class SegmentEncoder:
    """Encodes batches of transactions; reuses one compressor (context setup is not free)."""

    def __init__(self) -> None:
        self._cctx = _compressor()

    def encode(self, generation: str, page_size: int, txs: Sequence[Transaction]) -> bytes:
        if not txs:
            raise ValueError("a segment holds at least one transaction")
        parts: list[bytes | memoryview] = []
        for txid, time_ns, db_size, db_checksum, pages in txs:
            parts.append(REC.pack(txid, time_ns, db_size, db_checksum, len(pages)))
            for pgno, page in pages:
                parts.append(PAGE_NO.pack(pgno))
                parts.append(page)
        last = txs[-1]
        return self.encode_body(generation, page_size, b"".join(parts), txs[0].txid, last.txid,
                                txs[0].time_ns, last.time_ns, last.db_size, last.db_checksum)

    def encode_body(self, generation: str, page_size: int, records: bytes | memoryview, first_txid: int,
                    last_txid: int, first_time_ns: int, last_time_ns: int, db_size: int,
                    db_checksum: int) -> bytes:
        """A segment from records already laid out (walscan builds them straight from the WAL).

        Compressed as one zstd frame per SEGMENT_FRAME_BYTES: one frame of a 16 MiB backlog
        read compressed at 0.68 GB/s here, 4 MiB frames at 1.6 GB/s, for ~2 % in ratio.
        """
        records = memoryview(records)
        cctx = self._cctx
        body = b"".join([cctx.compress(records[off:off + SEGMENT_FRAME_BYTES])
                         for off in range(0, len(records), SEGMENT_FRAME_BYTES)])
        header = Header(SEGMENT_MAGIC, page_size, generation, first_txid, last_txid, first_time_ns,
                        last_time_ns, db_size)
        return b"".join((_pack_header(header), body,
                         _TRAILER.pack(len(body), xxhash.xxh64_intdigest(body), db_checksum, TRAILER_MAGIC)))


def encode_segment(generation: str, page_size: int, txs: Sequence[Transaction]) -> bytes:
    return SegmentEncoder().encode(generation, page_size, txs)


def _check_body(data: bytes, key: str, header_size: int = HEADER_SIZE) -> tuple[memoryview, Trailer]:
    trailer = parse_trailer(data, key)
    body = memoryview(data)[header_size:len(data) - TRAILER_SIZE]
    if len(body) != trailer.body_len:
        raise CorruptObject(key, f"truncated or padded body ({len(body)} != {trailer.body_len} bytes)")
    if xxhash.xxh64_intdigest(body) != trailer.body_hash:
        raise CorruptObject(key, "body checksum mismatch")
    return body, trailer


def _decompress(body: memoryview, key: str, limit: int = MAX_SEGMENT_RECORDS_BYTES) -> bytes:
    """The whole body, refusing to grow past `limit` (read in bounded steps, so a bomb costs
    at most `limit` of memory before it is refused)."""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True)
        parts, total = [], 0
        while True:
            part = reader.read(SEGMENT_FRAME_BYTES)
            if not part:
                break
            total += len(part)
            if total > limit:
                raise CorruptObject(key, f"body decompresses to more than {limit >> 20} MiB")
            parts.append(part)
        return b"".join(parts)
    except zstandard.ZstdError as err:
        raise CorruptObject(key, f"zstd: {err}") from None


def decode_segment(data: bytes, key: str = "<segment>") -> tuple[Header, list[Transaction]]:
    """Verify every checksum, then return the header and the transactions in order."""
    header = parse_header(data, key, SEGMENT_MAGIC)
    body, trailer = _check_body(data, key)
    raw = _decompress(body, key)
    mv = memoryview(raw)
    txs: list[Transaction] = []
    pos, ps = 0, header.page_size
    try:
        while pos < len(raw):
            txid, time_ns, db_size, db_ck, n = REC.unpack_from(raw, pos)
            pos += REC.size
            if n * (4 + ps) > len(raw) - pos:
                raise struct.error("record past end of body")
            if txs and txid != txs[-1].txid + 1:
                raise CorruptObject(key, f"txid {txid} does not follow {txs[-1].txid}")
            if db_size < 1:
                raise CorruptObject(key, f"txid {txid}: database size of {db_size} pages")
            pages = []
            for _ in range(n):
                (pgno,) = PAGE_NO.unpack_from(raw, pos)
                if pgno < 1:
                    raise CorruptObject(key, f"txid {txid}: page number 0")
                pages.append((pgno, mv[pos + 4:pos + 4 + ps]))
                pos += 4 + ps
            txs.append(Transaction(txid, time_ns, db_size, db_ck, pages))
    except struct.error as err:
        raise CorruptObject(key, f"malformed record: {err}") from None
    if not txs or txs[0].txid != header.first_txid or txs[-1].txid != header.last_txid:
        raise CorruptObject(key, "records disagree with the header's txid range")
    if trailer.db_checksum != txs[-1].db_checksum:
        raise CorruptObject(key, "trailer checksum disagrees with the last record")
    return header, txs


def merge_segments(encoded: Sequence[bytes], keys: Sequence[str] | None = None) -> bytes:
    """One segment from consecutive segments, by concatenating their compressed bodies."""
    keys = keys or [f"<segment {i}>" for i in range(len(encoded))]
    headers, bodies = [], []
    last_trailer = None
    for data, key in zip(encoded, keys, strict=True):
        h = parse_header(data, key, SEGMENT_MAGIC)
        body, last_trailer = _check_body(data, key)
        if headers and (h.first_txid != headers[-1].last_txid + 1 or h.generation != headers[0].generation):
            raise ValueError(f"segments are not consecutive: {keys}")
        headers.append(h)
        bodies.append(body)
    assert last_trailer is not None
    body = b"".join(bodies)
    first, last = headers[0], headers[-1]
    header = dataclasses.replace(first, last_txid=last.last_txid, last_time_ns=last.last_time_ns,
                                 db_size=last.db_size)
    return b"".join((_pack_header(header), body,
                     _TRAILER.pack(len(body), xxhash.xxh64_intdigest(body), last_trailer.db_checksum,
                                   TRAILER_MAGIC)))


_pool: tuple[int, ThreadPoolExecutor] | None = None  # (owner pid, pool)
_pool_lock = threading.Lock()
_tls = threading.local()


def _snapshot_pool() -> ThreadPoolExecutor:
    """One pool per process, shared by snapshots (threads start on first use, then idle).
    A forked child gets its own: the parent's threads do not exist there."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(SNAPSHOT_THREADS, thread_name_prefix="snapshot-zstd"))
        return _pool[1]


def _compress_frame(data: memoryview) -> bytes:
    """One whole zstd frame (with its content checksum); a compressor per pool thread."""
    cctx = getattr(_tls, "cctx", None)
    if cctx is None:
        cctx = _tls.cctx = _compressor()
    return cctx.compress(data)


class _Writeback:
    """Starts writing a file to disk while it is still being produced (see
    SNAPSHOT_WRITEBACK_BYTES); the owner's final fsync is what makes it durable.

    An error of these early syncs is raised from join(): the descriptor is a dup of the
    owner's, sharing its open file, and Linux reports a writeback error once per open file,
    so the owner's final fsync would not see it again.
    """

    def __init__(self, out: BinaryIO):
        try:
            self._fd = out.fileno()
        except (AttributeError, OSError, ValueError):  # BytesIO and friends: nothing to do
            self._fd = -1
        self._pending = 0
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    def _datasync(self, fd: int) -> None:
        try:
            getattr(os, "fdatasync", os.fsync)(fd)
        except OSError as err:
            self._error = err
        finally:
            os.close(fd)

    def wrote(self, n: int) -> None:
        if self._fd < 0:
            return
        self._pending += n
        if self._pending < SNAPSHOT_WRITEBACK_BYTES or (self._thread is not None and self._thread.is_alive()):
            return
        self._pending = 0
        if self._error is not None:
            return
        fd = os.dup(self._fd)  # its own descriptor: the owner may close the file meanwhile
        self._thread = threading.Thread(target=self._datasync, args=(fd,), name="snapshot-writeback",
                                        daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


class SnapshotWriter:
    """Streams a database image into a snapshot object, hashing pages on the way.

    Each SNAPSHOT_FRAME of pages becomes one zstd frame, compressed on a thread pool while
    the caller's thread hashes the pages and writes the frames that are done, in order; the
    file goes to disk as it is written. Memory stays at a few chunks whatever the database
    size; the header is written first because everything in it is known before the pages
    are read. The writer keeps the buffers passed to write_pages until their frames are
    written (at the latest in finish()): callers must not modify them meanwhile.
    """

    def __init__(self, out: BinaryIO, generation: str, page_size: int, txid: int, time_ns: int,
                 db_size: int):
        from .dbhash import DbChecksum

        self.out = out
        self.page_size = page_size
        self.db_size = db_size
        self.checksum = DbChecksum(page_size)
        self._hasher = xxhash.xxh64()
        self._body_len = 0
        self._pages = 0
        self._frame_bytes = max(page_size, SNAPSHOT_FRAME // page_size * page_size)
        self._pool = _snapshot_pool()
        # (input, its frame) in body order; the input is kept alive until the frame is written
        self._inflight: collections.deque[tuple[memoryview, Future[bytes]]] = collections.deque()
        self._max_inflight = 2 * SNAPSHOT_THREADS + 1
        self._writeback = _Writeback(out)
        out.write(_pack_header(Header(SNAPSHOT_MAGIC, page_size, generation, txid, txid, time_ns,
                                      time_ns, db_size)))

    def _emit(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self._hasher.update(data)
            self._body_len += len(data)
            self._writeback.wrote(len(data))

    def _drain(self, keep: int) -> None:
        """Write finished frames in order; wait for the oldest while more than `keep` remain."""
        q = self._inflight
        while q and (len(q) > keep or q[0][1].done()):
            _, fut = q.popleft()
            self._emit(fut.result())

    def write_pages(self, data: bytes | bytearray | memoryview) -> None:
        """Append whole pages (len a multiple of page_size), in page order."""
        mv = memoryview(data).cast("B")
        step = self._frame_bytes
        for off in range(0, len(mv), step):
            part = mv[off:off + step]
            self._inflight.append((part, self._pool.submit(_compress_frame, part)))
        self.checksum.append_pages(mv)  # while the pool compresses
        self._pages = self.checksum.n_pages
        self._drain(self._max_inflight)

    def finish(self) -> int:
        """Close the stream; returns the database checksum of the image."""
        try:
            self._drain(0)
            if not self._body_len:  # no pages: the body is still one (empty) frame
                self._emit(_compress_frame(memoryview(b"")))
        finally:
            self._writeback.join()
        if self._pages != self.db_size:
            raise ValueError(f"snapshot has {self._pages} pages, header says {self.db_size}")
        self.out.write(_TRAILER.pack(self._body_len, self._hasher.intdigest(), self.checksum.value,
                                     TRAILER_MAGIC))
        return self.checksum.value


class SnapshotReader:
    """Streams pages out of a snapshot object, verifying the body hash as it goes.

    Callers must call `verify()` after the last page: the hash and trailer are only known at
    the end, so nothing read may be trusted before it returns.
    """

    def __init__(self, f: BinaryIO, key: str, size: int):
        self.key = key
        self.header = parse_header(f.read(HEADER_SIZE), key, SNAPSHOT_MAGIC)
        self._f = f
        self._remaining = size - HEADER_SIZE - TRAILER_SIZE
        if self._remaining < 0:
            raise CorruptObject(key, "truncated (shorter than header and trailer)")
        self._hasher = xxhash.xxh64()
        self._body_len = self._remaining
        self._tail = b""

    def read(self, n: int) -> bytes:
        """The compressed body, hashed as zstd reads it (never past the body)."""
        chunk = self._f.read(min(n, self._remaining))
        if not chunk and self._remaining > 0:
            raise CorruptObject(self.key, "truncated body")
        self._remaining -= len(chunk)
        self._hasher.update(chunk)
        if self._remaining == 0 and not self._tail:
            self._tail = self._f.read(TRAILER_SIZE + 1)
        return chunk

    def pages(self) -> Iterator[tuple[int, memoryview]]:
        """(first_pgno, run of whole pages) in order. Decompressed in steps of SNAPSHOT_FRAME
        (a zstd bomb gets no further than the page count its header claims)."""
        ps = self.header.page_size
        step = max(ps, SNAPSHOT_FRAME // ps * ps)
        pgno = 1
        pending = b""
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(self, read_size=SNAPSHOT_CHUNK,
                                                                 read_across_frames=True)
            while True:
                out = reader.read(step)
                if not out:
                    break
                if pending:
                    out, pending = pending + out, b""
                usable = len(out) - len(out) % ps
                if pgno - 1 + usable // ps > self.header.db_size:
                    raise CorruptObject(self.key, f"holds more pages than its header's {self.header.db_size}")
                if usable:
                    yield pgno, memoryview(out)[:usable]
                    pgno += usable // ps
                pending = out[usable:]
        except zstandard.ZstdError as err:
            raise CorruptObject(self.key, f"zstd: {err}") from None
        if self._remaining:
            raise CorruptObject(self.key, "data after the last zstd frame")
        if pending:
            raise CorruptObject(self.key, "body ends inside a page")
        if pgno - 1 != self.header.db_size:
            raise CorruptObject(self.key, f"holds {pgno - 1} pages, header says {self.header.db_size}")

    def verify(self) -> Trailer:
        if len(self._tail) != TRAILER_SIZE:
            raise CorruptObject(self.key, "truncated (no trailer)")
        trailer = parse_trailer(self._tail, self.key)
        if trailer.body_len != self._body_len or trailer.body_hash != self._hasher.intdigest():
            raise CorruptObject(self.key, "body checksum mismatch")
        return trailer


def verify_stream(f: BinaryIO, key: str, size: int) -> Header:
    """Check an object's header, body hash and trailer as stored, without decompressing:
    proves the bytes a store holds are the bytes written (the compactor reads back what it
    wrote before anything may rely on it)."""
    header = parse_header(f.read(HEADER_SIZE), key)
    remaining = size - HEADER_SIZE - TRAILER_SIZE
    if remaining < 0:
        raise CorruptObject(key, "truncated (shorter than header and trailer)")
    hasher, body_len = xxhash.xxh64(), remaining
    while remaining:
        chunk = f.read(min(SNAPSHOT_CHUNK, remaining))
        if not chunk:
            raise CorruptObject(key, "truncated body")
        hasher.update(chunk)
        remaining -= len(chunk)
    tail = f.read(TRAILER_SIZE)
    if len(tail) != TRAILER_SIZE or f.read(1):
        raise CorruptObject(key, "truncated or padded (trailer)")
    trailer = parse_trailer(tail, key)
    if trailer.body_len != body_len or trailer.body_hash != hasher.intdigest():
        raise CorruptObject(key, "body checksum mismatch")
    return header
