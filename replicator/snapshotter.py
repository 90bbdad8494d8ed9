"""Writing a snapshot of R's view into the spool, checked before anyone can see it.

In a running generation the image must hash to the tail's running checksum at that txid:
two independent paths (the WAL frames as copied, and the image as read) agree, or the
snapshot is rejected. The comparison happens inside the spool writer, before the object is
renamed into place and indexed, so a shipper can never upload a snapshot that disagrees.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from . import faults, layout, wal
from .dbhash import DbChecksum
from .errors import SourceError, SpoolError
from .handles import DbHandles
from .image import read_image
from .prefetch import prefetch
from .segment import SnapshotWriter
from .spool import Spool


@dataclasses.dataclass(frozen=True)
class Snapshot:
    key: str
    txid: int
    time_ns: int
    size: int  # compressed bytes
    checksum: DbChecksum  # of the image, per page (a new generation's tail starts from it)


def write_snapshot(spool: Spool, handles: DbHandles, hdr: wal.IndexHeader, generation: str, txid: int,
                   time_ns: int, expected: int | None, poll: Callable[[], None] = lambda: None,
                   name: str | None = None, keep_until_ms: int | None = None) -> Snapshot:
    """Stream the database as of `hdr` (R's view) into a snapshot object in the spool.

    `poll` runs between chunks: commits keep flowing while a large image is read (R's mark
    stays where it is until the last chunk). Raises SourceError if the image disagrees with
    `expected`, SpoolError if the spool cannot take it; nothing is published then.
    """
    n_pages, chunks = read_image(handles, hdr)
    key = layout.snapshot_key(generation, txid, time_ns, name, keep_until_ms)
    try:
        with spool.objects.writer(key) as out:
            writer = SnapshotWriter(out, generation, handles.page_size, txid, time_ns, n_pages)
            for _, chunk in prefetch(chunks, name="snapshot-image"):
                writer.write_pages(chunk)
                faults.point("snapshot-image")
                poll()
            value = writer.finish()
            if expected is not None and value != expected:
                raise SourceError(f"{handles.path}: snapshot at txid {txid} does not match the tail's "
                                  f"checksum ({value:016x} != {expected:016x}); not published")
            size = out.tell()
    except OSError as err:
        raise SpoolError(f"cannot write a snapshot into the spool {spool.dir}: {err.strerror}") from None
    return Snapshot(key, txid, time_ns, size, writer.checksum)
