"""replica.json: what a replica records about itself, and the checks made against it.

    {"format_version": 1, "db": "app.db",
     "encryption": {"scheme": "age", "envelope": 1, "recipients": ["sha256:…", …]}}

`encryption` is present only on an age-encrypted replica and holds the recipients'
fingerprints, never a key. A writer (replicator, compactor) whose encryption does not match
the replica's refuses before it writes an object: plaintext never lands in an encrypted
replica, nor ciphertext among plaintext objects. replica.json is not authenticated (anyone who
can write the bucket can change it): readers with an identity therefore check every object
itself, and this file only turns a mismatch into one clear line.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from . import layout, segment
from .errors import ReplicatorError
from .storage import Integrity, NotFound, Permanent, Storage
from .storage.crypt import AGE_MAGIC, ENVELOPE_VERSION, is_sealed

log = logging.getLogger(__name__)

_AGE_HINT = "pass --age-identity FILE, or configure the replica's age keys"


def sealing(storage: Storage) -> bool:
    """Whether `storage` encrypts what it writes (an AgeStorage outermost)."""
    return bool(getattr(storage, "sealing", False))


def can_decrypt(storage: Storage) -> bool:
    """Whether reading this storage's objects works: plaintext, or age with an identity."""
    return not sealing(storage) or bool(getattr(storage, "can_decrypt", False))


def read(storage: Storage) -> dict[str, Any] | None:
    """replica.json, or None when absent. Raises Integrity when it is not a JSON object."""
    try:
        raw = storage.get(layout.REPLICA_META)
    except NotFound:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise Integrity(f"{storage.url}/{layout.REPLICA_META} is not a JSON object")
    return meta


def record(storage: Storage, db_name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"format_version": segment.FORMAT_VERSION, "db": os.path.basename(db_name)}
    if sealing(storage):
        meta["encryption"] = {"scheme": "age", "envelope": ENVELOPE_VERSION,
                              "recipients": list(getattr(storage, "fingerprints", ()))}
    return meta


def _encrypted(meta: dict[str, Any]) -> bool:
    return isinstance(meta.get("encryption"), dict)


def _first_object_sealed(storage: Storage) -> bool | None:
    """Whether the replica's first data object is age-encrypted (None: it holds none). Reads
    a few raw bytes, below the encryption wrapper: no identity needed."""
    raw = getattr(storage, "inner", storage) if sealing(storage) else storage
    for obj in storage.list(layout.GENERATIONS):
        if is_sealed(obj.key):
            with raw.open(obj.key, 0, len(AGE_MAGIC)) as f:
                return f.read() == AGE_MAGIC
    return None


def check_writable(storage: Storage, meta: dict[str, Any] | None = None, *, probe: bool = True) -> None:
    """Refuse (Permanent, one line) to write where the replica's encryption is not ours."""
    meta = read(storage) if meta is None else meta
    if meta is not None:
        encrypted = _encrypted(meta)
    elif probe:
        encrypted = _first_object_sealed(storage)  # no replica.json: ask the objects
        if encrypted is None:
            return
    else:
        return
    if encrypted and not sealing(storage):
        raise Permanent(f"{storage.url} is age-encrypted: refusing to write plaintext into it",
                        "configure the replica's age recipients")
    if not encrypted and sealing(storage):
        if meta is not None and _first_object_sealed(storage) is None:
            return  # an empty replica: it becomes an encrypted one
        raise Permanent(f"{storage.url} holds plaintext objects: refusing to add age-encrypted ones",
                        "replicate to a new path, or remove age from this replica")
    if encrypted and meta is not None:
        theirs = set(meta["encryption"].get("recipients") or ())
        ours = set(getattr(storage, "fingerprints", ()))
        if theirs and not theirs & ours:
            log.warning("%s: the age recipients configured share none with those replica.json records; "
                        "objects written now need another identity to read", storage.url)


def ensure(storage: Storage, db_name: str) -> None:
    """Before a replicator's first upload: check the replica's encryption, then record it."""
    meta = read(storage)
    check_writable(storage, meta)
    mine = record(storage, db_name)
    if meta is None or (_encrypted(mine) and not _encrypted(meta)):  # an empty replica turning encrypted
        storage.put(layout.REPLICA_META, json.dumps(mine).encode())


def check_readable(storage: Storage) -> None:
    """Before a restore: one line when the keys given cannot (or should not) read the replica."""
    try:
        meta = read(storage)
    except Integrity:
        meta = None  # readers rely on each object's own checks
    if meta is None:
        return
    if _encrypted(meta) and not (sealing(storage) and can_decrypt(storage)):
        raise ReplicatorError(f"{storage.url} is age-encrypted and no age identity was given", _AGE_HINT)
    if not _encrypted(meta) and sealing(storage):
        raise ReplicatorError(f"{storage.url} is not encrypted (replica.json) but age keys are configured: "
                              "refusing to trust unauthenticated objects",
                              "restore without age keys if the replica was never encrypted")
