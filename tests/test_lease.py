"""The single-writer lease, on local backends and moto S3, with an injected clock."""

from __future__ import annotations

import json
import os
import socket

import pytest

from replicator import lease
from replicator.errors import LeaseHeld
from replicator.storage import FileStorage, MemoryStorage

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


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
