"""Retry with exponential backoff and full jitter, for transient errors only.

Idempotent operations only: every Storage verb is (objects are immutable, conditional
writes either happen once or fail with a typed error).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, BinaryIO, Callable, Iterable, Iterator, TypeVar

from .base import ObjectInfo, Storage, Transient

T = TypeVar("T")
log = logging.getLogger(__name__)

BASE_DELAY_S = 0.05  # first retry soon: most blips are a dropped connection
MAX_DELAY_S = 5.0  # cap so a returning store is noticed within seconds
DEFAULT_ATTEMPTS = 5  # ~10 s of trying before the caller (who keeps the spool) takes over


class RetryingStorage:
    """Wraps a backend; counts requests by verb (the cost metric) and retries Transient."""

    def __init__(self, inner: Storage, attempts: int = DEFAULT_ATTEMPTS,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None):
        self.inner = inner
        self.url = inner.url
        self.attempts = attempts
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}

    def request_counts(self) -> dict[str, int]:
        """A copy of the counts by verb, safe to read while other threads make requests."""
        with self._lock:
            return dict(self.requests)

    def _call(self, verb: str, fn: Callable[[], T]) -> T:
        for attempt in range(self.attempts):
            with self._lock:
                self.requests[verb] = self.requests.get(verb, 0) + 1
            try:
                return fn()
            except Transient as err:
                if attempt == self.attempts - 1:
                    raise
                delay = self._rng.uniform(0, min(MAX_DELAY_S, BASE_DELAY_S * 2**attempt))
                log.debug("%s %s failed (%s), retrying in %.2fs", verb, self.url, err, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes | BinaryIO) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            start = data.tell()

            def again() -> None:
                data.seek(start)
                self.inner.put(key, data)

            return self._call("put", again)
        return self._call("put", lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: bytes) -> None:
        return self._call("put", lambda: self.inner.put_if_absent(key, data))

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        return self._call("put", lambda: self.inner.put_if_match(key, data, etag))

    def get(self, key: str) -> bytes:
        return self._call("get", lambda: self.inner.get(key))

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        return self._call("get", lambda: self.inner.get_with_etag(key))

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        return self._call("get", lambda: self.inner.open(key, offset, length))

    def stat(self, key: str) -> ObjectInfo:
        return self._call("head", lambda: self.inner.stat(key))

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        return iter(self._call("list", lambda: list(self.inner.list(prefix, start_after))))

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        return self._call("delete", lambda: self.inner.delete_many(keys))

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
