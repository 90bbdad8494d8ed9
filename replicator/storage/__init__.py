"""Backends behind one interface, composed with cross-cutting wrappers in one factory."""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

from ..config import ReplicaConfig, replica_from_url
from .base import (  # noqa: F401  (re-exported: callers import errors from here)
    AlreadyExists,
    Integrity,
    NotFound,
    ObjectInfo,
    Permanent,
    PreconditionFailed,
    Storage,
    StorageError,
    Throttled,
    Transient,
    Unsupported,
)
from .file import FileStorage
from .memory import MemoryStorage
from .retry import RetryingStorage


def request_counts(storage: Storage) -> dict[str, int]:
    """Requests made so far by verb (put, get, head, list, delete): counted by the retry
    wrapper (each attempt is a request); {} for a backend opened without it."""
    counts = getattr(storage, "request_counts", None)
    return counts() if callable(counts) else {}


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    """botocore's import and a client's build make ~50k objects, nearly all kept for the
    life of the process; the cyclic collector would sweep them over and over as they are
    made: 60-100 ms of a one-second S3 restore, measured. It is off meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def open_storage(replica: ReplicaConfig | str, retry: bool = True) -> Storage:
    """The backend for a replica (or URL), wrapped with retry for transient errors and, with
    `age` configured, outside that with encryption (retries resend the same ciphertext)."""
    if isinstance(replica, str):
        if replica.startswith("memory://"):
            return MemoryStorage(replica)
        replica = replica_from_url(replica)
    if replica.type == "file":
        assert replica.path is not None
        backend: Storage = FileStorage(replica.path, url=replica.url)
    elif replica.type == "s3":
        assert replica.s3 is not None
        with _collector_off():
            from .s3 import S3Storage  # boto3 is imported only when an S3 replica is used

            backend = S3Storage(replica.s3)
    else:  # config validation makes this unreachable
        raise Permanent(f"unsupported replica type {replica.type!r}")
    storage = RetryingStorage(backend) if retry else backend
    if replica.age is not None:
        from .crypt import AgeStorage

        storage = AgeStorage(storage, replica.age.recipients, replica.age.identities)
    return storage
