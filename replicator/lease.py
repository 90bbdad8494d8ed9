"""Single-writer lease: `lease.json` at the replica root, claimed with conditional writes.

Two replicators shipping the same database to one replica would interleave their histories;
the lease makes the second fail loudly instead. Every write is a compare-and-swap on the
object's etag, so two contenders can never both win; expiry (not release) is the safety net
for a holder that crashed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from .errors import LeaseHeld
from .storage.base import NotFound, PreconditionFailed, Storage

LEASE_KEY = "lease.json"
log = logging.getLogger(__name__)


def new_owner() -> str:
    """A unique owner id that still tells a human which host and process holds the lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def describe(record: dict[str, Any]) -> str:
    """'owner (host ..., pid ..., expires ...)' for error messages."""
    return (f"{record.get('owner', '?')} (host {record.get('hostname', '?')}, pid {record.get('pid', '?')}, "
            f"expires {_rfc3339(float(record.get('expires_at', 0)))})")


def _read(storage: Storage) -> tuple[dict[str, Any] | None, str | None]:
    """(record, etag); (None, None) when absent. A garbled record counts as expired."""
    try:
        data, etag = storage.get_with_etag(LEASE_KEY)
    except NotFound:
        return None, None
    try:
        record = json.loads(data)
        if not isinstance(record, dict):
            raise ValueError("not an object")
        float(record.get("expires_at", 0)), float(record.get("acquired_at", 0))
    except (ValueError, TypeError):
        log.warning("%s/%s is not a valid lease; treating it as expired", storage.url, LEASE_KEY)
        return None, etag
    return record, etag


class Lease:
    """A held lease; renew() well before `expires_at`, release() on clean shutdown."""

    def __init__(self, storage: Storage, owner: str, ttl_s: float, now: Callable[[], float],
                 etag: str | None, acquired_at: float):
        self.storage, self.owner, self.ttl_s, self._now = storage, owner, ttl_s, now
        self.etag, self.acquired_at = etag, acquired_at
        self.expires_at = 0.0

    def _write(self) -> None:
        t = self._now()
        record = {"owner": self.owner, "expires_at": t + self.ttl_s, "acquired_at": self.acquired_at,
                  "hostname": socket.gethostname(), "pid": os.getpid()}
        try:
            self.etag = self.storage.put_if_match(LEASE_KEY, json.dumps(record).encode(), self.etag)
        except PreconditionFailed:
            holder, _ = _read(self.storage)
            who = describe(holder) if holder else "another replicator"
            raise LeaseHeld(f"{self.storage.url}: lease lost to {who}",
                            "another replicator is writing this replica; stop one of them") from None
        self.expires_at = record["expires_at"]

    def renew(self) -> None:
        """Extend the lease; raises LeaseHeld if someone took it over since our last write."""
        self._write()

    def release(self) -> None:
        """Delete lease.json if it is still ours, so a successor need not wait for expiry.

        Storage has no conditional delete: a takeover between our read and the delete would
        be undone. That needs our lease to have expired in that instant, and the successor's
        next renew then fails loudly rather than silently sharing the replica.
        """
        _, etag = _read(self.storage)
        if etag is not None and etag == self.etag:
            self.storage.delete_many([LEASE_KEY])
        self.etag = None


def acquire(storage: Storage, owner: str, ttl_s: float, now: Callable[[], float] = time.time) -> Lease:
    """Take the lease if absent, expired or already ours; else raise LeaseHeld naming the holder."""
    if ttl_s <= 0:
        raise ValueError("lease ttl must be positive")
    record, etag = _read(storage)
    t = now()
    if record and record.get("owner") != owner and float(record.get("expires_at", 0)) > t:
        raise LeaseHeld(f"{storage.url}: replica is held by {describe(record)}",
                        "another replicator is writing this replica; stop it or wait for the lease to expire")
    acquired_at = float(record.get("acquired_at", t)) if record and record.get("owner") == owner else t
    lease = Lease(storage, owner, ttl_s, now, etag, acquired_at)
    lease._write()
    return lease
