"""One database, replicated: taking up the tail (resume or a new generation), the worker's
wake-ups, snapshots, and the supervision that keeps it going through failures.

The pieces it orchestrates each own one invariant: handles.py the lock discipline, tail.py
what the WAL proves, spooler.py the durability order, checkpointer.py the checkpoint cycle,
policy.py the decisions, replica.py each replica. This module only sequences them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from . import faults, layout, lease, policy
from .checkpointer import Checkpointer, backfill_tail, move_mark
from .config import DbConfig
from .control import ControlServer
from .errors import ReplicatorError, SourceError, SpoolError
from .handles import DbHandles
from .image import image_matches
from .replica import Shipper
from .snapshotter import write_snapshot
from .spool import Spool, TailState
from .status import DbStatus, ns_to_s, redact
from .spooler import Spooler
from .storage import Storage, open_storage
from .tail import ContinuityLost, Position, Tail
from .wakeup import watch_file

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0  # on stop, how long to keep shipping to a replica that is slow
RECOVERY_WAIT_S = 5.0  # at start, how long to wait for the replicas' listings
RESTART_DELAY_S = (0.5, 30.0)  # backoff between attempts after an unexpected failure
FAILURE_LOG_INTERVAL_S = 60.0
SNAPSHOT_RETRY_S = (5.0, 300.0)  # backoff after a due snapshot failed to be written (min, max)
# A new generation's first txid when some replica's history is unknown (unreachable at
# start and no local state): at least the clock's seconds << 20, so it lies above any txid
# an earlier generation can have reached unless that one averaged over 2^20 commits a
# second. The shipper still refuses a generation whose txids a replica already holds.
TXID_CLOCK_SHIFT = 20


class DbReplicator:
    """Tails one database into its spool and ships the spool to every replica."""

    def __init__(self, cfg: DbConfig, storages: dict[str, Storage] | None = None,
                 clock_ns: Callable[[], int] = time.time_ns, on_ready: Callable[[], None] = lambda: None):
        self.cfg = cfg
        self.clock_ns = clock_ns
        self.handles = DbHandles(cfg.path, cfg.busy_timeout_s)
        self.tail = Tail(self.handles, lambda: self.handles.reading, clock_ns)
        self.spool = Spool(cfg.path)
        self.spooler = Spooler(self.spool, self.tail, on_spooled=self._notify)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.checkpointer = Checkpointer(self.handles, self.spooler, self.stopping, self.wake.set,
                                         name=f"checkpoint-{Path(cfg.path).name}")
        self.error: BaseException | None = None
        self.ready = threading.Event()  # set once the tail is first taken up (sd_notify READY)
        self.on_ready = on_ready
        # The watchdog's view (stalled_s): when the worker began what it is doing now, None
        # while it waits on purpose (for a wake-up, a backoff, the next batch).
        self._busy_since: float | None = None
        self.last_snapshot_ns = 0  # 0 until the tail is taken up
        self.last_snapshot_bytes = 0  # compressed; recovered from the replicas at start
        self.snapshots_taken = 0  # this run, for status()
        self.last_write_ns = clock_ns()
        self.shippers = [
            Shipper(r, (storages or {}).get(r.name) or open_storage(r), self.spool.objects, cfg.path,
                    on_ack=self._prune, on_conflict=self._refused_by_replica)
            for r in cfg.replicas
        ]
        self._refused: set[str] = set()  # generations some replica refused (their txids repeat)
        self._thread: threading.Thread | None = None
        self._prune_lock = threading.Lock()
        self._unwatch: Callable[[], None] = lambda: None
        self._locked = False  # we hold the spool's flock
        self._open = False  # handles open and the tail taken up
        self._logged_at = -1e18
        # Work the control socket hands to the worker thread (it owns R): (fn, its Future)
        self._requests: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self.control = ControlServer(self.spool.dir, {"status": self._control_status,
                                                       "snapshot": self._control_snapshot,
                                                       "sync": self._control_sync})
        self._snapshot_not_before = 0.0  # a snapshot that failed is retried after a backoff
        self._snapshot_delay = SNAPSHOT_RETRY_S[0]

    @property
    def generation(self) -> str:
        return self.spooler.generation

    @property
    def history_bytes(self) -> int:
        return self.spooler.history_bytes

    # -- lifecycle -------------------------------------------------------------------

    def start(self, supervised: bool = False) -> None:
        """Open now (raising what stops it) and run the worker; `supervised` instead opens
        on the worker thread and keeps retrying with backoff (the daemon's databases)."""
        if not supervised:
            self.open()
        self._busy_since = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"tail-{Path(self.cfg.path).name}",
                                        daemon=True)
        self._thread.start()

    def open(self) -> None:
        """Lock the spool, open the database, recover what the replicas hold, take up the tail.

        On failure everything taken so far is given back (spool lock, leases, connections).
        """
        try:
            self.handles.open()  # first: a file that is not a database must leave nothing behind
            if not self._locked:
                if not self.spool.try_lock():
                    raise ReplicatorError(f"{self.cfg.path} is already being replicated by another process",
                                          f"see {self.spool.dir / 'lock'}")
                self._locked = True
                self.control.start()
                owner = lease.instance_owner(self.spool.dir)
                for shipper in self.shippers:  # each recovers (lease, one LIST) on its own thread
                    shipper.owner = owner
                    shipper.start()
                    shipper.wake.set()
                # A new generation's txid must lie above what the replicas hold: wait a little
                # for their listings, not for a store that is down (the spool protects the
                # data meanwhile, and the txid then comes from the clock floor).
                deadline = time.monotonic() + RECOVERY_WAIT_S
                for shipper in self.shippers:
                    shipper.tried.wait(max(0.0, deadline - time.monotonic()))
            self._take_up_tail()
        except BaseException:
            self._close_tail()
            if self._locked and self._thread is None:  # a failed first open gives everything back
                self.control.stop()
                for shipper in self.shippers:
                    shipper.stop(0)
                self.spool.unlock()
                self._locked = False
            raise
        log.info("replicating %s to %s", self.cfg.path, ", ".join(r.url for r in self.cfg.replicas))
        self._notify()
        if not self.ready.is_set():
            self.ready.set()
            self.on_ready()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def join(self, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait for the final copy and for every replica to drain; True if all shipped."""
        if self._thread:
            self._thread.join()
        self.control.stop()
        self._fail_requests()
        drained = all([s.stop(drain_timeout_s) for s in self.shippers])
        self._close_tail()
        if self._locked:
            self.spool.unlock()
            self._locked = False
        return drained and self.error is None

    def restart_tail(self) -> None:
        """Close the database and take up its tail again (a new -wal inode, say): resumes
        the generation where the spool and the WAL prove it, else starts a new one."""
        self._close_tail()
        self.open()

    def _close_tail(self) -> None:
        self.checkpointer.join()
        self._unwatch()
        self._unwatch = lambda: None
        self.handles.close()
        self._open = False

    def _run(self) -> None:
        """The worker, supervised: whatever fails is logged, everything is closed, and it
        starts again after a backoff (resuming the generation when the spool and the WAL
        still prove it). Only stop() ends it."""
        delay = RESTART_DELAY_S[0]
        while not self.stopping.is_set():
            try:
                if not self._open:
                    self.open()
                    self.error = None
                self._loop()
                delay = RESTART_DELAY_S[0]
            except ContinuityLost as err:
                log.warning("%s: continuity lost (%s); starting a new generation", self.cfg.path, err)
                self._close_tail()  # the next turn opens it again, at once
            except Exception as err:  # noqa: BLE001 - one database's failure must not stop the others
                self.error = err
                now = time.monotonic()
                if now - self._logged_at >= FAILURE_LOG_INTERVAL_S or not isinstance(err, ReplicatorError):
                    if isinstance(err, ReplicatorError):
                        log.error("cannot replicate %s: %s; retrying in %.1fs", self.cfg.path, err, delay)
                    else:
                        log.exception("cannot replicate %s (a bug): %s; retrying in %.1fs", self.cfg.path,
                                      err, delay)
                    self._logged_at = now
                self._close_tail()
                self._idle(self.stopping, delay)
                delay = min(RESTART_DELAY_S[1], delay * 2)
        try:
            if self._open:
                self._finish()
        except Exception as err:  # noqa: BLE001 - reported by join() and the CLI
            log.error("%s: final copy failed: %s (it stays in the WAL)", self.cfg.path, err)
            self.error = err

    def _loop(self) -> None:
        last, window = 0.0, policy.MIN_BATCH_INTERVAL_S
        while not self.stopping.is_set():
            self._idle(self.wake, self.cfg.monitor_interval_s)
            # Coalesce: a busy writer wakes us per WAL write; one batch per few ms keeps the
            # per-batch cost (encode, spool, upload) from scaling with the commit rate.
            self._idle(self.stopping, max(0.0, last + window - time.monotonic()))
            self.wake.clear()
            if self.stopping.is_set():
                return
            now = time.monotonic()
            window = policy.batch_window(self.spooler.batch_bytes, now - last)
            last, self.spooler.batch_bytes = now, 0
            try:
                self.step()
                self.error = None
            except (SourceError, SpoolError) as err:  # a fence timed out behind a long write
                self.error = err  # transaction, a snapshot found the disk full: next wake-up
                now = time.monotonic()
                if now - self._logged_at >= FAILURE_LOG_INTERVAL_S:
                    log.warning("%s: %s; will retry", self.cfg.path, err)
                    self._logged_at = now

    def _idle(self, event: threading.Event, timeout_s: float) -> bool:
        """A wait on purpose, which the watchdog does not count as a stall."""
        self._busy_since = None
        try:
            return event.wait(timeout_s)
        finally:
            self._busy_since = time.monotonic()

    def stalled_s(self, now: float) -> float:
        """How long the worker has been at one piece of work (0 while it waits on purpose;
        infinite if its thread died): the watchdog stops pinging when this grows too long."""
        if self._thread is None or self.stopping.is_set():
            return 0.0
        if not self._thread.is_alive():
            return float("inf")
        since = self._busy_since
        return 0.0 if since is None else max(0.0, now - since)

    def _finish(self) -> None:
        """On stop: everything committed so far into the spool, durably (a clean restart then
        resumes exactly where this run stopped)."""
        err = self.checkpointer.join()
        if isinstance(err, ContinuityLost):
            return
        self.spooler.copy(force=True)
        self.spooler.sync()

    # -- the tail ----------------------------------------------------------------------

    def _take_up_tail(self) -> None:
        """Resume the generation when the spool's state and the WAL prove it, else start one.

        R's read transaction begins inside the fence, where the WAL cannot change: from its
        first instant it protects every frame after the saved position, except when
        everything is backfilled (R may then be on read mark 0, which does not stop the
        next write from restarting the WAL): those frames are copied and made durable
        before the fence lets that write in. Never a guess: what cannot be proven starts a
        new generation with a snapshot.
        """
        self.spooler.db_ident = self.handles.db_ident
        state = self.spool.load()
        if state is not None and (state.checksum.page_size != self.handles.page_size
                                  or state.db_ident != self.handles.db_ident
                                  or state.generation in self._refused):
            state = None  # another page size, another file under the path, or refused
        if state is not None:
            self.spooler.generation = state.generation
            self._drop_spooled_after(state.generation, state.pos.txid)
            self.spool.sync_everything()  # the previous run's objects: their syncs are unknown
            self.spool.save_base(state)  # this run's log starts from a durable state
        resumed, proof = False, ""
        # Outside the fence: it lists the spool and reads what the replicas know, none of
        # which the WAL changes, and the fence holds the application's writes.
        next_txid = self._next_txid(state)
        with self.spooler.lock, self.handles.fence():
            self.handles.begin_read()
            hdr = self.handles.index_header()
            if state is not None and self.tail.proves(state.pos, hdr):
                self.tail.set(state.pos, state.checksum)
                resumed = True
                if hdr.nbackfill >= hdr.mx_frame and state.pos.frame < hdr.mx_frame:
                    self.spooler.copy_locked()
                    self.spooler.sync()
            else:
                self.tail.start(hdr, next_txid, checksum=None)  # type: ignore[arg-type]
        if not resumed and state is not None and hdr.mx_frame == 0 and image_matches(
                self.handles, hdr, state.checksum):
            # The WAL is empty and new (deleted by the last connection's close, typically
            # ours after the application's) but the file is the saved state, page for page:
            # continuity holds. R, on mark 0, keeps the file as read while this runs: no
            # backfill can happen, and frames written meanwhile wait in the WAL from frame 1.
            self.tail.set(Position((hdr.salt1, hdr.salt2), 0, (0, 0), state.pos.txid), state.checksum)
            resumed, proof = True, " (a new WAL; the database file is the saved state, page for page)"
        self._unwatch = watch_file(self.handles.wal_path, self.wake)
        self._open = True
        if resumed:
            assert state is not None
            self.tail.commit_ns = self._recovered_commit_ns()
            self.last_snapshot_ns = self._recovered_snapshot_ns()
            self.last_snapshot_bytes, self.spooler.history_bytes = max(
                [s.history.get(self.generation, (0, 0)) for s in self.shippers], key=lambda h: h[1])
            log.info("%s: resuming generation %s at txid %d%s", self.cfg.path, self.generation, state.pos.txid,
                     proof)
            return
        log.info("%s: cannot prove continuity with %s; starting a new generation", self.cfg.path,
                 "the last run" if state is not None else "any earlier run")
        self._new_generation(hdr)

    def _new_generation(self, hdr) -> None:
        """A snapshot of R's view (the database as of `hdr`) starts an unbroken run of history."""
        assert self.tail.pos is not None
        txid, now = self.tail.pos.txid, self.tail.now()
        self.spooler.generation = layout.new_generation(now)
        snap = write_snapshot(self.spool, self.handles, hdr, self.generation, txid, now, expected=None,
                              poll=self._beat)
        self.tail.checksum = snap.checksum
        self.spool.save_base(TailState(self.generation, self.tail.pos, snap.checksum.copy(), self.handles.db_ident))
        self.last_snapshot_ns, self.last_snapshot_bytes = now, snap.size
        self.tail.commit_ns = now
        self.snapshots_taken += 1
        self.spooler.history_bytes = 0
        log.info("%s: generation %s started with a snapshot at txid %d (%d pages)", self.cfg.path,
                 self.generation, txid, snap.checksum.n_pages)
        self._notify()

    def _next_txid(self, state: TailState | None) -> int:
        """Above every txid known from the spool, its state and every replica: txids never
        repeat. With some replica's history unknown, also above the clock floor."""
        txids = [0, state.pos.txid if state is not None else 0,
                 layout.parse_listing(self.spool.objects.list(layout.GENERATIONS)).last_txid]
        for s in self.shippers:
            txids.append(s.remote_last_txid)
            txids.extend(s.segments_upto.values())
            txids.extend(s.snapshots.values())
        txid = max(txids) + 1
        if not all(s.recovered for s in self.shippers):
            txid = max(txid, (self.clock_ns() // 1_000_000_000) << TXID_CLOCK_SHIFT)
        return txid

    # -- the worker's wake-up ----------------------------------------------------------

    def step(self) -> None:
        """One wake-up: serve snapshot requests, copy, maybe checkpoint, maybe snapshot."""
        faults.point("worker-step")
        if self.handles.replaced():
            raise ContinuityLost("the database file was replaced")
        if self.generation in self._refused:
            raise ContinuityLost(f"a replica refused generation {self.generation} (its txids would repeat)")
        self._serve_requests()
        try:
            copied = self.spooler.copy()
        except SpoolError:
            return  # logged by the spooler; checkpoints wait (the WAL holds every frame)
        guarded = self.handles.keep_checkpoints()
        now = self.tail.now()
        if copied:
            self.last_write_ns = now
        if self.checkpointer.running():
            return  # no fence while a checkpoint runs: snapshots and checkpoints wait
        if self._joined_checkpoint():
            return
        idle_s = (now - self.last_write_ns) / 1e9
        if policy.checkpoint_due(backfill_tail(self.handles), idle_s, guarded,
                                 self.cfg.min_checkpoint_page_count, self.cfg.checkpoint_interval_s):
            self.checkpointer.start()
            return
        facts = policy.SnapshotFacts(now, self.last_snapshot_ns, min(r.snapshot_interval_s for r in self.cfg.replicas),
                                     self.history_bytes, self.last_snapshot_bytes, self.cfg.snapshot_history_ratio,
                                     idle_s)
        if policy.snapshot_due(facts) and time.monotonic() >= self._snapshot_not_before:
            try:
                self.snapshot_now()
                self._snapshot_delay = SNAPSHOT_RETRY_S[0]
            except SpoolError:  # each attempt reads the whole image: back off
                self._snapshot_not_before = time.monotonic() + self._snapshot_delay
                self._snapshot_delay = min(SNAPSHOT_RETRY_S[1], self._snapshot_delay * 2)
                raise

    def _joined_checkpoint(self) -> bool:
        """Collect a finished checkpoint cycle; True if it ended early (its error dealt with)."""
        err = self.checkpointer.join()
        if err is None:
            return False
        if isinstance(err, ContinuityLost):
            raise err
        if not isinstance(err, SpoolError):  # SpoolError: the spooler logged it and rolls back
            log.warning("%s: checkpoint failed: %s; retried later", self.cfg.path, err)
        return True

    def snapshot_now(self, name: str | None = None, keep_for_s: float | None = None) -> int:
        """A snapshot in the current generation at the current txid; returns that txid.
        Waits for a running checkpoint cycle first (a snapshot needs the fence)."""
        self._joined_checkpoint()
        view = move_mark(self.handles, self.spooler, fenced=True)
        assert view is not None
        hdr, pos, expected = view
        now = self.tail.now()
        self.spooler.history_bytes = 0
        until = (now + int(keep_for_s * 1e9)) // 1_000_000 if name and keep_for_s is not None else None
        snap = write_snapshot(self.spool, self.handles, hdr, self.generation, pos.txid, now, expected,
                              poll=self._poll_copy, name=name, keep_until_ms=until)
        self.last_snapshot_ns, self.last_snapshot_bytes = now, snap.size
        self.snapshots_taken += 1
        log.info("%s: snapshot at txid %d", self.cfg.path, pos.txid)
        self._notify()
        return pos.txid

    def _beat(self) -> None:
        """Progress inside one long piece of work (a snapshot's chunks)."""
        self._busy_since = time.monotonic()

    def _poll_copy(self) -> None:
        """Commits keep flowing while a snapshot is read (its failures wait for the next step)."""
        self._beat()  # a snapshot still reading is progress, however long it takes
        try:
            self.spooler.copy()
        except SpoolError:
            pass  # logged by the spooler; the snapshot itself will fail or succeed on its own

    # -- status ------------------------------------------------------------------------

    def status(self) -> DbStatus:
        """This database and each replica, as operators see them (status.py): read from the
        bookkeeping the threads keep anyway, without taking any lock of the copy path."""
        pos = self.tail.pos  # one attribute read: Position is replaced, never changed
        txid = pos.txid if pos is not None and self._open else 0
        try:
            wal_bytes = os.stat(self.handles.wal_path).st_size
        except OSError:
            wal_bytes = 0
        spooled = list(self.spool.objects.list(layout.GENERATIONS)) if self._locked else []
        now_ns = self.clock_ns()
        cp = self.checkpointer
        return DbStatus(
            path=self.cfg.path, generation=self.generation or None, txid=txid,
            commit_time=ns_to_s(self.tail.commit_ns) if txid else None,
            replicating=self._open and self.error is None, wal_bytes=wal_bytes,
            spool_backlog_bytes=sum(o.size for o in spooled), spool_backlog_objects=len(spooled),
            checkpoints=cp.completed, checkpoint_seconds_total=cp.seconds_total,
            last_checkpoint_seconds=cp.last_seconds, snapshots=self.snapshots_taken,
            last_snapshot_time=ns_to_s(self.last_snapshot_ns),
            last_error=redact(str(self.error) if self.error is not None else None, self._secrets()),
            replicas=tuple(s.status(txid, now_ns, spool_owned=self._locked) for s in self.shippers))

    def _secrets(self) -> list[str | None]:
        return [x for r in self.cfg.replicas if r.s3 is not None
                for x in (r.s3.access_key_id, r.s3.secret_access_key)]

    # -- bookkeeping -------------------------------------------------------------------

    def _refused_by_replica(self, generation: str, remote_txid: int) -> None:
        """From a shipper thread: the worker starts a new generation at its next step."""
        self._refused.add(generation)
        self.wake.set()

    def _notify(self) -> None:
        for s in self.shippers:
            s.wake.set()

    def _prune(self) -> None:
        """Drop spooled objects that every replica holds."""
        with self._prune_lock:
            done = []
            for obj in self.spool.objects.list(layout.GENERATIONS):
                info = layout.parse_key(obj.key, obj.size)
                if info is not None and all(s.has(info) for s in self.shippers):
                    done.append(obj.key)
            if done:
                self.spool.objects.delete_many(done)

    def _drop_spooled_after(self, generation: str, txid: int) -> None:
        """Spooled segments past the trusted tail state are copied again from the WAL."""
        stale = []
        for obj in self.spool.objects.list(layout.GENERATIONS):
            info = layout.parse_key(obj.key, obj.size)
            if isinstance(info, layout.SegmentInfo) and info.generation == generation and info.last_txid > txid:
                stale.append(obj.key)
        self.spool.objects.delete_many(stale)

    def _recovered_commit_ns(self) -> int:
        """When the resumed position was committed: the newest time the spool or a replica
        holds for it (the names carry it), else unknown (0)."""
        times = [s.acked[2] for s in self.shippers if s.acked[1] >= (self.tail.pos.txid if self.tail.pos else 0)]
        for obj in self.spool.objects.list(layout.GENERATIONS):
            info = layout.parse_key(obj.key, obj.size)
            if isinstance(info, layout.SegmentInfo):
                times.append(info.t1_ms * 1_000_000)
            elif info is not None:
                times.append(info.time_ms * 1_000_000)
        return max(times, default=0)

    def _recovered_snapshot_ns(self) -> int:
        times = [t for s in self.shippers for g, t in s.snapshot_times.items() if g == self.generation]
        return max(times) if times else self.tail.now()

    # -- the control socket (control.py) ------------------------------------------------

    def submit(self, fn: Callable[[], Any]) -> Future:
        """Run fn on the worker thread at its next wake-up (now: it is woken)."""
        fut: Future = Future()
        self._requests.put((fn, fut))
        self.wake.set()
        return fut

    def _serve_requests(self) -> None:
        while True:
            try:
                fn, fut = self._requests.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue  # its client gave up: a snapshot nobody waits for is not taken late
            try:
                fut.set_result(fn())
            except BaseException as err:  # noqa: BLE001 - the client gets it; the worker goes on
                fut.set_exception(err)
                if not isinstance(err, ReplicatorError):
                    raise

    def _fail_requests(self) -> None:
        while True:
            try:
                _, fut = self._requests.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_exception(ReplicatorError("the replicator is stopping"))

    def _await(self, fut: Future, timeout_s: float, what: str) -> Any:
        try:
            return fut.result(timeout=timeout_s)
        except TimeoutError:
            fut.cancel()
            why = f" ({self.error})" if self.error is not None else ""
            raise ReplicatorError(f"the running replicator did not {what} within {timeout_s:g}s{why}") from None

    def _control_status(self, req: dict) -> dict:
        return dataclasses.asdict(self.status())

    def _control_snapshot(self, req: dict) -> dict:
        name, keep_for_s = req.get("name"), req.get("keep_for_s")
        if name is not None and not (isinstance(name, str) and layout.SNAPSHOT_NAME.match(name)):
            raise ReplicatorError(f"invalid snapshot name {name!r}")
        if keep_for_s is not None and not isinstance(keep_for_s, (int, float)):
            raise ReplicatorError("keep_for_s: not a number")
        fut = self.submit(lambda: self.snapshot_now(name, keep_for_s))
        return {"txid": self._await(fut, float(req.get("timeout_s", 600)), "take the snapshot")}

    def _control_sync(self, req: dict) -> dict:
        """Everything committed before the request, spooled, then on every replica (with
        wait) or at least spooled durably (without)."""
        timeout_s = float(req.get("timeout_s", 60))
        deadline = time.monotonic() + timeout_s
        generation, txid = self._await(self.submit(self.sync_point), timeout_s, "copy the WAL")
        behind = self._not_holding(generation, txid)
        while req.get("wait") and behind and time.monotonic() < deadline:
            for s in behind:
                s.hurry()
            self.stopping.wait(0.01)
            behind = self._not_holding(generation, txid)
        return {"generation": generation, "txid": txid,
                "replicas": {s.cfg.name: s not in behind for s in self.shippers},
                "errors": {s.cfg.name: s.last_error for s in behind if s.last_error}}

    def sync_point(self) -> tuple[str, int]:
        self.spooler.copy(force=True)
        self.spooler.sync()
        assert self.tail.pos is not None
        return self.generation, self.tail.pos.txid

    def _not_holding(self, generation: str, txid: int) -> list[Shipper]:
        return [s for s in self.shippers if not s.holds(generation, txid)]
