"""Run an iterator ahead on a thread, so its I/O overlaps the consumer's work.

Both sides release the GIL where it matters (pread, zstd, pwrite), so reading the next
chunk while the current one is hashed, compressed or written uses both cores.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetch(source: Iterator[T], depth: int = 4, name: str = "prefetch") -> Iterator[T]:
    """Yield what `source` yields, at most `depth` items ahead; its exceptions re-raise here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as err:  # handed to the consumer, raised there
            q.put(err)

    t = threading.Thread(target=produce, name=name, daemon=True)
    t.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # the consumer stopped early: let the producer end
        t.join()
