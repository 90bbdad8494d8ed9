"""storage/retry.py: which errors are retried, how long it waits (the injected rng and sleep,
so nothing here sleeps), how many times, what it counts, and what a retry sends again."""

from __future__ import annotations

import io
import random
from typing import Any, Iterator

import pytest

from replicator.storage import (
    AlreadyExists,
    Integrity,
    MemoryStorage,
    NotFound,
    ObjectInfo,
    Permanent,
    PreconditionFailed,
    RetryingStorage,
    Throttled,
    Transient,
)
from replicator.storage.retry import BASE_DELAY_S, DEFAULT_ATTEMPTS, MAX_DELAY_S


class Scripted:
    """MemoryStorage whose calls fail as scripted: failures[verb] is a list of errors raised
    by the next calls of that method, one each, before it behaves normally again."""

    def __init__(self, **failures: list[Exception]):
        self.inner = MemoryStorage("memory://scripted")
        self.url = self.inner.url
        self.failures = failures
        self.calls: list[str] = []

    def _maybe_fail(self, name: str) -> None:
        self.calls.append(name)
        if self.failures.get(name):
            raise self.failures[name].pop(0)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self._maybe_fail(name)
            return method(*args, **kwargs)

        return call


class UpperBound(random.Random):
    """An rng whose jitter is always the full interval: exposes the cap of each delay."""

    def uniform(self, a: float, b: float) -> float:
        return b


def retrying(inner: Any, attempts: int = DEFAULT_ATTEMPTS, rng: random.Random | None = None
             ) -> tuple[RetryingStorage, list[float]]:
    sleeps: list[float] = []
    return RetryingStorage(inner, attempts=attempts, sleep=sleeps.append, rng=rng or random.Random(7)), sleeps


def test_transient_errors_are_retried_with_full_jitter_from_the_injected_rng() -> None:
    inner = Scripted(get=[Transient("blip"), Throttled("slow down")])
    inner.inner.put("k", b"v")
    storage, sleeps = retrying(inner, rng=random.Random(7))
    assert storage.get("k") == b"v"
    expected = random.Random(7)
    assert sleeps == [expected.uniform(0, BASE_DELAY_S), expected.uniform(0, BASE_DELAY_S * 2)]
    assert inner.calls == ["get"] * 3 and storage.requests == {"get": 3}


def test_backoff_doubles_up_to_the_cap() -> None:
    inner = Scripted(stat=[Transient("down")] * 12)
    inner.inner.put("k", b"v")
    storage, sleeps = retrying(inner, attempts=13, rng=UpperBound())
    assert storage.stat("k").size == 1
    caps = [min(MAX_DELAY_S, BASE_DELAY_S * 2**i) for i in range(12)]
    assert sleeps == caps and sleeps[-1] == MAX_DELAY_S and sleeps[0] == BASE_DELAY_S


@pytest.mark.parametrize("err", [NotFound("gone"), Permanent("denied"), PreconditionFailed("raced"),
                                 AlreadyExists("there"), Integrity("mismatch"), ValueError("a bug")])
def test_other_errors_are_raised_at_once(err: Exception) -> None:
    storage, sleeps = retrying(Scripted(get=[err]))
    with pytest.raises(type(err)) as info:
        storage.get("k")
    assert info.value is err and sleeps == [] and storage.requests == {"get": 1}


def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    errors = [Transient(f"down {i}") for i in range(10)]
    inner = Scripted(put=list(errors))
    storage, sleeps = retrying(inner, attempts=4)
    with pytest.raises(Transient) as info:
        storage.put("k", b"v")
    assert info.value is errors[3]
    assert inner.calls == ["put"] * 4 and len(sleeps) == 3 and storage.requests == {"put": 4}
    with pytest.raises(NotFound):
        inner.inner.get("k")


def test_requests_are_counted_by_verb_for_every_attempt() -> None:
    inner = Scripted(open=[Transient("blip")])
    storage, _ = retrying(inner)
    storage.put("a", b"1")
    storage.put("b", io.BytesIO(b"2"))
    storage.put_if_absent("c", b"3")
    etag = storage.put_if_match("d", b"4", None)
    storage.get("a")
    storage.get_with_etag("d")
    assert storage.open("a").read() == b"1"  # one failed attempt, then the stream
    storage.stat("a")
    assert [o.key for o in storage.list()] == ["a", "b", "c", "d"]
    storage.delete_many(["a", "b"])
    assert storage.put_if_match("d", b"5", etag)
    assert storage.requests == {"put": 5, "get": 4, "head": 1, "list": 1, "delete": 1}


def test_a_retried_put_sends_the_stream_again_from_where_it_started() -> None:
    class Consuming(Scripted):
        """The first put reads (part of) the stream before the connection drops."""

        def put(self, key: str, data: Any) -> None:
            self.calls.append("put")
            if len(self.calls) == 1:
                data.read(5)
                raise Transient("reset mid-upload")
            self.inner.put(key, data)

    stream = io.BytesIO(b"HEADERpayload-bytes")
    stream.seek(6)  # the caller positioned it: only what follows is the object
    inner = Consuming()
    storage, sleeps = retrying(inner)
    storage.put("k", stream)
    assert inner.inner.get("k") == b"payload-bytes"
    assert inner.calls == ["put", "put"] and len(sleeps) == 1


def test_a_listing_that_breaks_midway_is_listed_again_whole() -> None:
    class BreaksOnce(Scripted):
        def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
            self.calls.append("list")
            for i, info in enumerate(self.inner.list(prefix, start_after)):
                if len(self.calls) == 1 and i == 2:
                    raise Transient("connection reset on page 2")
                yield info

    inner = BreaksOnce()
    for i in range(5):
        inner.inner.put(f"k{i}", b"x")
    storage, _ = retrying(inner)
    assert [o.key for o in storage.list()] == [f"k{i}" for i in range(5)]  # no duplicates
    assert storage.requests == {"list": 2}


def test_a_retried_delete_deletes_the_same_keys_from_a_generator() -> None:
    inner = Scripted(delete_many=[Transient("blip")])
    for key in "abc":
        inner.inner.put(key, b"x")

    def keys() -> Iterator[str]:
        yield from ("a", "b")

    storage, _ = retrying(inner)
    storage.delete_many(keys())  # a generator is consumed once: the retry must not get nothing
    assert [o.key for o in inner.inner.list()] == ["c"]
    assert storage.requests == {"delete": 2}


def test_other_attributes_reach_the_backend() -> None:
    inner = MemoryStorage("memory://x")
    storage, _ = retrying(inner)
    assert storage.url == "memory://x" and storage._objects is inner._objects
