"""replica.py: the Shipper, against MemoryStorage/FileStorage replicas and a spool directory.

Rounds are driven by calling ship_pending() where the order of events matters, and through
the thread where the thread's own behaviour (backoff, survival, stop) is the point. Failures
come from `Failing`, an in-process wrapper that breaks the calls a test asks it to.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from integration.harness import wait_for
from replicator import layout, replica
from replicator.config import ReplicaConfig
from replicator.replica import Shipper
from replicator.segment import Transaction, decode_segment, encode_segment
from replicator.storage import FileStorage, MemoryStorage, RetryingStorage, Storage, Transient

PAGE_SIZE = 512
T0_NS = 1_800_000_000_000_000_000
GEN = layout.new_generation(T0_NS, token="aaaaaa")
GEN2 = layout.new_generation(T0_NS + 3_600_000_000_000, token="bbbbbb")


def seg(first: int, last: int, gen: str = GEN) -> str:
    """The key spool_segment gives txids first..last (also what merging them is named)."""
    return layout.segment_key(gen, first, last, T0_NS + first * 1_000_000, T0_NS + last * 1_000_000)


def spool_segment(spool: Storage, first: int, last: int, gen: str = GEN, pad: int = 0) -> str:
    """A real segment of txids first..last in the spool (pad: incompressible bytes per page)."""
    rng = random.Random(first)
    txs = [Transaction(t, T0_NS + t * 1_000_000, 2, t,
                       [(2, rng.randbytes(pad).ljust(PAGE_SIZE, bytes([t % 256])))])
           for t in range(first, last + 1)]
    key = seg(first, last, gen)
    spool.put(key, encode_segment(gen, PAGE_SIZE, txs))
    return key


def spool_snapshot(spool: Storage, txid: int, gen: str = GEN) -> str:
    """The shipper never looks inside a snapshot: opaque bytes under the right key do."""
    key = layout.snapshot_key(gen, txid, T0_NS + txid * 1_000_000)
    spool.put(key, b"snapshot image at %d" % txid)
    return key


class Failing:
    """A storage that breaks on demand: `fail(verb, error, times, landed, key)` makes the
    next `times` calls of that verb (on keys containing `key`) raise `error`, after doing
    the work if `landed` (a PUT that timed out after the store took it); heal() drops what
    is left. Records every put (key, bytes) tried and counts the errors raised."""

    def __init__(self, inner: Storage):
        self.inner = inner
        self.url = inner.url
        self.puts: list[tuple[str, bytes]] = []
        self.raised = 0
        self._faults: dict[str, list[tuple[Exception, bool, str]]] = {}
        self._lock = threading.Lock()

    def fail(self, verb: str, error: Exception, times: int = 1, landed: bool = False,
             key: str = "") -> None:
        with self._lock:
            self._faults.setdefault(verb, []).extend([(error, landed, key)] * times)

    def heal(self) -> None:
        with self._lock:
            self._faults.clear()

    def _call(self, verb: str, key: str, fn: Callable[[], Any]) -> Any:
        with self._lock:
            queue = self._faults.get(verb)
            fault = queue.pop(0) if queue and queue[0][2] in key else None
            self.raised += fault is not None
        if fault is not None and not fault[1]:
            raise fault[0]
        result = fn()
        if fault is not None:
            raise fault[0]
        return result

    def put(self, key: str, data: Any) -> None:
        payload = data if isinstance(data, bytes) else data.read()
        self.puts.append((key, payload))
        self._call("put", key, lambda: self.inner.put(key, payload))

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        return self._call("put_if_match", key, lambda: self.inner.put_if_match(key, data, etag))

    def list(self, prefix: str = "", start_after: str | None = None) -> Any:
        return self._call("list", prefix, lambda: list(self.inner.list(prefix, start_after)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def make_shipper(storage: Storage, spool: Storage, sync_interval_s: float = 0.0,
                 acks: list[int] | None = None, on_ack: Callable[[], Any] | None = None) -> Shipper:
    cfg = ReplicaConfig(name="r", url=storage.url, type="file", sync_interval_s=sync_interval_s)
    return Shipper(cfg, storage, spool, "/data/app.db",
                   on_ack=on_ack or (lambda: acks.append(1) if acks is not None else None))


@pytest.fixture(params=["memory", "file"])
def replica_storage(request, tmp_path: Path) -> Storage:
    if request.param == "memory":
        return MemoryStorage("memory://replica")
    return FileStorage(tmp_path / "replica")


@pytest.fixture
def spool(tmp_path: Path) -> Storage:
    return FileStorage(tmp_path / "spool", durable=False)


@pytest.fixture
def fast_retries(monkeypatch) -> None:
    """Backoff of milliseconds: the thread tests wait for rounds, not for minutes."""
    monkeypatch.setattr(replica, "RETRY_DELAY_S", (0.005, 0.02))


def segments(storage: Storage) -> list[tuple[int, int]]:
    listing = layout.parse_listing(storage.list(layout.GENERATIONS))
    return [(s.first_txid, s.last_txid) for g in listing.generations for s in g.segments]


def assert_no_overlap(storage: Storage) -> None:
    for gen in layout.parse_listing(storage.list(layout.GENERATIONS)).generations:
        spans = sorted((s.first_txid, s.last_txid) for s in gen.segments)
        for (_, last), (first, _) in zip(spans, spans[1:]):
            assert first == last + 1, f"{gen.name}: overlapping or missing history in {spans}"


# -- order and merging -----------------------------------------------------------------------


def test_ships_in_order_snapshot_before_the_segments_after_it(replica_storage, spool) -> None:
    storage = Failing(replica_storage)
    snap1 = spool_snapshot(spool, 1)
    for t in (2, 3, 4):
        spool_segment(spool, t, t)
    snap4 = spool_snapshot(spool, 4)  # taken once txid 4 was spooled, like the daemon does
    for t in (5, 6):
        spool_segment(spool, t, t)
    snap_b = spool_snapshot(spool, 7, GEN2)
    spool_segment(spool, 8, 8, GEN2)
    acks: list[int] = []
    shipper = make_shipper(storage, spool, acks=acks)
    shipper.recover()
    shipper.ship_pending()

    # Sorted by txid, a snapshot goes before the segment of its own txid (it holds it already),
    # and a run of segments is merged only up to the next snapshot.
    assert [k for k, _ in storage.puts] == [layout.REPLICA_META, snap1, seg(2, 3), snap4,
                                            seg(4, 6), snap_b, seg(8, 8, GEN2)]
    assert shipper.pending() == [] and (shipper.shipped_generation, shipper.shipped_txid) == (GEN2, 8)
    assert len(acks) == 6  # once per object: the spool may prune as it goes
    header, txs = decode_segment(replica_storage.get(seg(4, 6)))
    assert [t.txid for t in txs] == [4, 5, 6] and header.first_txid == 4


def test_merges_consecutive_segments_up_to_max_merged_bytes(replica_storage, spool, monkeypatch) -> None:
    spool_snapshot(spool, 1)
    keys = [spool_segment(spool, t, t, pad=PAGE_SIZE) for t in range(2, 9)]  # 7 similar segments
    size = max(spool.stat(k).size for k in keys)
    monkeypatch.setattr(replica, "MAX_MERGED_BYTES", int(3.5 * size))
    shipper = make_shipper(replica_storage, spool)
    shipper.recover()
    shipper.ship_pending()
    assert segments(replica_storage) == [(2, 4), (5, 7), (8, 8)]
    assert all(replica_storage.stat(k).size <= 3.5 * size for k in (o.key for o in replica_storage.list("generations/")))


def test_recovers_what_the_replica_holds_from_one_list_at_start(replica_storage, spool) -> None:
    spool_snapshot(spool, 1)
    spool_segment(spool, 2, 3)
    first = make_shipper(replica_storage, spool)
    first.recover()
    first.ship_pending()
    first.release()
    spool_segment(spool, 4, 4)

    counted = RetryingStorage(Failing(replica_storage))
    again = make_shipper(counted, spool)
    again.recover()
    assert counted.requests["list"] == 1
    assert [i.key for i in again.pending()] == [seg(4, 4)]
    assert again.segments_upto == {GEN: 3} and again.history[GEN][1] > 0
    again.ship_pending()
    for t in (5, 6, 7):  # the steady state never lists the replica
        spool_segment(spool, t, t)
        again.ship_pending()
    assert counted.requests["list"] == 1
    assert [k for k, _ in counted.inner.puts] == [seg(t, t) for t in (4, 5, 6, 7)]  # nothing again


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "lost"])
def test_a_failed_put_is_retried_as_the_same_object(replica_storage, spool, landed: bool) -> None:
    """A PUT that timed out may have landed: the next round sends that very object again
    instead of merging a longer run, which would leave two objects holding txids 2-3."""
    storage = Failing(replica_storage)
    spool_snapshot(spool, 1)
    spool_segment(spool, 2, 2)
    spool_segment(spool, 3, 3)
    shipper = make_shipper(storage, spool)
    shipper.recover()
    storage.fail("put", Transient("timed out talking to the store"), times=2, landed=landed,
                 key="/segments/")
    with pytest.raises(Transient):
        shipper.ship_pending()  # replica.json and the snapshot ship; the merged 2-3 times out
    (failed_key, failed_bytes) = storage.puts[-1]
    spool_segment(spool, 4, 4)  # more commits arrive while the store is away
    spool_segment(spool, 5, 5)
    with pytest.raises(Transient):
        shipper.ship_pending()
    assert storage.puts[-1] == (failed_key, failed_bytes), "the retry was not the same object"
    shipper.ship_pending()
    retries = [p for p in storage.puts if p[0] == failed_key]
    assert len(retries) == 3 and all(p == retries[0] for p in retries)
    assert segments(replica_storage) == [(2, 3), (4, 5)]  # the rest still merged into one
    assert_no_overlap(replica_storage)
    assert shipper.pending() == []


def test_an_unexpected_exception_does_not_kill_the_thread(replica_storage, spool, fast_retries,
                                                          caplog) -> None:
    storage = Failing(replica_storage)
    spool_snapshot(spool, 1)
    shipper = make_shipper(storage, spool)
    shipper.recover()
    storage.fail("put", RuntimeError("a bug in a wrapper"), times=1000, key="/snapshots/")
    with caplog.at_level(logging.WARNING, logger="replicator.replica"):
        shipper.start()
        shipper.wake.set()
        wait_for(lambda: storage.raised >= 3, 10, "several rounds failing with the bug")
        assert shipper._thread is not None and shipper._thread.is_alive()
        wait_for(lambda: shipper.consecutive_failures >= 2, 10, "the failures counted")
        assert shipper.last_error == "RuntimeError: a bug in a wrapper"
        assert shipper.last_error_kind == "internal" and shipper.last_upload_at is None
        storage.heal()
        wait_for(lambda: not shipper.pending(), 10, "the snapshot shipped once the bug is gone")
        wait_for(lambda: shipper.last_error is None, 10, "the error to clear")
        assert shipper.consecutive_failures == 0 and shipper.last_error_kind is None
        assert shipper.last_upload_at is not None and shipper.last_upload_at <= time.time()
        spool_segment(spool, 2, 2)  # and it keeps shipping
        shipper.wake.set()
        wait_for(lambda: not shipper.pending(), 10, "a later segment shipped")
        assert shipper.stop(5)
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, "logged once with its traceback, not once per round"
    assert "a bug in a wrapper" in caplog.text and tracebacks[0].exc_info[0] is RuntimeError


@pytest.mark.parametrize("error", [Transient("store unreachable"), RuntimeError("a bug")],
                         ids=["transient", "unexpected"])
def test_stop_while_failing_returns_promptly_and_keeps_the_spool(replica_storage, spool, error,
                                                                 monkeypatch) -> None:
    monkeypatch.setattr(replica, "RETRY_DELAY_S", (5.0, 5.0))  # stop must cut the backoff short
    storage = Failing(replica_storage)
    spool_snapshot(spool, 1)
    shipper = make_shipper(storage, spool)
    shipper.recover()
    storage.fail("put", error, times=1000, key="/snapshots/")
    shipper.start()
    shipper.wake.set()
    wait_for(lambda: shipper.consecutive_failures >= 1, 10, "a failed round")
    assert shipper.last_error_kind == ("transient" if isinstance(error, Transient) else "internal")
    started = time.monotonic()
    assert shipper.stop(30) is False
    assert time.monotonic() - started < 2
    assert shipper._thread is not None and not shipper._thread.is_alive()
    assert shipper.pending() and spool.list(layout.GENERATIONS)


def test_stop_drains_the_spool(replica_storage, spool) -> None:
    spool_snapshot(spool, 1)
    shipper = make_shipper(replica_storage, spool, sync_interval_s=60)  # a round a minute
    shipper.recover()
    shipper.start()
    shipper.wake.set()
    wait_for(lambda: not shipper.pending(), 10, "the first round")
    for t in range(2, 6):
        spool_segment(spool, t, t)  # spooled right after a round: the next is a minute away
    started = time.monotonic()
    assert shipper.stop(10) is True
    assert time.monotonic() - started < 2
    assert segments(replica_storage) == [(2, 5)] and shipper.pending() == []
    assert not shipper._thread.is_alive()
    assert layout.LEASE not in [o.key for o in replica_storage.list()], "the lease is released"


def test_stop_is_prompt_when_it_comes_as_a_round_ends(replica_storage, spool) -> None:
    """stop() sees nothing pending once the last object is marked, and may wake the thread
    before that round has finished: the wake-up must not be lost to a sync interval wait."""
    spool_snapshot(spool, 1)
    holder: list[Shipper] = []
    # The round's ack waits for stop() to have signalled: that ordering is the point here.
    shipper = make_shipper(replica_storage, spool, sync_interval_s=60,
                           on_ack=lambda: holder[0].stopping.wait(10))
    holder.append(shipper)
    shipper.recover()
    shipper.start()
    shipper.wake.set()
    wait_for(lambda: not shipper.pending(), 10, "the snapshot marked as shipped")
    started = time.monotonic()
    assert shipper.stop(10) is True
    assert time.monotonic() - started < 2, "stop() waited out the sync interval"
    assert not shipper._thread.is_alive()
