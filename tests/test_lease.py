"""The single-writer lease, on local backends and moto S3, with an injected clock."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from replicator import lease
from replicator.errors import LeaseHeld
from replicator.storage import FileStorage, MemoryStorage, RetryingStorage, Storage, Transient

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


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
