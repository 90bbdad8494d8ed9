"""Single-writer lease: `lease.json` at the replica root, claimed with conditional writes.

Two replicators shipping the same database to one replica would interleave their histories;
the lease makes the second fail loudly instead. Every write is a compare-and-swap on the
object's etag, so two contenders can never both win; expiry (not release) is the safety net
for a holder that crashed.

Each acquisition writes a random token into the record. A write whose answer was lost
(timeout, reset) may have landed; its retry then fails with PreconditionFailed against our
own write. The token read back tells the two apart: our token means the write was ours and
the lease is kept; anything else means it was lost.

Stores without conditional writes (`storage.conditional_writes` False, or put_if_match
raising Unsupported) get Fischer's mutual exclusion instead: read, write our token with a
plain PUT, wait a settle delay, read again; ours only if our token is still there. It holds
while every lease PUT lands within half the settle delay of the read before it, which each
writer measures for its own writes (see Lease._settle).
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
from .storage.base import NotFound, PreconditionFailed, Storage, StorageError, Transient, Unsupported
from .storage.file import fsync_dir

LEASE_KEY = "lease.json"
CAS_ATTEMPTS = 3  # writes per renewal when earlier writes of ours keep turning up (lost answers)
# The settle delay on stores without conditional writes: a lease PUT answered later than
# half of it after its read cannot be proven harmless (a lease PUT is ~200 bytes; a store
# that takes seconds for one is in trouble). Acquiring there costs this delay once.
SETTLE_S = 5.0
FENCED = "fenced"  # the token of a record nobody holds (see Lease._fence)
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
    text = _read_text(path)
    instance_id = _parse_instance_id(text)
    if instance_id is None:
        if text is not None:
            log.warning("%s holds no valid instance id; writing a fresh one (a new lease owner: "
                        "a lease this replicator held must expire first)", path)
        _publish_instance_id(path, secrets.token_hex(8), replace=text is not None)
        instance_id = _parse_instance_id(_read_text(path))
        if instance_id is None:
            raise ReplicatorError(f"{path}: cannot keep an instance id there")
    db = spool_dir.with_name(spool_dir.name.removesuffix(_SPOOL_SUFFIX))
    return f"{socket.gethostname()}:{os.path.abspath(db)}:{instance_id}"


def _read_text(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _parse_instance_id(text: bytes | None) -> str | None:
    match = _INSTANCE_ID.fullmatch(text.strip()) if text is not None else None
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
    who = f"{record.get('owner', '?')} (host {record.get('hostname', '?')}, pid {record.get('pid', '?')}"
    expires = _rfc3339(float(record.get("expires_at", 0)))
    if record.get("token") == FENCED:
        return f"nobody until {expires}: a lease write by {who}) was too slow to prove it was alone"
    return f"{who}, expires {expires})"


def _conditional(storage: Storage) -> bool:
    """Whether to try compare-and-swap; a wrapper that does not say is trusted until
    put_if_match raises Unsupported."""
    return bool(getattr(storage, "conditional_writes", True))


def _read(storage: Storage, key: str = LEASE_KEY) -> tuple[dict[str, Any] | None, str | None]:
    """(record, etag); (None, None) when absent. A garbled record counts as expired."""
    try:
        data, etag = storage.get_with_etag(key)
    except NotFound:
        return None, None
    try:
        record = json.loads(data)
        if not isinstance(record, dict):
            raise ValueError("not an object")
        float(record.get("expires_at", 0)), float(record.get("acquired_at", 0))
    except (ValueError, TypeError):
        log.warning("%s/%s is not a valid lease; treating it as expired", storage.url, key)
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
                 etag: str | None, acquired_at: float, *, sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic, settle_s: float = SETTLE_S,
                 key: str = LEASE_KEY, role: str = "replicator"):
        self.storage, self.owner, self.ttl_s, self._now = storage, owner, ttl_s, now
        self.key, self.role = key, role
        self._sleep, self._monotonic, self.settle_s = sleep, monotonic, settle_s
        self.etag, self.acquired_at = etag, acquired_at
        self.token = uuid.uuid4().hex
        self.expires_at = 0.0
        self._gone: LeaseHeld | None = None  # set once the lease is lost for good

    def _record(self) -> dict[str, Any]:
        """The record to write now: who holds the lease and until when, nothing else."""
        t = self._now()
        return {"owner": self.owner, "token": self.token, "hostname": socket.gethostname(),
                "pid": os.getpid(), "acquired_at": self.acquired_at, "expires_at": t + self.ttl_s}

    def _lost(self, record: dict[str, Any] | None) -> LeaseHeld:
        who = describe(record) if record else f"another {self.role}"
        if self.expires_at == 0.0:  # never held: a contender got there between our read and write
            return LeaseHeld(f"{self.storage.url}: replica is held by {who}",
                             f"another {self.role} is writing this replica; stop it or wait for the lease to expire")
        return LeaseHeld(f"{self.storage.url}: lease lost to {who}",
                         f"another {self.role} is writing this replica; stop one of them")

    def _write(self, mine: dict[str, Any]) -> None:
        """Compare-and-swap `mine` over the record at self.etag.

        A PreconditionFailed or an unanswered write (Transient) is settled by reading the
        lease back: our token there means a write of ours landed. If it is the record we just
        wrote, its etag is adopted; if an earlier one (its answer lost too), we write over it.
        Not ours means lost, unless an unanswered write left the record as it was: then
        nothing happened and the Transient is the caller's to retry. Unsupported (the store
        has no conditional writes) is the caller's: it falls back to _settle.
        """
        data, etag = _encode(mine), self.etag
        for _ in range(CAS_ATTEMPTS):
            doubt: Transient | None = None
            try:
                self.etag = self.storage.put_if_match(self.key, data, etag)
                self.expires_at = mine["expires_at"]
                return
            except PreconditionFailed:
                pass
            except Transient as err:
                doubt = err
            record, current = _read(self.storage, self.key)
            if record is not None and record.get("token") == self.token:
                if record == mine:  # ours landed; only the answer was lost
                    self.etag, self.expires_at = current, mine["expires_at"]
                    return
                self.etag = etag = current  # an earlier write of ours: replace it
                continue
            if doubt is not None and current == etag:
                raise doubt
            raise self._lost(record)
        raise Transient(f"{self.storage.url}/{self.key}: lease write did not settle in {CAS_ATTEMPTS} attempts")

    def _settle(self, mine: dict[str, Any], read_at: float, ours_until: float | None) -> None:
        """A plain PUT of `mine` where the store has no conditional writes, then proof that
        it is ours: Fischer's mutual exclusion with the settle delay Δ = self.settle_s.

        `read_at` is when (monotonic) the read that decided to write began. A write is in
        time if it was answered within Δ/2 of that (a PUT lands before its answer arrives).
        The second read starts Δ after the answer. If two contenders both found their token
        there, the one whose write landed later wrote after the other's second read (else
        that read would have seen it), so its own read began after the other's write landed,
        saw that live record and would have stayed out. Each writer checks its own Δ/2 with
        its own monotonic clock; hosts' clocks only meet in `expires_at`, for which the
        lease ttl (more than 2Δ) leaves room.

        `ours_until` (renewals only): the expiry of the record of ours that this one replaces.
        Nobody else writes while a proven record of ours is live, so a write answered more
        than Δ before it expires (by our clock; hosts' clocks must agree within Δ) is ours
        without waiting. An acquisition always waits: even a record with our owner may be a
        crashed run's unproven claim, with a contender's write still on its way.

        A write answered late (or failing late) may have landed after a contender proved its
        claim, displacing it. Then nothing here may claim the lease, and a retry by our owner
        must not take the record back either: it is fenced (_fence) and Transient raised.
        """
        if self.ttl_s <= 2 * self.settle_s:
            raise ValueError(f"lease ttl ({self.ttl_s} s) must exceed twice the settle delay ({self.settle_s} s)")
        failure: Transient | None = None
        try:
            self.storage.put(self.key, _encode(mine))
        except Transient as err:
            failure = err
        took = self._monotonic() - read_at
        still_ours = ours_until is not None and self._now() < ours_until - self.settle_s
        if not still_ours and took > self.settle_s / 2:
            self._fence()
            self._gone = LeaseHeld(f"{self.storage.url}: lease given up after a lease write took {took:.1f} s",
                                   "the store was too slow to prove this replicator alone; restart it")
            raise Transient(f"{self.storage.url}/{self.key}: a lease write took {took:.1f} s, more than half "
                            f"the {self.settle_s:g} s settle delay: it may have displaced another holder, so "
                            f"the lease is fenced until it expires") from None
        if failure is not None:
            raise failure
        if not still_ours:
            self._sleep(self.settle_s)
            record, _ = _read(self.storage, self.key)
            if record is None or record.get("token") != self.token:
                raise self._lost(record)
        self.expires_at = mine["expires_at"]

    def _fence(self) -> None:
        """After a write too slow to prove: make the record nobody's until it expires.

        The holder it may have displaced learns that at its next renewal (the token is not
        its own), and its lease ends by the fence's expiry at the latest. Until then the
        fence keeps everyone out, our owner included. Best effort: if the store fails this
        too, the record stays ours, and our owner's next acquisition could take it back
        while a displaced holder still ships (docs/design.md, section 5).
        """
        try:
            record, _ = _read(self.storage, self.key)
            if record is not None and record.get("token") == self.token:
                self.storage.put(self.key, _encode({**self._record(), "token": FENCED}))
        except StorageError as err:
            log.warning("%s: could not fence the lease after a slow write: %s", self.storage.url, err)

    def renew(self) -> None:
        """Extend the lease; raises LeaseHeld if someone took it over since our last write.

        Without conditional writes: read, check the token, write (see _settle).
        """
        if self._gone is not None:
            raise self._gone
        try:
            if _conditional(self.storage):
                try:
                    return self._write(self._record())
                except Unsupported:
                    _note_fallback(self.storage, self.settle_s)
            read_at = self._monotonic()
            record, _ = _read(self.storage, self.key)
            if record is None or record.get("token") != self.token:
                raise self._lost(record)
            self._settle(self._record(), read_at, ours_until=float(record.get("expires_at", 0)))
        except LeaseHeld as err:
            self._gone = err
            raise

    def release(self) -> None:
        """Delete lease.json if it still carries our token, so a successor need not wait.

        Storage has no conditional delete: a takeover between our read and the delete would
        be undone. That needs our lease to have expired in that instant, and the successor's
        next renew then fails loudly rather than silently sharing the replica.
        """
        record, _ = _read(self.storage, self.key)
        if record is not None and record.get("token") == self.token:
            self.storage.delete_many([self.key])
        self.etag = None


def _note_fallback(storage: Storage, settle_s: float) -> None:
    log.info("%s: no conditional writes; the lease is proven with a %g s settle delay instead",
             storage.url, settle_s)


def acquire(storage: Storage, owner: str, ttl_s: float, now: Callable[[], float] = time.time, *,
            sleep: Callable[[float], None] = time.sleep, monotonic: Callable[[], float] = time.monotonic,
            settle_s: float = SETTLE_S, key: str = LEASE_KEY, role: str = "replicator") -> Lease:
    """Take the lease if absent, expired or already `owner`'s; else raise LeaseHeld naming the holder.

    Already ours means the same owner string: a restarted replicator takes its own lease back
    at once. The new acquisition gets a new token, so an older instance still running under
    the same owner loses the lease at its next renewal. A fenced record is nobody's, not
    even its owner's, until it expires.

    Without conditional writes this takes `settle_s` longer (Lease._settle); `sleep` and
    `monotonic` are injected with `now` so tests control time.
    """
    if ttl_s <= 0 or settle_s <= 0:
        raise ValueError("lease ttl and settle delay must be positive")
    read_at = monotonic()
    record, etag = _read(storage, key)
    t = now()
    live = record is not None and float(record.get("expires_at", 0)) > t
    ours = record is not None and record.get("owner") == owner and record.get("token") != FENCED
    if live and not ours:
        assert record is not None
        raise LeaseHeld(f"{storage.url}: {key} is held by {describe(record)}" if key != LEASE_KEY
                        else f"{storage.url}: replica is held by {describe(record)}",
                        f"another {role} is working on this replica; stop it or wait for the lease to expire")
    acquired_at = float(record.get("acquired_at", t)) if record is not None and ours else t
    lease = Lease(storage, owner, ttl_s, now, etag, acquired_at, sleep=sleep, monotonic=monotonic,
                  settle_s=settle_s, key=key, role=role)
    if _conditional(storage):
        try:
            lease._write(lease._record())
            return lease
        except Unsupported:
            _note_fallback(storage, settle_s)
    lease._settle(lease._record(), read_at, ours_until=None)
    return lease
