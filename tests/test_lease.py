"""The single-writer lease, on local backends and moto S3, with an injected clock."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from replicator import lease
from replicator.errors import LeaseHeld
from replicator.storage import FileStorage, MemoryStorage, RetryingStorage, Storage, Transient, Unsupported

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


class LostAnswers:
    """A store whose next `lose` conditional writes land but whose answers never arrive, like
    a timeout or reset after the store applied the PUT (the one part that cannot be real);
    `refuse` instead fails the next ones before they land."""

    def __init__(self, inner: Storage):
        self.inner, self.url = inner, inner.url
        self.lose = self.refuse = 0

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        if self.refuse:
            self.refuse -= 1
            raise Transient(f"{self.url}/{key}: connection refused")
        new_etag = self.inner.put_if_match(key, data, etag)
        if self.lose:
            self.lose -= 1
            raise Transient(f"{self.url}/{key}: timed out")
        return new_etag

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


@pytest.fixture(params=["memory", "file", "s3-moto"])
def storage(request, tmp_path, make_bucket):
    if request.param == "memory":
        return MemoryStorage()
    if request.param == "file":
        return FileStorage(tmp_path / "replica")
    from replicator.storage.s3 import S3Storage  # real If-Match semantics and quoted etags

    return S3Storage(make_bucket(request.getfixturevalue("moto_server")))


def test_second_owner_is_refused_with_the_holder_named(storage) -> None:
    clock = Clock()
    held = lease.acquire(storage, "alpha:1:aaaa", ttl_s=30, now=clock)
    assert held.expires_at == T0 + 30
    record = json.loads(storage.get(lease.LEASE_KEY))
    assert record["owner"] == "alpha:1:aaaa" and record["pid"] == os.getpid()
    assert record["hostname"] == socket.gethostname() and record["acquired_at"] == T0

    clock.t += 29
    with pytest.raises(LeaseHeld) as info:
        lease.acquire(storage, "beta:2:bbbb", ttl_s=30, now=clock)
    message = str(info.value)
    assert "alpha:1:aaaa" in message and socket.gethostname() in message
    assert f"pid {os.getpid()}" in message and "2023-11-14T22:13:50Z" in message

    again = lease.acquire(storage, "alpha:1:aaaa", ttl_s=30, now=clock)  # same owner: re-entrant
    assert json.loads(storage.get(lease.LEASE_KEY))["acquired_at"] == T0
    assert again.expires_at == clock.t + 30


def test_renew_extends_and_expiry_allows_takeover(storage) -> None:
    clock = Clock()
    alpha = lease.acquire(storage, "alpha", ttl_s=10, now=clock)
    clock.t += 8
    alpha.renew()
    clock.t += 8  # 16 s after acquiring, but only 8 after the renew
    with pytest.raises(LeaseHeld):
        lease.acquire(storage, "beta", ttl_s=10, now=clock)

    clock.t += 3  # alpha stopped renewing: its lease has lapsed
    beta = lease.acquire(storage, "beta", ttl_s=10, now=clock)
    with pytest.raises(LeaseHeld, match="lease lost to beta"):
        alpha.renew()
    beta.renew()  # the loser's failed attempt did not disturb the winner
    assert json.loads(storage.get(lease.LEASE_KEY))["owner"] == "beta"


def test_release_lets_the_next_owner_in_but_never_frees_a_successor(storage) -> None:
    clock = Clock()
    lease.acquire(storage, "alpha", ttl_s=10, now=clock).release()
    assert list(storage.list(lease.LEASE_KEY)) == []
    beta = lease.acquire(storage, "beta", ttl_s=10, now=clock)

    clock.t += 11
    gamma = lease.acquire(storage, "gamma", ttl_s=10, now=clock)
    beta.release()  # stale holder: must not delete gamma's lease
    assert json.loads(storage.get(lease.LEASE_KEY))["owner"] == "gamma"
    gamma.renew()


def test_garbled_lease_is_overwritten(storage) -> None:
    storage.put(lease.LEASE_KEY, b"not json")
    assert lease.acquire(storage, "alpha", ttl_s=10, now=Clock()).owner == "alpha"
    assert lease.new_owner().startswith(f"{socket.gethostname()}:{os.getpid()}:")


def test_a_retried_write_that_meets_our_own_landed_write_keeps_the_lease(storage) -> None:
    """The retry after a lost answer gets 412 (the etag moved: our own write); the token in
    the record read back says it was ours, so the lease is kept, not lost to ourselves."""
    clock = Clock()
    flaky = LostAnswers(storage)
    retrying = RetryingStorage(flaky, sleep=lambda s: None)
    flaky.lose = 1
    held = lease.acquire(retrying, "alpha", ttl_s=30, now=clock)
    assert held.expires_at == T0 + 30

    clock.t += 20
    flaky.lose = 1
    held.renew()
    assert held.expires_at == T0 + 50
    clock.t += 20
    held.renew()  # the etag adopted from the read-back is the current one
    assert json.loads(storage.get(lease.LEASE_KEY))["expires_at"] == T0 + 70

    with pytest.raises(LeaseHeld, match="held by alpha"):  # still a lease to everyone else
        lease.acquire(storage, "beta", ttl_s=30, now=clock)


def test_an_unanswered_write_is_settled_by_reading_the_lease_back(storage) -> None:
    """Without retries (or once they are spent) the failure is ambiguous: landed or not."""
    clock = Clock()
    flaky = LostAnswers(storage)
    flaky.refuse = 1
    with pytest.raises(Transient):  # did not land, and nobody else wrote: the caller retries
        lease.acquire(flaky, "alpha", ttl_s=30, now=clock)
    assert list(storage.list(lease.LEASE_KEY)) == []
    flaky.lose = 1
    held = lease.acquire(flaky, "alpha", ttl_s=30, now=clock)  # landed: ours
    assert json.loads(storage.get(lease.LEASE_KEY))["token"] == held.token

    clock.t += 20
    flaky.refuse = 1  # the record read back is our previous one: written over at once
    held.renew()
    assert held.expires_at == json.loads(storage.get(lease.LEASE_KEY))["expires_at"] == T0 + 50

    clock.t += 31  # alpha stalled past its expiry and beta took over
    lease.acquire(storage, "beta", ttl_s=30, now=clock)
    flaky.refuse = 1
    with pytest.raises(LeaseHeld, match="lease lost to beta"):
        held.renew()


def test_one_owner_on_two_instances_is_two_holders(storage) -> None:
    """Same owner string, different acquisitions (e.g. a restart while the old process still
    runs): the newer one takes the lease; the older one learns it at its next renewal."""
    clock = Clock()
    old = lease.acquire(storage, "alpha", ttl_s=30, now=clock)
    new = lease.acquire(storage, "alpha", ttl_s=30, now=clock)
    with pytest.raises(LeaseHeld, match="lease lost to alpha"):
        old.renew()
    new.renew()
    old.release()  # not its lease any more: must not free it
    assert json.loads(storage.get(lease.LEASE_KEY))["owner"] == "alpha"
    new.release()
    assert list(storage.list(lease.LEASE_KEY)) == []


# -- instance owner ------------------------------------------------------------------------


def make_spool(tmp_path: Path) -> tuple[str, Path]:
    from replicator.spool import spool_dir

    db = str(tmp_path / "app.db")
    spool = spool_dir(db)
    spool.mkdir()
    return db, spool


def test_instance_owner_is_stable_for_a_spool_and_new_for_a_fresh_one(storage, tmp_path) -> None:
    """Two containers with one hostname and one database path share `hostname:path`; their
    spools differ. A fresh spool at the same path (the second container) is another owner."""
    db, spool = make_spool(tmp_path)
    first = lease.instance_owner(spool)
    assert first.startswith(f"{socket.gethostname()}:{os.path.abspath(db)}:")
    assert lease.instance_owner(spool) == first  # a restart: the same instance
    assert os.stat(spool / lease.INSTANCE_ID_FILE).st_mode & 0o777 == 0o600

    clock = Clock()
    lease.acquire(storage, first, ttl_s=30, now=clock)
    os.rename(spool, tmp_path / "first-container")
    spool.mkdir()
    second = lease.instance_owner(spool)  # same hostname, same path, another spool
    assert second != first and second.rsplit(":", 1)[0] == first.rsplit(":", 1)[0]
    with pytest.raises(LeaseHeld, match="held by " + re.escape(first)):
        lease.acquire(storage, second, ttl_s=30, now=clock)

    os.rename(spool, tmp_path / "second-container")
    os.rename(tmp_path / "first-container", spool)
    again = lease.acquire(storage, lease.instance_owner(spool), ttl_s=30, now=clock)  # restarted: at once
    assert again.owner == first


@pytest.mark.parametrize("content", [b"", b"not an id\n", b"\xff\xfe", b"0123"])
def test_a_corrupt_instance_id_is_replaced_by_a_fresh_one(tmp_path, content: bytes) -> None:
    _, spool = make_spool(tmp_path)
    path = spool / lease.INSTANCE_ID_FILE
    path.write_bytes(content)
    os.chmod(path, 0o644)
    owner = lease.instance_owner(spool)
    instance_id = owner.rsplit(":", 1)[1]
    assert path.read_text() == instance_id + "\n" and len(instance_id) == 16
    int(instance_id, 16)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert lease.instance_owner(spool) == owner
    assert [p.name for p in spool.iterdir()] == [lease.INSTANCE_ID_FILE]  # no temp files left


def test_instance_owners_created_at_once_agree(tmp_path) -> None:
    """Creation is atomic (a complete file appears under its name, or nothing): callers
    racing on a fresh spool all read back the one id that was published."""
    _, spool = make_spool(tmp_path)
    start = threading.Barrier(8)
    owners: list[str] = []

    def create() -> None:
        start.wait()
        owners.append(lease.instance_owner(spool))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(owners) == 8 and len(set(owners)) == 1
    assert sorted(p.name for p in spool.iterdir()) == [lease.INSTANCE_ID_FILE]


# -- stores without conditional writes -----------------------------------------------------

SETTLE = 4.0  # Δ in these tests: a write must be answered within 2 s of its read


class NoConditionalWrites:
    """A store without atomic compare-and-swap: conditional writes raise Unsupported."""

    conditional_writes = False

    def __init__(self, inner: Storage):
        self.inner, self.url = inner, inner.url

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        raise Unsupported(f"{self.url}/{key}: not supported by this store")

    def put_if_absent(self, key: str, data: bytes) -> None:
        raise Unsupported(f"{self.url}/{key}: not supported by this store")

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


@pytest.fixture(params=["memory", "s3-moto-501"])
def connect(request, make_bucket) -> Callable[[], Storage]:
    """connect() -> one more client of one shared store without conditional writes: a
    wrapper, or S3Storage on moto answering 501 (each client learns it on its first try)."""
    if request.param == "memory":
        shared = MemoryStorage()
        return lambda: NoConditionalWrites(shared)
    from replicator.storage.s3 import S3Storage

    options = make_bucket(request.getfixturevalue("moto_without_conditional_writes"))
    return lambda: S3Storage(options)


class Turns:
    """Runs contenders on threads one step at a time in a scripted order of (who, step).

    A step is a lease read ("get"), a lease write ("put", answered before the next step
    starts) or a settle delay ("sleep", which moves that contender's clock by its length).
    """

    def __init__(self, script: list[tuple[str, str]]):
        self.script: list[tuple[str, str]] | None = list(script)
        self.cond = threading.Condition()

    def step(self, who: str, what: str, fn: Callable[[], Any]) -> Any:
        with self.cond:
            if self.script is None:  # script over: run freely
                return fn()
            if not self.cond.wait_for(lambda: self.script[:1] == [(who, what)], timeout=10):
                raise AssertionError(f"{who} wants to {what}; the script expects {self.script[:1]}")
        try:
            return fn()
        finally:
            with self.cond:
                self.script.pop(0)
                self.cond.notify_all()


class Scripted:
    """One contender's client: its lease reads and writes wait for their turn."""

    def __init__(self, inner: Storage, who: str, turns: Turns):
        self.inner, self.url, self.who, self.turns = inner, inner.url, who, turns

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        return self.turns.step(self.who, "get", lambda: self.inner.get_with_etag(key))

    def put(self, key: str, data: bytes) -> None:
        return self.turns.step(self.who, "put", lambda: self.inner.put(key, data))

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


def contend(connect: Callable[[], Storage], script: list[tuple[str, str]],
            clock_for: Callable[[str], Clock] = lambda who: Clock()) -> tuple[dict[str, Any], dict[str, Clock]]:
    """Contenders A and B each acquire the lease on their own client and clock (their own
    hosts) following `script`; returns what each acquire() returned or raised, and the clocks."""
    turns = Turns(script)
    clocks = {w: clock_for(w) for w in "AB"}
    results: dict[str, Any] = {}

    def run(w: str) -> None:
        clock = clocks[w]
        try:
            results[w] = lease.acquire(
                Scripted(connect(), w, turns), w, ttl_s=60, now=clock, monotonic=clock,
                sleep=lambda s: turns.step(w, "sleep", lambda: clock.sleep(s)), settle_s=SETTLE)
        except Exception as err:  # noqa: BLE001 (the test inspects it)
            results[w] = err

    threads = [threading.Thread(target=run, args=(w,)) for w in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert turns.script == [], f"steps never taken: {turns.script}; results: {results}"
    turns.script = None
    return results, clocks


def A(step: str) -> tuple[str, str]:
    return ("A", step)


def B(step: str) -> tuple[str, str]:
    return ("B", step)


INTERLEAVINGS = {
    # B reads the lease free before A's write lands; B's write lands last and wins.
    "b-reads-before-a-writes": ([A("get"), B("get"), A("put"), B("put"), A("sleep"), B("sleep"),
                                 A("get"), B("get")], "B"),
    # The same reads, but A's write lands last.
    "a-writes-last": ([A("get"), B("get"), B("put"), A("put"), B("sleep"), A("sleep"),
                       B("get"), A("get")], "A"),
    # B reads before A's write lands and writes while A is settling: A sees B's token.
    "b-writes-while-a-settles": ([A("get"), B("get"), A("put"), A("sleep"), B("put"), A("get"),
                                  B("sleep"), B("get")], "B"),
    # B reads after A's write landed: A's record is live, B stays out without writing.
    "b-reads-after-a-writes": ([A("get"), A("put"), B("get"), A("sleep"), A("get")], "A"),
}


@pytest.mark.parametrize("name", INTERLEAVINGS)
def test_without_conditional_writes_only_one_contender_wins(connect, name: str) -> None:
    script, winner = INTERLEAVINGS[name]
    results, clocks = contend(connect, script)
    loser = "A" if winner == "B" else "B"
    assert isinstance(results[winner], lease.Lease), results
    assert isinstance(results[loser], LeaseHeld) and f"held by {winner} " in str(results[loser])
    store = connect()
    assert json.loads(store.get(lease.LEASE_KEY))["token"] == results[winner].token
    clocks[winner].t += 31
    results[winner].renew()  # the winner goes on; a renewal needs no settle delay
    assert results[winner].expires_at == clocks[winner].t + 60


def test_a_write_answered_too_late_claims_nothing_and_fences_the_lease(connect) -> None:
    """A's write is answered after B read the lease free, wrote, settled and proved its
    claim (B's settle delay passes while A's PUT is in flight): A's write may have
    displaced B, so A must not claim, and nobody may take the lease until the fence expires;
    B learns at its next renewal."""
    script = [A("get"), B("get"), B("put"), B("sleep"), B("get"),  # B proved its claim...
              A("put"),  # ...then A's PUT lands, answered SETTLE s after A's read
              A("get"), A("put")]  # A fences the record
    shared_clock = Clock()  # one clock: B's settle delay passes during A's PUT
    results, _ = contend(connect, script, clock_for=lambda who: shared_clock)
    assert isinstance(results["B"], lease.Lease)
    assert isinstance(results["A"], Transient) and "fenced until it expires" in str(results["A"])
    store = connect()
    fence = json.loads(store.get(lease.LEASE_KEY))
    assert fence["owner"] == "A" and fence["token"] == lease.FENCED

    with pytest.raises(LeaseHeld, match="lease lost to nobody until .*: a lease write by A"):
        results["B"].renew()
    for owner in ("A", "C"):  # not even A takes it back
        with pytest.raises(LeaseHeld, match="held by nobody"):
            lease.acquire(store, owner, ttl_s=60, now=shared_clock, sleep=shared_clock.sleep,
                          monotonic=shared_clock, settle_s=SETTLE)
    shared_clock.t = fence["expires_at"]
    assert lease.acquire(store, "C", ttl_s=60, now=shared_clock, sleep=shared_clock.sleep,
                         monotonic=shared_clock, settle_s=SETTLE).owner == "C"


class CountingClock(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        super().sleep(s)


def acquire_counting(store: Storage, owner: str, clock: CountingClock) -> lease.Lease:
    return lease.acquire(store, owner, ttl_s=60, now=clock, sleep=clock.sleep, monotonic=clock,
                         settle_s=SETTLE)


def test_without_conditional_writes_renewals_check_the_token(connect) -> None:
    clock = CountingClock()
    store = connect()
    alpha = acquire_counting(store, "alpha", clock)
    assert clock.sleeps == [SETTLE] and alpha.expires_at == T0 + 60  # the record written before settling

    clock.t += 30
    alpha.renew()  # answered long before the old record expires: no settle delay
    assert clock.sleeps == [SETTLE] and alpha.expires_at == clock.t + 60

    clock.t += 59  # renewed late (an outage): within SETTLE of expiry, so it settles
    alpha.renew()
    assert clock.sleeps == [SETTLE, SETTLE] and alpha.expires_at == clock.t - SETTLE + 60

    with pytest.raises(LeaseHeld, match="held by alpha"):
        acquire_counting(store, "beta", clock)
    clock.t += 61
    beta = acquire_counting(store, "beta", clock)
    with pytest.raises(LeaseHeld, match="lease lost to beta"):
        alpha.renew()
    with pytest.raises(LeaseHeld, match="lease lost to beta"):  # for good: no more requests
        alpha.renew()
    alpha.release()
    assert json.loads(store.get(lease.LEASE_KEY))["owner"] == "beta"
    beta.release()
    assert list(store.list(lease.LEASE_KEY)) == []


def test_without_conditional_writes_a_restart_takes_its_lease_back_after_settling(connect) -> None:
    clock = CountingClock()
    store = connect()
    first = acquire_counting(store, "alpha", clock)
    clock.t += 10
    again = acquire_counting(store, "alpha", clock)  # crashed and restarted: same owner
    assert again.token != first.token and clock.sleeps == [SETTLE, SETTLE]
    assert json.loads(store.get(lease.LEASE_KEY))["acquired_at"] == T0
    with pytest.raises(LeaseHeld, match="lease lost to alpha"):
        first.renew()


def test_a_store_that_refuses_its_first_conditional_write_gets_the_settle_protocol() -> None:
    """S3 learns from the store's first answer (501) that it has no conditional writes."""

    class Learns(NoConditionalWrites):
        conditional_writes = True

        def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
            self.conditional_writes = False
            return super().put_if_match(key, data, etag)

    clock = CountingClock()
    store = Learns(MemoryStorage())
    held = acquire_counting(store, "alpha", clock)
    assert not store.conditional_writes and clock.sleeps == [SETTLE]
    assert json.loads(store.get(lease.LEASE_KEY))["token"] == held.token


def test_the_settle_delay_must_fit_in_the_lease(connect) -> None:
    with pytest.raises(ValueError, match="twice the settle delay"):
        lease.acquire(connect(), "alpha", ttl_s=8, now=Clock(), settle_s=4)


def test_over_http_two_contenders_that_both_read_before_either_writes_do_not_both_win(
        moto_without_conditional_writes, make_bucket) -> None:
    """Real HTTP to a store answering 501 to conditional PUTs. Whatever each contender
    reads or checks first, its first unconditional PUT of lease.json is held until the
    other's is on its way too, so both have read the lease free before either write lands.
    The settle delay is modelled as what it stands for: every PUT sent has landed when it
    is over."""
    server = moto_without_conditional_writes
    options = make_bucket(server, prefix="contended")
    from replicator.storage.s3 import S3Storage

    both_sent = threading.Barrier(2, timeout=10)
    landed = threading.Condition()
    puts = {"sent": 0, "landed": 0}

    def around_put(environ: dict, forward: Callable[[], Any]) -> Any:
        if environ["PATH_INFO"] != f"/{options.bucket}/contended/{lease.LEASE_KEY}":
            return forward()
        with landed:
            puts["sent"] += 1
            first_two = puts["sent"] <= 2
        if first_two:
            both_sent.wait()
        try:
            return forward()
        finally:
            with landed:
                puts["landed"] += 1
                landed.notify_all()

    def settle(_s: float) -> None:
        with landed:
            assert landed.wait_for(lambda: puts["landed"] >= 2, timeout=10)

    results: dict[str, Any] = {}

    def run(who: str) -> None:
        clock = Clock()
        try:
            results[who] = lease.acquire(S3Storage(options), who, ttl_s=60, now=clock,
                                         monotonic=clock, sleep=settle, settle_s=SETTLE)
        except Exception as err:  # noqa: BLE001 (inspected below)
            results[who] = err

    server.around_put = around_put
    try:
        threads = [threading.Thread(target=run, args=(w,)) for w in ("A", "B")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.around_put = None
    winners = sorted(w for w, r in results.items() if isinstance(r, lease.Lease))
    assert len(winners) == 1, results
    (loser,) = {"A", "B"} - set(winners)
    assert isinstance(results[loser], LeaseHeld) and f"held by {winners[0]} " in str(results[loser])
    record = json.loads(S3Storage(options).get(lease.LEASE_KEY))
    assert record["token"] == results[winners[0]].token


RECORD_FIELDS = {"owner", "token", "hostname", "pid", "acquired_at", "expires_at"}


@pytest.mark.parametrize("server", ["moto_server", "moto_without_conditional_writes"])
def test_lease_json_says_who_and_until_when_and_nothing_else(request, make_bucket, server: str) -> None:
    """Anyone who can list the replica reads lease.json: it carries no credentials."""
    from replicator.storage.s3 import S3Storage

    options = dataclasses.replace(make_bucket(request.getfixturevalue(server)),  # moto takes any
                                  access_key_id="AKIDLEASETEST0123", secret_access_key="lease-test-secret-4f1e")
    store = S3Storage(options)
    clock = Clock()
    held = lease.acquire(store, "alpha", ttl_s=60, now=clock, sleep=clock.sleep, monotonic=clock,
                         settle_s=SETTLE)
    records = [store.get(lease.LEASE_KEY)]
    clock.t += 40
    held.renew()
    records.append(store.get(lease.LEASE_KEY))
    held._fence()  # the other record we write: a fence (normally after a slow write)
    records.append(store.get(lease.LEASE_KEY))
    assert json.loads(records[-1])["token"] == lease.FENCED
    for raw in records:
        assert set(json.loads(raw)) == RECORD_FIELDS
        assert b"AKIDLEASETEST0123" not in raw and b"lease-test-secret-4f1e" not in raw
