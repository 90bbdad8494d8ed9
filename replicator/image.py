"""R's view of the database as pages: what a snapshot holds.

Each page is its newest WAL frame at or below mxFrame, else the database file's copy. That
is R's view, byte for byte, and stable while R holds its transaction: a checkpoint writes
into the file only pages that have frames at or below every reader's mark (so never a page
read from the file), and the WAL cannot restart under a reader on marks 1..4. When
everything is backfilled (R may hold mark 0 and the WAL may restart), the file alone is R's
view and no checkpoint can touch it (design 4.1). Not the backup API: that wrote the whole
database once more and rewrote page 1's header fields.
"""

from __future__ import annotations

from typing import Iterator

from . import wal
from .dbhash import DbChecksum
from .handles import DbHandles

IMAGE_CHUNK_PAGES = 2048  # 8 MiB at 4 KiB pages per read (and copy-loop poll) during a snapshot


def read_image(handles: DbHandles, hdr: wal.IndexHeader) -> tuple[int, Iterator[tuple[int, bytearray]]]:
    """(page count, chunks of pages in order) of the database as of `hdr`.

    `hdr` must have been read inside the fence in which R's read transaction began. The
    chunks only read (they may be produced on another thread); the caller must not move
    R's mark before the last one.
    """
    ps = handles.page_size
    latest: dict[int, int] = {}
    if hdr.mx_frame > hdr.nbackfill:
        for frame in range(1, hdr.mx_frame + 1):
            raw = handles.read_wal(wal.FRAME_HEADER_SIZE, wal.frame_offset(frame, ps))
            latest[wal.parse_frame_header(raw).pgno] = frame
    n_pages = hdr.n_page if hdr.mx_frame else handles.db_file_size() // ps

    def chunks() -> Iterator[tuple[int, bytearray]]:
        overlay = sorted(latest.items())
        k = 0
        for first in range(1, n_pages + 1, IMAGE_CHUNK_PAGES):
            count = min(IMAGE_CHUNK_PAGES, n_pages - first + 1)
            # Read straight into the chunk's buffer (pread's bytes plus a copy of them cost a
            # second pass over every page); past the file's end (pages that live only in the
            # WAL) it stays zeros until the overlay fills it.
            buf = bytearray(count * ps)
            handles.read_db_into(memoryview(buf), (first - 1) * ps)
            while k < len(overlay) and overlay[k][0] < first + count:
                pgno, frame = overlay[k]
                if pgno >= first:
                    off = wal.frame_offset(frame, ps) + wal.FRAME_HEADER_SIZE
                    buf[(pgno - first) * ps:(pgno - first + 1) * ps] = handles.read_wal(ps, off)
                k += 1
            yield first, buf  # a fresh buffer per chunk: safe to hand to another thread

    return n_pages, chunks()


def image_matches(handles: DbHandles, hdr: wal.IndexHeader, checksum: DbChecksum) -> bool:
    """Is R's view as of `hdr` exactly the database `checksum` describes, page for page?

    Proves continuity where the WAL cannot (it was deleted or restarted while nobody
    tailed it): if every page hashes as the saved state's, the database is that state,
    whatever happened to the WAL. Stops reading at the first chunk that differs.
    """
    n_pages, chunks = read_image(handles, hdr)
    if n_pages != checksum.n_pages or handles.page_size != checksum.page_size:
        return False
    seen = DbChecksum(handles.page_size)
    for first, buf in chunks:
        seen.append_pages(buf)
        if seen.hashes[first - 1:] != checksum.hashes[first - 1:seen.n_pages]:
            return False
    return seen.value == checksum.value
