"""Backends behind one interface, composed with cross-cutting wrappers in one factory."""

from __future__ import annotations

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
        from .s3 import S3Storage  # boto3 is imported only when an S3 replica is used

        assert replica.s3 is not None
        backend = S3Storage(replica.s3)
    else:  # config validation makes this unreachable
        raise Permanent(f"unsupported replica type {replica.type!r}")
    storage = RetryingStorage(backend) if retry else backend
    if replica.age is not None:
        from .crypt import AgeStorage

        storage = AgeStorage(storage, replica.age.recipients, replica.age.identities)
    return storage
