"""Ships one database's spooled objects to one replica storage, in order.

Positions live in memory (recovered from one LIST at start); the steady state never LISTs.
With a sync interval, consecutive spooled segments are merged into one object per interval
(concatenated zstd frames: no recompression), so PUTs are bounded by the interval, not the
write rate. Failures keep everything in the spool; the outage is logged once per interval.
Any exception, a bug included, fails the round (retried with backoff), never the thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable

from . import layout, lease, replica_meta, segment
from .config import ReplicaConfig
from .errors import LeaseHeld
from .layout import SegmentInfo, SnapshotInfo
from .status import ERROR_KINDS, ReplicaStatus, redact
from .storage import Storage, StorageError, Throttled, Transient, request_counts

log = logging.getLogger(__name__)

MAX_MERGED_BYTES = 32 << 20  # one merged segment at most: bounds upload memory and retry cost
OUTAGE_LOG_INTERVAL_S = 60.0  # one line per minute while a replica is unreachable
RETRY_DELAY_S = (0.1, 5.0)  # backoff between failed upload rounds (min, max)
REQUEST_LOG_INTERVAL_S = 60.0
MIN_ROUND_INTERVAL_S = 0.02  # sync-interval 0 still batches a busy writer's commits a little
LEASE_TTL_S = 600.0  # long: renewed only alongside uploads, so an idle replica costs no requests
# A round longer than this is wedged, not slow: each request is bounded (timeouts times
# retries, about 2.5 min against a stalled store) and a round holds at most a few of them.
ROUND_STALL_S = 900.0


class Shipper:
    """One replica's uploader thread.

    Its state for operators (plain attributes, read without the lock): `last_error` and
    `last_error_kind` (None while healthy; the kind is transient, throttled, permanent,
    lease or internal), `consecutive_failures` (failed rounds since the last good one) and
    `last_upload_at` (wall-clock time of the last object stored, None before the first);
    `status()` gathers them with the counters below.
    """

    def __init__(self, cfg: ReplicaConfig, storage: Storage, spool_objects: Storage,
                 db_name: str, on_ack: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic,
                 on_conflict: Callable[[str, int], None] = lambda generation, txid: None):
        self.cfg = cfg
        self.storage = storage
        self.spool = spool_objects
        self.db_name = db_name
        self.on_ack = on_ack
        self.on_conflict = on_conflict
        self.clock = clock
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._hurry = threading.Event()  # set on stop: skip backoff and interval waits
        self._rounds = 0
        self._round_since: float | None = None  # monotonic start of the round in progress
        self.lock = threading.Lock()
        self.snapshots: dict[str, int] = {}  # key -> txid of snapshots present remotely
        self.segments_upto: dict[str, int] = {}  # generation -> highest txid present remotely
        self.snapshot_times: dict[str, int] = {}  # generation -> newest snapshot time (ns)
        self.snapshot_generations: set[str] = set()  # generations with a snapshot here
        self.last_error: str | None = None
        self.last_error_kind: str | None = None
        self.consecutive_failures = 0
        self.last_upload_at: float | None = None
        self.shipped_txid = 0
        self.shipped_generation: str | None = None
        # For status(): counted per object stored or round failed, never per frame.
        self.shipped_bytes = 0
        self.shipped_objects = 0
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        # The newest point the replica holds: (generation, txid, commit time ns), from the
        # LIST at recovery, then from each object stored.
        self.acked: tuple[str | None, int, int] = (None, 0, 0)
        self._outage_logged = -1e18
        self._bug_logged = -1e18
        self._thread: threading.Thread | None = None
        self._meta_written = False
        self._requests_logged = clock()
        # Stable across restarts of this replicator for this database, so a crashed run's
        # lease is its own to take back; two processes on one host are kept apart by the spool.
        self.owner = f"{socket.gethostname()}:{os.path.abspath(db_name)}"
        self.lease: lease.Lease | None = None
        self.recovered = False
        self.tried = threading.Event()  # set once recovery has succeeded or failed at least once
        self.remote_last_txid = 0  # the highest txid the replica held at recovery
        # Spooled generations this replica must not take: their txids would repeat ones it
        # holds (a fresh spool that could not see the replica when it started one).
        self.refused: set[str] = set()
        # generation -> (newest snapshot's size, bytes of segments after it), from recover()
        self.history: dict[str, tuple[int, int]] = {}
        # The run of spooled segments whose upload last failed: the next round sends exactly
        # that object again (see _put_segments), so our retries never leave overlapping ones.
        self._unconfirmed: list[SegmentInfo] | None = None

    # -- state ---------------------------------------------------------------------

    def recover(self) -> None:
        """Lease and one LIST at start: what the replica already holds.

        Never raises: a replica that fails (unreachable, no bucket, access denied, lease
        held) is left to the shipper thread, which keeps retrying with backoff and reports
        it, while the spool holds the data, so the database is protected from the first
        second and the other replicas are not held up.
        """
        try:
            self._recover()
        except (StorageError, LeaseHeld) as err:
            self._note_failure(err)

    def _recover(self) -> None:
        try:
            self._recover_once()
        finally:
            self.tried.set()

    def _recover_once(self) -> None:
        self.lease = lease.acquire(self.storage, self.owner, LEASE_TTL_S)
        listing = layout.parse_listing(self.storage.list(layout.GENERATIONS))
        self.remote_last_txid = listing.last_txid
        for gen in listing.generations:
            for snap in gen.snapshots:
                self.snapshots[snap.key] = snap.txid
                self.snapshot_generations.add(gen.name)
                self.snapshot_times[gen.name] = max(self.snapshot_times.get(gen.name, 0),
                                                    snap.time_ms * 1_000_000)
            if gen.segments:
                self.segments_upto[gen.name] = max(s.last_txid for s in gen.segments)
            if gen.snapshots:
                last = max(gen.snapshots, key=lambda s: s.txid)
                self.history[gen.name] = (last.size, sum(s.size for s in gen.segments
                                                         if s.first_txid > last.txid))
            for point in [*gen.snapshots, *gen.segments]:
                self._ack(point)
        self.recovered = True

    def has(self, info: SnapshotInfo | SegmentInfo) -> bool:
        """The replica holds it (or must never: a refused generation), so the spool may let it go."""
        with self.lock:
            if info.generation in self.refused:
                return True
            if isinstance(info, SnapshotInfo):
                return info.key in self.snapshots
            return self.segments_upto.get(info.generation, -1) >= info.last_txid

    def holds(self, generation: str, txid: int) -> bool:
        """The replica has every transaction of `generation` up to `txid` (a sync's target)."""
        with self.lock:
            if generation in self.refused:
                return False
            return (self.segments_upto.get(generation, -1) >= txid
                    or any(t >= txid and _generation_of(k) == generation for k, t in self.snapshots.items()))

    def hurry(self) -> None:
        """Ship now: past the sync interval and any backoff (one immediate attempt)."""
        self.wake.set()
        self._hurry.set()

    def _mark(self, info: SnapshotInfo | SegmentInfo) -> None:
        with self.lock:
            if isinstance(info, SnapshotInfo):
                self.snapshots[info.key] = info.txid
                self.snapshot_generations.add(info.generation)
                txid = info.txid
            else:
                self.segments_upto[info.generation] = max(self.segments_upto.get(info.generation, 0),
                                                          info.last_txid)
                txid = info.last_txid
            self.shipped_generation, self.shipped_txid = info.generation, txid
            self.last_upload_at = time.time()
            self.shipped_bytes += info.size
            self.shipped_objects += 1
            self._ack(info)

    def _ack(self, info: SnapshotInfo | SegmentInfo) -> None:
        if isinstance(info, SnapshotInfo):
            txid, time_ns = info.txid, info.time_ms * 1_000_000
        else:
            txid, time_ns = info.last_txid, info.t1_ms * 1_000_000
        if txid >= self.acked[1]:
            self.acked = (info.generation, txid, max(time_ns, self.acked[2]))

    def status(self, current_txid: int = 0, now_ns: int | None = None, spool_owned: bool = True) -> ReplicaStatus:
        """This replica as operators see it. `current_txid` is the newest transaction seen
        in the WAL: below it the replica lags by the age of the oldest commit it lacks.
        Without `spool_owned` the spool is not looked at: its index may be built only by
        the process that holds the spool's lock (spool.IndexedObjects)."""
        todo = self.pending() if spool_owned else []
        with self.lock:
            generation, txid, commit_ns = self.acked
            errors = dict(self.errors)
        lag = 0.0
        if txid < current_txid:
            now_ns = time.time_ns() if now_ns is None else now_ns
            oldest = min((_time_ns(i) for i in todo), default=now_ns)  # not spooled yet: just seen
            lag = max(0.0, (now_ns - oldest) / 1e9)
        s3 = self.cfg.s3
        secrets = (s3.access_key_id, s3.secret_access_key) if s3 is not None else ()
        return ReplicaStatus(
            name=self.cfg.name, url=self.cfg.url, generation=generation, replicated_txid=txid,
            replicated_commit_time=commit_ns / 1e9 if commit_ns else None,
            last_upload_time=self.last_upload_at, lag_seconds=lag,
            backlog_bytes=sum(i.size for i in todo), backlog_objects=len(todo),
            shipped_bytes=self.shipped_bytes, shipped_objects=self.shipped_objects,
            upload_errors=errors, consecutive_failures=self.consecutive_failures,
            last_error=redact(self.last_error, secrets), last_error_kind=self.last_error_kind,
            requests=request_counts(self.storage))

    # -- thread --------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"ship-{self.cfg.name}", daemon=True)
        self._thread.start()

    def stop(self, drain_timeout_s: float) -> bool:
        """Ship what is spooled (within the timeout), then stop. True if fully drained.

        A replica that was failing gets one immediate attempt (its backoff is cut short),
        so a store that has just come back is not left with the backlog.
        """
        deadline = self.clock() + drain_timeout_s
        alive = self._thread is not None and self._thread.is_alive()
        if alive and self.last_error is not None and self.pending():
            rounds = self._rounds
            self._hurry.set()
            while self.clock() < deadline and self._rounds == rounds and self._thread.is_alive():
                time.sleep(0.01)
        while alive and self.clock() < deadline and self.pending() and self.last_error is None:
            self.wake.set()
            self._hurry.set()
            time.sleep(0.01)
        self.stopping.set()
        self.wake.set()
        self._hurry.set()
        if self._thread:
            self._thread.join(timeout=max(0.0, deadline - self.clock()) + 5)
        drained = not self.pending()
        self.release()
        return drained

    def release(self) -> None:
        """Give the lease back so a successor need not wait for it to expire."""
        if self.lease is not None:
            try:
                self.lease.release()
            except StorageError as err:
                log.warning("replica %s: could not release the lease: %s", self.storage.url, err)
            self.lease = None

    def _run(self) -> None:
        delay, retrying = RETRY_DELAY_S[0], False
        while not self.stopping.is_set():
            if not retrying:
                self.wake.wait()
            self.wake.clear()
            self._round_since = time.monotonic()
            try:
                self.ship_pending()
            except Exception as err:  # noqa: BLE001 - a bug too must not end the thread quietly
                # The spool keeps everything meanwhile; a thread that died would leave this
                # replica silently behind for good while the spool grows.
                self._note_failure(err)
                # Not `wake`: WAL events would cut the backoff short during an outage.
                self._hurry.wait(delay)
                delay, retrying = min(RETRY_DELAY_S[1], delay * 2), True
            else:
                if self.last_error is not None:
                    log.info("replica %s reachable; caught up", self.storage.url)
                self.last_error = self.last_error_kind = None
                self.consecutive_failures, retrying, delay = 0, False, RETRY_DELAY_S[0]
            self._round_since = None
            self._hurry.clear()
            self._rounds += 1
            self._log_requests()
            if self.stopping.is_set():
                break  # stop() may have set _hurry just before the clear above
            if not retrying:  # at most one round per interval (a few ms for "at once")
                self._hurry.wait(max(self.cfg.sync_interval_s, MIN_ROUND_INTERVAL_S))

    def stalled_s(self, now: float) -> float:
        """How far a round is past ROUND_STALL_S (0 between rounds and while it is within
        it; infinite if the thread died): the daemon's watchdog reads it."""
        if self._thread is None or self.stopping.is_set():
            return 0.0
        if not self._thread.is_alive():
            return float("inf")
        since = self._round_since
        return 0.0 if since is None else max(0.0, now - since - ROUND_STALL_S)

    def _note_failure(self, err: Exception) -> None:
        """Record a failed round; log it at most once per OUTAGE_LOG_INTERVAL_S (a bug with
        its traceback, on a timer of its own so that an outage does not hide it)."""
        self.last_error_kind = _error_kind(err)
        self.consecutive_failures += 1
        with self.lock:
            self.errors[self.last_error_kind] += 1
        now = self.clock()
        if self.last_error_kind != "internal":
            self.last_error = str(err)
            if now - self._outage_logged >= OUTAGE_LOG_INTERVAL_S:
                kind = "unreachable" if isinstance(err, Transient) else "failing"
                log.warning("replica %s %s, keeping data in the spool: %s", self.storage.url, kind, err)
                self._outage_logged = now
            return
        self.last_error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        if now - self._bug_logged >= OUTAGE_LOG_INTERVAL_S:
            log.exception("replica %s: unexpected error while shipping (a bug); keeping data in "
                          "the spool and retrying: %s", self.storage.url, self.last_error)
            self._bug_logged = now

    def _log_requests(self) -> None:
        now = self.clock()
        if now - self._requests_logged >= REQUEST_LOG_INTERVAL_S:
            log.debug("replica %s requests so far: %s", self.storage.url, request_counts(self.storage))
            self._requests_logged = now

    # -- shipping ------------------------------------------------------------------

    def pending(self) -> list[SnapshotInfo | SegmentInfo]:
        """Spooled objects this replica does not have yet, in shipping order."""
        out = []
        for obj in self.spool.list(layout.GENERATIONS):
            info = layout.parse_key(obj.key, obj.size)
            if info is not None and not self.has(info):
                out.append(info)
        return sorted(out, key=_order)

    def ship_pending(self) -> None:
        if not self.recovered:
            self._recover()
        todo = self.pending()
        if not todo:
            return
        self._write_meta()
        if self.lease is not None and self.lease.expires_at - time.time() < LEASE_TTL_S / 2:
            try:
                self.lease.renew()  # raises LeaseHeld if another replicator took the replica
            except LeaseHeld:
                self.recovered = False  # take it again once it is free, and LIST afresh
                raise
        i = 0
        while i < len(todo):
            info = todo[i]
            if self._refuse(info):
                i += 1
                continue
            if isinstance(info, SnapshotInfo):
                with self.spool.open(info.key) as f:
                    self.storage.put(info.key, f)
                self._mark(info)
                i += 1
            else:
                run = self._unconfirmed_at(todo, i) or self._merge_run(todo, i)
                self._put_segments(run)
                i += len(run)
            self.on_ack()

    def _refuse(self, info: SnapshotInfo | SegmentInfo) -> bool:
        """A generation new to this replica whose first txid the replica already holds
        would make txids repeat (and "latest" ambiguous): it is never uploaded here, and the
        replicator is told so that it starts a new generation above them."""
        gen = info.generation
        if gen in self.refused:
            return True
        with self.lock:
            known = gen in self.segments_upto or gen in self.snapshot_generations
        if known or not isinstance(info, SnapshotInfo) or info.txid > self.remote_last_txid:
            return False
        log.error("replica %s already holds txids up to %d: not uploading generation %s, which "
                  "starts at txid %d; a new generation will start above them", self.storage.url,
                  self.remote_last_txid, gen, info.txid)
        with self.lock:
            self.refused.add(gen)
        self.on_conflict(gen, self.remote_last_txid)
        return True

    @staticmethod
    def _merge_run(todo: list[SnapshotInfo | SegmentInfo], i: int) -> list[SegmentInfo]:
        """The consecutive segments from todo[i], up to MAX_MERGED_BYTES: one PUT (and fsync)
        per round, so a replica slower than the commit rate catches up instead of falling behind."""
        first = todo[i]
        assert isinstance(first, SegmentInfo)
        run, size = [first], first.size
        for nxt in todo[i + 1:]:
            if not (isinstance(nxt, SegmentInfo) and nxt.generation == first.generation
                    and nxt.first_txid == run[-1].last_txid + 1 and size + nxt.size <= MAX_MERGED_BYTES):
                break
            run.append(nxt)
            size += nxt.size
        return run

    def _unconfirmed_at(self, todo: list[SnapshotInfo | SegmentInfo], i: int) -> list[SegmentInfo] | None:
        """The run whose upload failed last, if todo[i] starts it (it is still pending, whole)."""
        run = self._unconfirmed
        if run is None or todo[i].key != run[0].key:
            return None
        if todo[i:i + len(run)] != run:  # the spool rolled back past it (a failed spool sync)
            log.info("replica %s: the run of a failed upload is no longer spooled whole; "
                     "merging afresh", self.cfg.name)
            self._unconfirmed = None
            return None
        return run

    def _put_segments(self, run: list[SegmentInfo]) -> None:
        """Upload a run as one object. A PUT that failed may still have landed (a timeout or
        reset after the store took it; even a 5xx), and which ones did cannot be told apart:
        so until it succeeds the run is remembered and sent again as the same key with the
        same bytes, instead of being merged into a longer run that would overlap it."""
        self._unconfirmed = run
        datas = [self.spool.get(s.key) for s in run]
        if len(run) == 1:
            key, data = run[0].key, datas[0]
        else:
            data = segment.merge_segments(datas, [s.key for s in run])
            h = segment.parse_header(data)
            key = layout.segment_key(run[0].generation, h.first_txid, h.last_txid,
                                     h.first_time_ns, h.last_time_ns)
        self.storage.put(key, data)
        self._unconfirmed = None
        merged = layout.parse_key(key, len(data))
        assert isinstance(merged, SegmentInfo)
        self._mark(merged)
        log.debug("replica %s: shipped %s (txid %d-%d)", self.cfg.name, key,
                  merged.first_txid, merged.last_txid)

    def _write_meta(self) -> None:
        if self._meta_written:
            return
        replica_meta.ensure(self.storage, self.db_name)  # refuses a replica encrypted otherwise
        self._meta_written = True


def _error_kind(err: Exception) -> str:
    if isinstance(err, Throttled):
        return "throttled"
    if isinstance(err, Transient):
        return "transient"
    if isinstance(err, LeaseHeld):
        return "lease"
    if isinstance(err, StorageError):
        return "permanent"
    return "internal"


def _generation_of(key: str) -> str | None:
    info = layout.parse_key(key)
    return info.generation if info is not None else None


def _time_ns(info: SnapshotInfo | SegmentInfo) -> int:
    """When its first transaction was committed (names hold milliseconds, rounded down)."""
    return (info.time_ms if isinstance(info, SnapshotInfo) else info.t0_ms) * 1_000_000


def _order(info: SnapshotInfo | SegmentInfo) -> tuple[str, int, int]:
    if isinstance(info, SnapshotInfo):
        return (info.generation, info.txid, 0)
    return (info.generation, info.first_txid, 1)
