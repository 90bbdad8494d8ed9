"""Single-writer lease: `lease.json` at the replica root, claimed with conditional writes.

Two replicators shipping the same database to one replica would interleave their histories;
the lease makes the second fail loudly instead. Every write is a compare-and-swap on the
object's etag, so two contenders can never both win; expiry (not release) is the safety net
for a holder that crashed.

Each acquisition writes a random token into the record. A write whose answer was lost
(timeout, reset) may have landed; its retry then fails with PreconditionFailed against our
own write. The token read back tells the two apart: our token means the write was ours and
the lease is kept; anything else means it was lost.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .errors import LeaseHeld, ReplicatorError
from .storage.base import NotFound, PreconditionFailed, Storage, Transient
from .storage.file import fsync_dir

LEASE_KEY = "lease.json"
CAS_ATTEMPTS = 3  # writes per renewal when earlier writes of ours keep turning up (lost answers)
INSTANCE_ID_FILE = "instance-id"  # in the spool directory: see instance_owner
_INSTANCE_ID = re.compile(rb"[0-9a-f]{16}")
_SPOOL_SUFFIX = "-replicator"  # spool.spool_dir's; test_lease holds the two together
log = logging.getLogger(__name__)


def new_owner() -> str:
    """A unique owner id that still tells a human which host and process holds the lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def instance_owner(spool_dir: Path) -> str:
    """`hostname:db path:instance id`: the lease owner for the database whose spool this is.

    `hostname:db path` alone is shared by two containers that run one image (one hostname)
    over the same path: both would take the lease as theirs. The instance id is random and
    kept in the spool, which belongs to one running daemon (its flock) and survives its
    restarts, so a crashed replicator still takes its own lease back at once. A fresh spool
    (a new container, a deleted spool) is a new owner: it waits for the old lease to expire
    or be released.

    Call it once the spool exists and is this process's. The id is published atomically:
    written to an O_EXCL temp file (mode 0600) and fsynced, then linked into place (link(2)
    fails if the name exists, like O_EXCL, but the name never shows a half-written file), so
    concurrent callers all read back the id that won. A corrupt or empty file is replaced
    (by rename) with a fresh id, which makes this replicator a new owner; that is logged.
    """
    spool_dir = Path(spool_dir)
    path = spool_dir / INSTANCE_ID_FILE
    instance_id = _read_instance_id(path)
    if instance_id is None:
        replace = os.path.lexists(path)
        if replace:
            log.warning("%s holds no valid instance id; writing a fresh one (a new lease owner: "
                        "a lease this replicator held must expire first)", path)
        _publish_instance_id(path, secrets.token_hex(8), replace)
        instance_id = _read_instance_id(path)
        if instance_id is None:
            raise ReplicatorError(f"{path}: cannot keep an instance id there")
    db = spool_dir.with_name(spool_dir.name.removesuffix(_SPOOL_SUFFIX))
    return f"{socket.gethostname()}:{os.path.abspath(db)}:{instance_id}"


def _read_instance_id(path: Path) -> str | None:
    """The id kept in `path`; None if there is no file or it holds no id."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    match = _INSTANCE_ID.fullmatch(text.strip())
    return match.group().decode() if match else None


def _publish_instance_id(path: Path, instance_id: str, replace: bool) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, f"{instance_id}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another caller published first: its id is the one read back
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


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


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()


class Lease:
    """A held lease; renew() well before `expires_at`, release() on clean shutdown.

    `token` is this acquisition's own: the record carries it, so "is the lease still ours?"
    is answered by the record, not by the etag of our last write (whose answer may be lost)
    nor by the owner string (which another instance may share).
    """

    def __init__(self, storage: Storage, owner: str, ttl_s: float, now: Callable[[], float],
                 etag: str | None, acquired_at: float):
        self.storage, self.owner, self.ttl_s, self._now = storage, owner, ttl_s, now
        self.etag, self.acquired_at = etag, acquired_at
        self.token = uuid.uuid4().hex
        self.expires_at = 0.0

    def _record(self) -> dict[str, Any]:
        """The record to write now: who holds the lease and until when, nothing else."""
        t = self._now()
        return {"owner": self.owner, "token": self.token, "hostname": socket.gethostname(),
                "pid": os.getpid(), "acquired_at": self.acquired_at, "expires_at": t + self.ttl_s}

    def _lost(self, record: dict[str, Any] | None) -> LeaseHeld:
        who = describe(record) if record else "another replicator"
        if self.expires_at == 0.0:  # never held: a contender got there between our read and write
            return LeaseHeld(f"{self.storage.url}: replica is held by {who}",
                             "another replicator is writing this replica; stop it or wait for the lease to expire")
        return LeaseHeld(f"{self.storage.url}: lease lost to {who}",
                         "another replicator is writing this replica; stop one of them")

    def _write(self) -> None:
        """Compare-and-swap our record over the one at self.etag.

        A PreconditionFailed or an unanswered write (Transient) is settled by reading the
        lease back: our token there means a write of ours landed. If it is the record we just
        wrote, its etag is adopted; if an earlier one (its answer lost too), we write over it.
        Not ours means lost, unless an unanswered write left the record as it was: then
        nothing happened and the Transient is the caller's to retry.
        """
        mine = self._record()
        data, etag = _encode(mine), self.etag
        for _ in range(CAS_ATTEMPTS):
            doubt: Transient | None = None
            try:
                self.etag = self.storage.put_if_match(LEASE_KEY, data, etag)
                self.expires_at = mine["expires_at"]
                return
            except PreconditionFailed:
                pass
            except Transient as err:
                doubt = err
            record, current = _read(self.storage)
            if record is not None and record.get("token") == self.token:
                if record == mine:  # ours landed; only the answer was lost
                    self.etag, self.expires_at = current, mine["expires_at"]
                    return
                self.etag = etag = current  # an earlier write of ours: replace it
                continue
            if doubt is not None and current == etag:
                raise doubt
            raise self._lost(record)
        raise Transient(f"{self.storage.url}/{LEASE_KEY}: lease write did not settle in {CAS_ATTEMPTS} attempts")

    def renew(self) -> None:
        """Extend the lease; raises LeaseHeld if someone took it over since our last write."""
        self._write()

    def release(self) -> None:
        """Delete lease.json if it still carries our token, so a successor need not wait.

        Storage has no conditional delete: a takeover between our read and the delete would
        be undone. That needs our lease to have expired in that instant, and the successor's
        next renew then fails loudly rather than silently sharing the replica.
        """
        record, _ = _read(self.storage)
        if record is not None and record.get("token") == self.token:
            self.storage.delete_many([LEASE_KEY])
        self.etag = None


def acquire(storage: Storage, owner: str, ttl_s: float, now: Callable[[], float] = time.time) -> Lease:
    """Take the lease if absent, expired or already `owner`'s; else raise LeaseHeld naming the holder.

    Already ours means the same owner string: a restarted replicator takes its own lease back
    at once. The new acquisition gets a new token, so an older instance still running under
    the same owner loses the lease at its next renewal.
    """
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
