"""Orchestration for `run`: one worker per database, one shipper per replica, file events,
timers and a graceful stop that ships everything committed before exiting.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from pathlib import Path
from typing import Callable

from . import layout
from .config import Config, DbConfig
from .errors import ReplicatorError, SourceError
from .prefetch import prefetch
from .replica import Shipper
from .segment import SegmentEncoder, SnapshotWriter
from .source import ContinuityLost, Copied, Source
from .spool import Spool
from .storage import Storage, open_storage
from .wakeup import watch_file
from .walscan import Scanned

log = logging.getLogger(__name__)

SEGMENT_MAX_PAGE_BYTES = 32 << 20  # split a large batch into segments of about this much data
COPY_CHUNK_BYTES = 32 << 20  # WAL read and spooled per piece when the tail is behind
# History-triggered snapshots (snapshot-history-ratio) wait for at least this much compressed
# segment data since the newest snapshot: a snapshot holds checkpoints back while it reads
# (the WAL grows meanwhile), so a small database under a busy writer must not be snapshotted
# every few seconds (measured at 256 MiB of WAL, flat out: a snapshot every ~3 s and a WAL
# high-water of 184 MB instead of 24 MB).
SNAPSHOT_HISTORY_FLOOR_BYTES = 1 << 30
HISTORY_SNAPSHOT_QUIET_S = 1.0  # "the writer paused": no commit for this long
# ... or regardless at this multiple (a writer that never pauses: 20 s flat out here wrote
# 2 GiB, and a forced snapshot at 2x put the WAL high-water at 95 MB instead of ~35 MB).
HISTORY_SNAPSHOT_FORCE = 4
DRAIN_TIMEOUT_S = 30.0  # on stop, how long to keep shipping to a replica that is slow
MIN_BATCH_INTERVAL_S = 0.005  # at most ~200 batches a second; adds <= 5 ms to the RPO
# A writer producing WAL faster than this gets one batch per BUSY_BATCH_INTERVAL_S instead:
# the per-batch costs (spool file, state record, upload round, prune) are then paid ~50 times
# a second, not ~200, for ~15 ms more RPO, only while it writes this fast.
BUSY_WAL_BYTES_PER_S = 32 << 20
BUSY_BATCH_INTERVAL_S = 0.020
# Phase (c) of a checkpoint holds the write lock while it backfills what the writer added
# during (b); (a)+(b) are repeated while that tail is longer than this and halves each round
# (a flat-out writer keeps it at a few hundred frames: rounds past that only grow the WAL).
CHECKPOINT_TAIL_FRAMES = 128
MAX_BACKFILL_ROUNDS = 6
# Phase (c) backfills at most this many frames inside its fence (~8 ms here); a longer tail
# (the writer got far while the fence was being taken) means another unfenced round, up to
# MAX_FENCE_RETRIES times per checkpoint, after which (c) backfills whatever is there.
FENCE_TAIL_FRAMES = 1024
MAX_FENCE_RETRIES = 3
# Without the checkpointer lock (an application checkpoint holds it), wait for this many times
# min-checkpoint-page-count before checkpointing anyway.
UNGUARDED_CHECKPOINT_FACTOR = 4


class DbReplicator:
    """Tails one database into its spool and ships the spool to every replica."""

    def __init__(self, cfg: DbConfig, storages: dict[str, Storage] | None = None,
                 clock_ns: Callable[[], int] = time.time_ns):
        self.cfg = cfg
        self.clock_ns = clock_ns
        self.source = Source(cfg.path, cfg.busy_timeout_s, clock_ns)
        self.spool = Spool(cfg.path)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.encoder = SegmentEncoder()
        self.generation = ""
        self.error: BaseException | None = None
        self.last_snapshot_ns = 0
        # Segment bytes since the newest snapshot, and that snapshot's size (both compressed,
        # i.e. what a restore downloads and decompresses); recovered from the replicas.
        self.history_bytes = 0
        self.last_snapshot_bytes = 0
        self.last_write_ns = clock_ns()
        self.shippers = [
            Shipper(r, (storages or {}).get(r.name) or open_storage(r), self.spool.objects, cfg.path,
                    on_ack=self._prune)
            for r in cfg.replicas
        ]
        self._thread: threading.Thread | None = None
        self._prune_lock = threading.Lock()
        self._unwatch: Callable[[], None] = lambda: None
        self._backfill: threading.Thread | None = None
        self._backfill_error: ContinuityLost | None = None
        # Held while copying, spooling, and moving the read mark: the worker and the
        # checkpoint thread both do these.
        self._tail_lock = threading.Lock()
        self._batch_bytes = 0  # WAL bytes copied since the loop last looked (for the window)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.open()
        self._thread = threading.Thread(target=self._run, name=f"tail-{Path(self.cfg.path).name}",
                                        daemon=True)
        self._thread.start()

    def open(self) -> None:
        """Validate the database, lock the spool, recover positions, start the tail and shippers.

        On failure everything taken so far is given back (spool lock, leases, connections).
        """
        self.source.open()  # first: a file that is not a database must leave nothing behind
        try:
            if not self.spool.try_lock():
                raise ReplicatorError(f"{self.cfg.path} is already being replicated by another process",
                                      f"see {self.spool.dir / 'lock'}")
            for shipper in self.shippers:
                shipper.recover()
            self._init_tail()
        except BaseException:
            for shipper in self.shippers:
                shipper.release()
            self.source.close()
            self.spool.unlock()
            raise
        for shipper in self.shippers:
            shipper.start()
            shipper.wake.set()
        self._unwatch = watch_file(self.source.wal_path, self.wake)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def join(self) -> bool:
        """Wait for the final copy and for every replica to drain; True if all shipped."""
        if self._thread:
            self._thread.join()
        drained = all([s.stop(DRAIN_TIMEOUT_S) for s in self.shippers])
        self._unwatch()
        self.source.close()
        self.spool.unlock()
        return drained and self.error is None

    def _run(self) -> None:
        try:
            last, window = 0.0, MIN_BATCH_INTERVAL_S
            while not self.stopping.is_set():
                self.wake.wait(self.cfg.monitor_interval_s)
                # Coalesce: a busy writer wakes us per WAL write; one batch per few ms keeps the
                # per-batch cost (encode, spool, upload) from scaling with the commit rate.
                self.stopping.wait(max(0.0, last + window - time.monotonic()))
                self.wake.clear()
                if self.stopping.is_set():
                    break
                now = time.monotonic()
                busy = self._batch_bytes >= BUSY_WAL_BYTES_PER_S * (now - last)
                window = BUSY_BATCH_INTERVAL_S if busy else MIN_BATCH_INTERVAL_S
                last, self._batch_bytes = now, 0
                self._step_safely()
            self._finish_backfill()
            self._copy_and_spool()  # final: everything committed so far
        except BaseException as err:  # noqa: BLE001 - reported by join() and the CLI
            log.exception("replication of %s stopped: %s", self.cfg.path, err)
            self.error = err
            self.stopping.set()

    def _step_safely(self) -> None:
        try:
            self.step()
        except ContinuityLost as err:
            log.warning("%s: continuity lost (%s); starting a new generation", self.cfg.path, err)
            self._finish_backfill()
            self._unwatch()
            self.source.close()
            self.source.open()
            self._unwatch = watch_file(self.source.wal_path, self.wake)  # a new -wal inode
            self._new_generation()
        except SourceError as err:
            log.warning("%s: %s; will retry", self.cfg.path, err)

    # -- the tail ----------------------------------------------------------------------

    def _init_tail(self) -> None:
        state = self.spool.load()
        if state is not None and state.checksum.page_size == self.source.page_size:
            with self.source.fence():
                ok = self.source.resume(state.pos)
            if ok:
                self.generation = state.generation
                self.source.checksum = state.checksum
                self.last_snapshot_ns = self._recovered_snapshot_ns()
                self.last_snapshot_bytes, self.history_bytes = max(
                    [s.history.get(self.generation, (0, 0)) for s in self.shippers], key=lambda h: h[1])
                self._drop_spooled_after(state.pos.txid)
                log.info("%s: resuming generation %s at txid %d", self.cfg.path, self.generation,
                         state.pos.txid)
                return
            log.info("%s: cannot prove continuity with the last run; starting a new generation",
                     self.cfg.path)
        self._new_generation()

    def _last_known_txid(self) -> int:
        txids = [0]
        state = self.spool.load()
        if state is not None:
            txids.append(state.pos.txid)
        txids.append(layout.parse_listing(self.spool.objects.list(layout.GENERATIONS)).last_txid)
        for s in self.shippers:
            txids.extend(s.segments_upto.values())
            txids.extend(s.snapshots.values())
        return max(txids)

    def _new_generation(self) -> None:
        """A snapshot of the database as of mxFrame starts an unbroken run of history."""
        txid = self._last_known_txid() + 1
        now = self._now()
        self.generation = layout.new_generation(now)
        with self.source.fence():
            self.source.advance_read()
            hdr = self.source.start_position(txid)
        checksum = self._snapshot(txid, now, hdr, expected=None, poll=lambda: None)
        self.source.checksum = checksum
        self.spool.save_base(self.generation, self.source.pos, checksum)
        self.last_snapshot_ns = now
        self.history_bytes = 0
        log.info("%s: generation %s started with a snapshot at txid %d (%d pages)", self.cfg.path,
                 self.generation, txid, checksum.n_pages)
        self._notify()

    def snapshot_now(self, name: str | None = None) -> int:
        """A snapshot in the current generation at the current txid; returns that txid."""
        with self.source.fence():
            copied = self.source.copy()
            self.source.advance_read()
            hdr = self.source.index_header()
            now = self._now()
        self._spool_batch(copied)
        assert self.source.checksum is not None and self.source.pos is not None
        txid, expected = self.source.pos.txid, self.source.checksum.value
        self.history_bytes = 0
        self._snapshot(txid, now, hdr, expected=expected, poll=self._copy_and_spool, name=name)
        self.last_snapshot_ns = now
        log.info("%s: snapshot at txid %d", self.cfg.path, txid)
        self._notify()
        return txid

    def _snapshot(self, txid: int, time_ns: int, hdr, expected: int | None,
                  poll: Callable[[], None], name: str | None = None):
        """Stream R's view into a snapshot object in the spool; returns its checksum state.

        In a running generation the image must hash to the tail's running checksum at that
        txid: two independent paths (WAL frames as copied, and the image as read) agree.
        """
        ps = self.source.page_size
        n_pages, chunks = self.source.image(hdr)
        key = layout.snapshot_key(self.generation, txid, time_ns, name)
        with self.spool.objects.writer(key) as out:
            writer = SnapshotWriter(out, self.generation, ps, txid, time_ns, n_pages)
            for _, chunk in prefetch(chunks, name="snapshot-image"):
                writer.write_pages(chunk)
                poll()  # commits keep flowing while a large image is read (R's mark stays)
            value = writer.finish()
            size = out.tell()
        self.last_snapshot_bytes = size
        if expected is not None and value != expected:
            self.spool.objects.delete_many([key])
            raise SourceError(f"{self.cfg.path}: snapshot at txid {txid} does not match the tail's "
                              f"checksum ({value:016x} != {expected:016x})")
        return writer.checksum

    def step(self) -> None:
        """One wake-up: copy, maybe checkpoint, maybe snapshot."""
        if self.source.replaced():
            raise ContinuityLost("the database file was replaced")
        copied = self._copy_and_spool()
        guarded = self.source.keep_checkpoints()
        now = self._now()
        if copied:
            self.last_write_ns = now
        idle_s = (now - self.last_write_ns) / 1e9
        if self._backfill is not None:
            if self._backfill.is_alive():
                return  # no fence while a checkpoint runs: snapshots and checkpoints wait
            err = self._finish_backfill()
            if err is not None:
                raise err
            return
        # Counted from the WAL's unbackfilled frames, not from our position in it: after a
        # checkpoint of an idle database the WAL restarts only with the next write, and our
        # position stays high until then. Preferably while the application cannot checkpoint
        # (it would do the backfill of frames below our new read mark inside its own commit),
        # but not at any price: only our rounds move the mark, so if an application keeps
        # winning the checkpointer lock the WAL would otherwise grow without bound.
        unbackfilled = self.source.backfill_tail()
        due = unbackfilled >= self.cfg.min_checkpoint_page_count or (
            unbackfilled > 0 and idle_s >= self.cfg.checkpoint_interval_s)
        if due and (guarded or unbackfilled >= UNGUARDED_CHECKPOINT_FACTOR * self.cfg.min_checkpoint_page_count):
            self._start_backfill()
            return
        interval = min(r.snapshot_interval_s for r in self.cfg.replicas)
        if interval > 0 and (now - self.last_snapshot_ns) / 1e9 >= interval or self._history_due(idle_s):
            self.snapshot_now()
        self._serve_requests()

    def _history_due(self, idle_s: float) -> bool:
        """Enough segments since the newest snapshot that a restore would read more than
        `snapshot-history-ratio` times that snapshot: a new snapshot bounds restore time.
        Measured in compressed bytes (what a restore downloads), so a restart recovers the
        count from one LIST of the replicas.

        Taken once the writer pauses (a snapshot holds checkpoints back while it reads, and
        the WAL grows by whatever is written meanwhile), or regardless at HISTORY_SNAPSHOT_FORCE
        times the amount.
        """
        ratio = self.cfg.snapshot_history_ratio
        threshold = max(ratio * self.last_snapshot_bytes, SNAPSHOT_HISTORY_FLOOR_BYTES)
        return ratio > 0 and self.history_bytes >= threshold and (
            idle_s >= HISTORY_SNAPSHOT_QUIET_S or self.history_bytes >= HISTORY_SNAPSHOT_FORCE * threshold)

    def _start_backfill(self) -> None:
        """Checkpoint phase (a) here, then the rest of the checkpoint on a thread."""
        with self._tail_lock:
            self.source.checkpoint_start(self._spool_batch)
        self._backfill = threading.Thread(target=self._run_backfill, name="backfill", daemon=True)
        self._backfill.start()

    def _run_backfill(self) -> None:
        """Phases (b), more (a)+(b) rounds while they shorten the tail, then (c), back to
        back on this thread while the worker goes on copying (both under `_tail_lock`).

        Back to back matters: each millisecond between the end of a backfill and the fence
        of (c) lets a flat-out writer add ~20 frames that (c) must backfill with the writer
        stopped; handing (c) to the worker cost 10-25 ms of such gap (its batch window).
        """
        try:
            rounds, before, retries = 0, 1 << 62, 0
            while not self.stopping.is_set():
                # (c) may let the WAL restart: what was spooled must be durable by then, but
                # for what (c) itself copies (synced right after it). Syncing here rather
                # than just before (c) keeps the fsyncs out of the gap before the fence.
                self.spool.sync()
                self.source.checkpoint_backfill()  # BUSY (the application checkpoints): go on
                rounds += 1
                tail = self.source.backfill_tail()
                if not (tail > CHECKPOINT_TAIL_FRAMES and tail < before // 2 and rounds < MAX_BACKFILL_ROUNDS):
                    self.source.sync_wal()  # most of what (c) would fsync, before its fence
                    limit = FENCE_TAIL_FRAMES if retries < MAX_FENCE_RETRIES else None
                    with self._tail_lock:
                        done = self.source.checkpoint_finish(self._spool_batch, max_tail=limit)
                    if done:
                        self.spool.sync()
                        return
                    retries += 1  # the writer got far while the fence was taken
                before = tail
                with self._tail_lock:
                    self.source.checkpoint_start(self._spool_batch)
        except ContinuityLost as err:
            self._backfill_error = err  # the worker starts a new generation
        except Exception as err:  # an I/O error here must not kill the tail; retried next time
            log.warning("%s: checkpoint failed: %s", self.cfg.path, err)
        finally:
            self.wake.set()  # the worker joins this thread at its next step

    def _finish_backfill(self) -> ContinuityLost | None:
        """Wait for the checkpoint thread; returns the continuity loss it ran into, if any."""
        if self._backfill is not None:
            self._backfill.join()
            self._backfill = None
        err, self._backfill_error = self._backfill_error, None
        return err

    def _copy_and_spool(self) -> int:
        """Copy and spool in pieces of COPY_CHUNK_BYTES: a backlog (after a snapshot of a
        large database, say) is never held in memory at once."""
        n = 0
        while True:
            with self._tail_lock:
                copied = self.source.copy(max_bytes=COPY_CHUNK_BYTES)
                self._spool_batch(copied)
            n += copied.n_tx
            if self.source.caught_up:
                return n

    def _spool_batch(self, copied: Copied) -> None:
        if not copied:
            return
        assert self.source.checksum is not None and self.source.pos is not None
        changed: set[int] = set()
        for scanned in copied:
            changed.update(scanned.changed)
            self._spool_segments(scanned)
            self._batch_bytes += len(scanned.body)
        self.spool.append(self.generation, self.source.pos, self.source.checksum, changed)
        self._notify()

    def _spool_segments(self, s: Scanned) -> None:
        """The records of one read as segments of at most SEGMENT_MAX_PAGE_BYTES (unless one
        transaction is larger), split between transactions."""
        ps, ends, records = self.source.page_size, s.ends, memoryview(s.body)
        i, start = 0, 0
        while i < len(ends):
            j = max(i, bisect.bisect_right(ends, start + SEGMENT_MAX_PAGE_BYTES) - 1)
            first, last = s.first_txid + i, s.first_txid + j
            data = self.encoder.encode_body(self.generation, ps, records[start:ends[j]], first, last,
                                            s.time_ns, s.time_ns, s.sizes[j], s.checksums[j])
            key = layout.segment_key(self.generation, first, last, s.time_ns, s.time_ns)
            self.spool.objects.put(key, data)
            self.history_bytes += len(data)
            i, start = j + 1, ends[j]

    def _now(self) -> int:
        return self.source.now()

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

    def _drop_spooled_after(self, txid: int) -> None:
        """Spooled segments past the durable tail state are re-copied from the WAL."""
        stale = []
        for obj in self.spool.objects.list(layout.GENERATIONS):
            info = layout.parse_key(obj.key, obj.size)
            if isinstance(info, layout.SegmentInfo) and info.generation == self.generation and info.last_txid > txid:
                stale.append(obj.key)
        self.spool.objects.delete_many(stale)

    def _recovered_snapshot_ns(self) -> int:
        times = [t for s in self.shippers for g, t in s.snapshot_times.items() if g == self.generation]
        return max(times) if times else self._now()

    def _serve_requests(self) -> None:
        for req in sorted(self.spool.requests_dir.glob("*.req")):
            name = req.read_text().strip() or None
            try:
                txid = self.snapshot_now(name)
                req.with_suffix(".done").write_text(str(txid))
            except ReplicatorError as err:
                req.with_suffix(".failed").write_text(str(err))
            req.unlink(missing_ok=True)


class Daemon:
    """Every database of a config, each to each of its replicas."""

    def __init__(self, config: Config, clock_ns: Callable[[], int] = time.time_ns):
        self.config = config
        self.replicators = [DbReplicator(db, clock_ns=clock_ns) for db in config.dbs]

    def start(self) -> None:
        started = []
        try:
            for r in self.replicators:
                r.start()
                started.append(r)
        except BaseException:
            for r in started:
                r.stop()
                r.join()
            raise

    def wait(self, stop: threading.Event) -> None:
        while not stop.is_set():
            stop.wait(0.5)
            if any(r.error is not None for r in self.replicators):
                break

    def shutdown(self) -> bool:
        for r in self.replicators:
            r.stop()
        return all([r.join() for r in self.replicators])
