"""The one storage interface every replica backend implements, and its error types.

Nothing above `storage/` knows which backend it talks to; backends translate their own
errors (OSError, botocore) into the hierarchy below so callers can decide on retry vs. fail.
"""

from __future__ import annotations

import dataclasses
from typing import BinaryIO, Iterable, Iterator, Protocol, runtime_checkable

from ..errors import ReplicatorError


class StorageError(ReplicatorError):
    """Base of all backend errors; carries the key (never credentials)."""


class NotFound(StorageError):
    """The key does not exist."""


class AlreadyExists(StorageError):
    """put_if_absent found the key already present."""


class PreconditionFailed(StorageError):
    """A conditional write (If-Match) lost against a concurrent writer."""


class Transient(StorageError):
    """A failure worth retrying: connection refused, timeout, 5xx."""


class Throttled(Transient):
    """The store asked us to slow down (S3 SlowDown / 503)."""


class Permanent(StorageError):
    """A failure retrying cannot fix: no such bucket, access denied, bad URL."""


class Unsupported(Permanent):
    """The store lacks what the call needs (S3 501 NotImplemented), e.g. conditional writes."""


class Integrity(StorageError):
    """Bytes read back do not match what was written."""


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its key relative to the backend's root, size and version tag."""

    key: str
    size: int
    etag: str | None = None


@runtime_checkable
class Storage(Protocol):
    """A flat key space of immutable objects (keys use '/' separators, relative to root).

    put: atomic (readers see the old object or the whole new one, never part).
    put_if_absent: atomic create; raises AlreadyExists if the key exists.
    put_if_match: atomic replace only while the current etag matches (None: must not exist);
        raises PreconditionFailed otherwise. Returns the new etag.
    conditional_writes: whether put_if_absent / put_if_match are atomic here. A backend
        without atomic compare-and-swap (an S3 clone answering 501 to If-Match) raises
        Unsupported from both and writes nothing: it never emulates them with a read then
        a write, which two writers can both pass. S3 learns this from the store's first
        answer, so the attribute may turn False after a call. Callers that need mutual
        exclusion there use a protocol without CAS (lease.py's settle delay).
    open: a stream of the object's bytes (optionally from `offset` for `length` bytes).
    list: every key under `prefix`, in lexical order, after `start_after` if given.
    """

    url: str
    conditional_writes: bool

    def put(self, key: str, data: bytes | BinaryIO) -> None: ...

    def put_if_absent(self, key: str, data: bytes) -> None: ...

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str: ...

    def get(self, key: str) -> bytes: ...

    def get_with_etag(self, key: str) -> tuple[bytes, str]: ...

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]: ...

    def delete_many(self, keys: Iterable[str]) -> None: ...

    def close(self) -> None: ...
