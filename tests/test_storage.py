"""One conformance test every Storage backend must pass, so they stay interchangeable."""

from __future__ import annotations

import io
import os

import pytest

from replicator.storage import (
    AlreadyExists,
    FileStorage,
    MemoryStorage,
    NotFound,
    PreconditionFailed,
    Storage,
)

MIB = 1 << 20
PART = 5 * MIB  # S3's minimum part size: the smallest that still exercises multipart


class ShortReads(io.RawIOBase):
    """A stream returning at most 1 MiB per read, like a pipe or socket."""

    def __init__(self, data: bytes):
        self._src = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
        chunk = self._src.read(min(len(buf), MIB))
        buf[: len(chunk)] = chunk
        return len(chunk)


@pytest.fixture(params=["memory", "file", "s3-moto",
                        pytest.param("s3-seaweedfs", marks=pytest.mark.seaweedfs)])
def storage(request, tmp_path, make_bucket):
    if request.param == "memory":
        backend: Storage = MemoryStorage()
    elif request.param == "file":
        backend = FileStorage(tmp_path / "replica")
    else:
        from replicator.storage.s3 import S3Storage

        server = request.getfixturevalue("moto_server" if request.param == "s3-moto" else "seaweedfs_server")
        backend = S3Storage(make_bucket(server, part_size=PART, concurrency=3))
    yield backend
    backend.close()


def test_conformance(storage: Storage) -> None:
    assert isinstance(storage, Storage)

    # put / get / stat
    storage.put("gen/0001/snapshot", b"hello world")
    assert storage.get("gen/0001/snapshot") == b"hello world"
    assert storage.stat("gen/0001/snapshot").size == 11
    storage.put("gen/0001/snapshot", io.BytesIO(b"replaced"))  # small stream: one PUT
    assert storage.get("gen/0001/snapshot") == b"replaced"
    storage.put("empty", b"")
    assert storage.get("empty") == b"" and storage.stat("empty").size == 0

    # streams longer than a part (multipart on S3), including one ending exactly on a boundary
    big = os.urandom(12 * MIB + 12345)
    storage.put("big", ShortReads(big))
    assert storage.stat("big").size == len(big)
    assert storage.get("big") == big
    exact = big[:PART]
    storage.put("exact", io.BytesIO(exact))
    assert storage.get("exact") == exact

    # ranged reads
    with storage.open("big") as f:
        assert f.read(10) == big[:10]
        assert f.read() == big[10:]

    def read(*args: int) -> bytes:
        with storage.open("big", *args) as f:
            return f.read()

    assert read(5, 10) == big[5:15]
    assert read(PART - 3, 6) == big[PART - 3:PART + 3]
    assert read(len(big) - 4) == big[-4:]
    assert read(len(big) - 4, 100) == big[-4:]
    assert read(len(big)) == b""
    assert read(7, 0) == b""

    # listing: lexical order, prefix filter, start_after
    for key in ("l/a/1", "l/a/10", "l/a/2", "l/ab", "l/b/1"):
        storage.put(key, key.encode())
    keys = lambda *a, **k: [i.key for i in storage.list(*a, **k)]  # noqa: E731
    assert keys("l/") == ["l/a/1", "l/a/10", "l/a/2", "l/ab", "l/b/1"]
    assert keys("l/a/") == ["l/a/1", "l/a/10", "l/a/2"]
    assert keys("l/a") == ["l/a/1", "l/a/10", "l/a/2", "l/ab"]
    assert keys("l/", start_after="l/a/10") == ["l/a/2", "l/ab", "l/b/1"]
    assert keys("l/a/", start_after="l/a/2") == []
    assert keys("nothing/") == []
    assert [i.size for i in storage.list("l/a/")] == [5, 6, 5]
    assert keys() == sorted(keys()) and {"big", "empty", "exact", "gen/0001/snapshot"} <= set(keys())

    # put_if_absent
    storage.put_if_absent("once", b"first")
    with pytest.raises(AlreadyExists):
        storage.put_if_absent("once", b"second")
    assert storage.get("once") == b"first"

    # put_if_match: None creates; a stale or wrong etag loses; the current etag wins
    etag1 = storage.put_if_match("cas", b"v1", None)
    data, etag = storage.get_with_etag("cas")
    assert (data, etag) == (b"v1", etag1)
    with pytest.raises(PreconditionFailed):
        storage.put_if_match("cas", b"v2", None)
    with pytest.raises(PreconditionFailed):
        storage.put_if_match("cas", b"v2", '"0123456789abcdef0123456789abcdef"')
    etag2 = storage.put_if_match("cas", b"v2", etag1)
    assert storage.get_with_etag("cas") == (b"v2", etag2) and etag2 != etag1
    with pytest.raises(PreconditionFailed):
        storage.put_if_match("cas", b"v3", etag1)
    with pytest.raises(PreconditionFailed):
        storage.put_if_match("cas-missing", b"v1", etag2)
    assert storage.get("cas") == b"v2"

    # delete_many (missing keys are fine) and NotFound
    storage.delete_many(["l/a/1", "l/a/2", "l/never-existed"])
    assert keys("l/a/") == ["l/a/10"]
    storage.delete_many([])
    storage.delete_many(i.key for i in storage.list("l/"))
    assert keys("l/") == []
    for missing in (storage.get, storage.get_with_etag, storage.stat, storage.open):
        with pytest.raises(NotFound):
            missing("l/a/1")
