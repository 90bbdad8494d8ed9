"""In-process backend for fast unit tests of everything above storage/."""

from __future__ import annotations

import hashlib
import io
import threading
from typing import BinaryIO, Iterable, Iterator

from .base import AlreadyExists, NotFound, ObjectInfo, PreconditionFailed


def _read_all(data: bytes | BinaryIO) -> bytes:
    return bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else data.read()


class MemoryStorage:
    """A dict of immutable byte strings; safe to share between threads."""

    conditional_writes = True  # under one lock

    def __init__(self, url: str = "memory://"):
        self.url = url
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _etag(data: bytes) -> str:
        return hashlib.md5(data).hexdigest()

    def put(self, key: str, data: bytes | BinaryIO) -> None:
        payload = _read_all(data)
        with self._lock:
            self._objects[key] = payload

    def put_if_absent(self, key: str, data: bytes) -> None:
        with self._lock:
            if key in self._objects:
                raise AlreadyExists(f"{self.url}/{key} already exists")
            self._objects[key] = bytes(data)

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        with self._lock:
            current = self._objects.get(key)
            current_etag = None if current is None else self._etag(current)
            if current_etag != etag:
                raise PreconditionFailed(f"{self.url}/{key} changed concurrently")
            self._objects[key] = bytes(data)
            return self._etag(self._objects[key])

    def get(self, key: str) -> bytes:
        with self._lock:
            try:
                return self._objects[key]
            except KeyError:
                raise NotFound(f"{self.url}/{key} not found") from None

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        data = self.get(key)
        return data, self._etag(data)

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        data = self.get(key)
        end = len(data) if length is None else offset + length
        return io.BytesIO(data[offset:end])

    def stat(self, key: str) -> ObjectInfo:
        data = self.get(key)
        return ObjectInfo(key, len(data), self._etag(data))

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        with self._lock:
            keys = sorted(k for k in self._objects if k.startswith(prefix))
            infos = [ObjectInfo(k, len(self._objects[k])) for k in keys]
        return iter([i for i in infos if start_after is None or i.key > start_after])

    def delete_many(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._objects.pop(key, None)

    def close(self) -> None:
        pass
