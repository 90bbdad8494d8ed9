"""The retention compactor: executes retention.py's plans on one replica, pass by pass.

A pass is: the compactor's lease (two compactors never both delete), one LIST, the pure plan,
then its steps in the order that keeps every point of the window restorable at every
instant, so that a SIGKILL anywhere leaves a replica that restores:

1. build each replica-side snapshot (a restore to its txid into a temp file, proven against
   the recorded checksum, written as a snapshot, read back and checked), then
2. write each merged segment (a concatenation of verified inputs), read it back and check it,
3. only then delete, in DeleteObjects batches: what retention retires and the merged inputs.

Objects stay immutable (new names, never rewritten); a crash between 2 and 3 leaves a merged
object beside its inputs, which restore takes in its stride (overlaps are allowed) and the
next pass retires (`retention` plans a covered segment's deletion once its cover is checked).
It needs only the replica, never the live database, so it can run anywhere.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

from . import faults, layout, lease, replica_meta
from .errors import CorruptObject, ReplicatorError
from .plan import Plan
from .restore import build_image
from .layout import SnapshotInfo
from .retention import CompactionPlan, Policy, Synthesis, retain
from .segment import SNAPSHOT_FRAME, SnapshotWriter, decode_segment, merge_segments, verify_stream
from .status import CompactorStatus, redact
from .storage import Storage, request_counts

log = logging.getLogger(__name__)

# Held only during a pass and renewed as it goes: a compactor that crashed blocks the next
# one for at most this long, and an idle one between passes holds nothing.
LEASE_TTL_S = 120.0


@dataclasses.dataclass
class PassSummary:
    replica: str
    deleted: int = 0
    deleted_bytes: int = 0
    merged_inputs: int = 0
    merged_outputs: int = 0
    snapshots: int = 0
    snapshot_bytes: int = 0
    objects_before: int = 0
    earliest_ns: int | None = None
    seconds: float = 0.0
    dry_run: bool = False
    plan_lines: tuple[str, ...] = ()  # with dry_run: what the pass would do, a line an action

    def line(self) -> str:
        from .durations import format_timestamp

        what = "would delete" if self.dry_run else "deleted"
        earliest = format_timestamp(self.earliest_ns) if self.earliest_ns is not None else "-"
        return (f"compact {self.replica}: {what} {self.deleted} objects ({self.deleted_bytes:,} bytes), "
                f"merged {self.merged_inputs} segments into {self.merged_outputs}, built {self.snapshots} "
                f"snapshots ({self.snapshot_bytes:,} bytes); {self.objects_before} objects before; "
                f"earliest restorable {earliest}; {self.seconds:.2f}s")


def owner_id() -> str:
    """A compactor's lease owner: unique per process (a restarted compactor waits for its
    predecessor's lease only if that one did not release it)."""
    return f"{socket.gethostname()}:compactor:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Compactor:
    def __init__(self, storage: Storage, policy: Policy, owner: str | None = None,
                 clock_ns: Callable[[], int] = time.time_ns, work_dir: str | None = None,
                 db: str = "", name: str = ""):
        self.storage = storage
        self.policy = policy
        self.owner = owner or owner_id()
        self.clock_ns = clock_ns
        self.work_dir = work_dir
        self.lease: lease.Lease | None = None
        self.db, self.name = db, name  # for status() and the metrics' labels
        self.totals = PassSummary(storage.url)  # every pass (dry runs excluded) added up
        self.passes = self.failed_passes = 0
        self.last_pass_seconds: float | None = None
        self.last_success_ns: int | None = None
        self.last_error: str | None = None

    def status(self) -> CompactorStatus:
        t = self.totals
        return CompactorStatus(
            db=self.db, replica=self.name, url=self.storage.url, passes=self.passes,
            failed_passes=self.failed_passes, deleted_objects=t.deleted, deleted_bytes=t.deleted_bytes,
            merged_segments=t.merged_inputs, merged_objects=t.merged_outputs, snapshots_built=t.snapshots,
            snapshot_bytes=t.snapshot_bytes, pass_seconds_total=t.seconds,
            last_pass_seconds=self.last_pass_seconds,
            last_success_time=self.last_success_ns / 1e9 if self.last_success_ns else None,
            last_error=self.last_error, requests=request_counts(self.storage))

    def plan(self) -> tuple[CompactionPlan, int]:
        """One LIST, then the pure plan, cut to what this compactor can do; (plan, objects
        listed). With recipients only (no age identity) that is deletions: merges and
        snapshots read bodies. `--dry-run` prints this same plan, so it never lists work the
        pass would skip."""
        objects = list(self.storage.list(layout.GENERATIONS))
        plan = retain(layout.parse_listing(objects), self.policy, self.clock_ns())
        if (plan.merges or plan.syntheses or plan.covered) and not replica_meta.can_decrypt(self.storage):
            log.info("compact %s: no age identity, so deletions only (merges and snapshots "
                     "need one)", self.storage.url)
            plan = dataclasses.replace(plan, merges=(), syntheses=(), covered=())
        return plan, len(objects)

    def run_pass(self, dry_run: bool = False) -> PassSummary:
        if dry_run:
            return self._pass(dry_run)
        started = time.monotonic()
        try:
            self.lease = lease.acquire(self.storage, self.owner, LEASE_TTL_S, key=layout.COMPACTOR_LEASE,
                                       role="compactor")
            try:
                summary = self._pass(dry_run)
            finally:
                self.release()
        except Exception as err:
            self.passes += 1
            self.failed_passes += 1
            self.last_pass_seconds = time.monotonic() - started
            self.totals.seconds += self.last_pass_seconds
            self.last_error = redact(str(err) or type(err).__name__)
            raise
        self._count(summary)
        return summary

    def _count(self, s: PassSummary) -> None:
        t = self.totals
        t.deleted += s.deleted
        t.deleted_bytes += s.deleted_bytes
        t.merged_inputs += s.merged_inputs
        t.merged_outputs += s.merged_outputs
        t.snapshots += s.snapshots
        t.snapshot_bytes += s.snapshot_bytes
        t.seconds += s.seconds
        self.passes += 1
        self.last_pass_seconds = s.seconds
        self.last_success_ns = self.clock_ns()
        self.last_error = None

    def _keep_lease(self) -> None:
        """Renew between steps once half the lease is gone (a pass may build large snapshots)."""
        if self.lease is not None and self.lease.expires_at - time.time() < LEASE_TTL_S / 2:
            self.lease.renew()

    def _pass(self, dry_run: bool) -> PassSummary:
        started = time.monotonic()
        summary = PassSummary(self.storage.url, dry_run=dry_run)
        if not dry_run:
            replica_meta.check_writable(self.storage)  # never mixes plaintext and ciphertext
        plan, summary.objects_before = self.plan()
        summary.earliest_ns = plan.earliest_ns
        if dry_run:
            summary.plan_lines = tuple(describe_plan(plan))
            summary.deleted, summary.deleted_bytes = len(plan.deletions), plan.deleted_bytes
            summary.merged_inputs = sum(len(m.inputs) for m in plan.merges) + sum(len(c.covered) for c in plan.covered)
            summary.merged_outputs, summary.snapshots = len(plan.merges), len(plan.syntheses)
            summary.seconds = time.monotonic() - started
            return summary
        built: dict[str, SnapshotInfo] = {}  # generation -> the snapshot built last this pass
        for synth in plan.syntheses:
            self._keep_lease()
            summary.snapshot_bytes += self._build_snapshot(synth, built)
            summary.snapshots += 1
        retired: list[str] = list(plan.deletions)
        for c in plan.covered:  # the cover may be a crashed pass's unchecked merge: check it first
            decode_segment(self.storage.get(c.cover.key), c.cover.key)
            retired.extend(s.key for s in c.covered)
            summary.merged_inputs += len(c.covered)
        for merge in plan.merges:
            self._keep_lease()
            datas = [self.storage.get(s.key) for s in merge.inputs]  # merge_segments checks each
            merged = merge_segments(datas, [s.key for s in merge.inputs])
            self.storage.put(merge.key, merged)
            faults.point("compact-merged")
            decode_segment(self.storage.get(merge.key), merge.key)  # what the store holds, whole
            retired.extend(s.key for s in merge.inputs if s.key != merge.key)
            summary.merged_inputs += len(merge.inputs)
            summary.merged_outputs += 1
        for key in plan.markers:  # before any delete: a restore in between refuses, never guesses
            self.storage.put(key, b"")
        if retired:
            self._keep_lease()
            faults.point("compact-delete")
            self.storage.delete_many(retired)
        summary.deleted, summary.deleted_bytes = len(plan.deletions), plan.deleted_bytes
        summary.seconds = time.monotonic() - started
        return summary

    def release(self) -> None:
        if self.lease is not None:
            try:
                self.lease.release()
            except ReplicatorError as err:
                log.warning("compact %s: could not release the lease: %s", self.storage.url, err)
            self.lease = None

    def _build_snapshot(self, synth: Synthesis, built: dict[str, SnapshotInfo]) -> int:
        """The snapshot at synth.txid: restored into a temp file (proven against the checksum
        the segments record), written as a snapshot object, read back and checked."""
        base = synth.base or built[synth.generation]  # None: the one this pass built just before
        plan = Plan(synth.generation, base, synth.segments, synth.txid, None, synth.txid)
        with tempfile.TemporaryDirectory(prefix="replicator-compact-", dir=self.work_dir) as d:
            path = Path(d) / "image.db"
            txid, time_ns, db_size, page_size, checksum = build_image(self.storage, plan, path)
            key = layout.snapshot_key(synth.generation, txid, time_ns)
            snap_path = Path(d) / "snapshot"
            with open(path, "rb") as image, open(snap_path, "wb") as out:
                writer = SnapshotWriter(out, synth.generation, page_size, txid, time_ns, db_size)
                step = max(page_size, SNAPSHOT_FRAME // page_size * page_size)
                while chunk := image.read(step):
                    writer.write_pages(chunk)
                value = writer.finish()
                out.flush()
                os.fsync(out.fileno())
            if value != checksum:
                raise CorruptObject(key, f"built image hashes to {value:016x}, the segments record {checksum:016x}")
            size = snap_path.stat().st_size
            with open(snap_path, "rb") as f:
                self.storage.put(key, f)
        faults.point("compact-snapshot")
        with self.storage.open(key) as f:
            verify_stream(f, key, self.storage.stat(key).size)
        built[synth.generation] = SnapshotInfo(synth.generation, txid, time_ns // 1_000_000, None, key, size)
        log.info("compact %s: built snapshot %s (%d pages)", self.storage.url, key, db_size)
        return size


def describe_plan(plan: CompactionPlan) -> list[str]:
    """What a pass would do, one line an action (--dry-run)."""
    lines = [f"keep {key} ({', '.join(why)})" for key, why in plan.kept]
    lines += [f"delete {key}" for key in plan.deletions]
    for c in plan.covered:
        lines += [f"delete {s.key} ({s.size:,} bytes; covered by {c.cover.key})" for s in c.covered]
    for m in plan.merges:
        lines.append(f"merge {len(m.inputs)} segments ({m.size:,} bytes) into {m.key}")
    for s in plan.syntheses:
        base = f"the snapshot at txid {s.base.txid}" if s.base else "the snapshot built before it"
        lines.append(f"build a snapshot of generation {s.generation} at txid {s.txid} from {base} and "
                     f"{len(s.segments)} segments ({sum(x.size for x in s.segments):,} bytes)")
    return lines


class Scheduler:
    """`replicator compact`: every replica of a config, a pass each retention-check-interval.

    Each replica fails alone (logged, tried again at its next pass); the process ends only
    when told to, or after one pass with --once (non-zero if a pass failed).
    """

    def __init__(self, jobs: list[tuple[Compactor, float]], clock: Callable[[], float] = time.monotonic):
        self.jobs = jobs  # (compactor, interval in seconds)
        self.clock = clock

    def run(self, stop, once: bool = False, dry_run: bool = False,
            emit: Callable[[str], None] = print) -> bool:
        due = {id(c): 0.0 for c, _ in self.jobs}
        ok = True
        try:
            while not stop.is_set():
                now = self.clock()
                for comp, interval in self.jobs:
                    if due[id(comp)] > now:
                        continue
                    due[id(comp)] = now + interval
                    ok &= self._one(comp, dry_run, emit)
                if once or dry_run:
                    return ok
                stop.wait(max(0.0, min(due.values()) - self.clock()))
            return ok
        finally:
            for comp, _ in self.jobs:
                comp.release()

    def _one(self, comp: Compactor, dry_run: bool, emit: Callable[[str], None]) -> bool:
        try:
            summary = comp.run_pass(dry_run=dry_run)
            if dry_run:  # the plan of that pass itself: one LIST
                for line in summary.plan_lines or ("nothing to do",):
                    emit(f"{comp.storage.url}: {line}")
        except ReplicatorError as err:
            log.error("compact %s: %s", comp.storage.url, err)
            return False
        except Exception:  # noqa: BLE001 - one replica's bug must not stop the others
            log.exception("compact %s failed (a bug)", comp.storage.url)
            return False
        log.info("%s", summary.line())
        return True


def forget_name(storage: Storage, name: str, owner: str | None = None) -> list[str]:
    """`replicator snapshots --delete NAME`: the snapshots named NAME lose their protection
    (retention then treats them as any other). Objects are immutable, so each one is copied
    to its unnamed key, the copy read back and checked, and only then is the named object
    deleted: the history it restores stays restorable while the window needs it. Under the
    compactor's lease (nothing else deletes meanwhile). Returns the keys deleted."""
    held = lease.acquire(storage, owner or owner_id(), LEASE_TTL_S, key=layout.COMPACTOR_LEASE, role="compactor")
    try:
        replica_meta.check_writable(storage)
        listing = layout.parse_listing(storage.list(layout.GENERATIONS))
        named = [s for g in listing.generations for s in g.snapshots if s.name == name]
        have = {s.key for g in listing.generations for s in g.snapshots}
        for snap in named:
            plain = layout.snapshot_key(snap.generation, snap.txid, snap.time_ms * 1_000_000)
            if plain not in have:
                with storage.open(snap.key) as f:
                    storage.put(plain, f)
                with storage.open(plain) as f:
                    verify_stream(f, plain, storage.stat(plain).size)
        if named:
            storage.delete_many([s.key for s in named])
        return [s.key for s in named]
    finally:
        held.release()
