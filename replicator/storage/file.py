"""Filesystem backend: a directory tree mirroring the key space.

Writes are atomic and durable: temp file in the same directory, fsync, rename, fsync of the
directory, so a crash leaves either no object or the whole object under its final name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import threading
import secrets
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from .base import (
    AlreadyExists,
    NotFound,
    ObjectInfo,
    Permanent,
    PreconditionFailed,
    StorageError,
    Transient,
)

_COPY_CHUNK = 1 << 20  # 1 MiB: large enough for sequential throughput, small for memory
_TMP_PREFIX = ".tmp-"
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def create_exclusive(path: str | os.PathLike, mode: int = 0o666) -> BinaryIO:
    """A new file opened for writing that cannot be a planted symlink or an existing file
    (O_EXCL|O_NOFOLLOW); `mode` is filtered by the umask as usual."""
    return os.fdopen(os.open(path, _TMP_FLAGS, mode), "wb")


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _translate(err: OSError, what: str) -> StorageError:
    if err.errno == errno.ENOENT:
        return NotFound(f"{what} not found")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR):
        return Permanent(f"{what}: {err.strerror}")
    return Transient(f"{what}: {err.strerror}")


class FileStorage:
    """Objects as files under `root`; keys map to relative paths."""

    conditional_writes = True  # link(2) and an flock'd compare-and-swap (local filesystems)

    def __init__(self, root: str | os.PathLike, url: str | None = None, durable: bool = True,
                 file_mode: int = 0o666):
        """durable=False skips fsyncs; the owner must call sync() before relying on the data
        surviving a power loss (the spool does, before each checkpoint). `file_mode`: new
        objects' permission bits before the umask (the spool passes its database's)."""
        self.root = Path(root)
        self.url = url or f"file://{self.root}"
        self.durable = durable
        self._unsynced: set[str] = set()
        self._unsynced_lock = threading.Lock()
        self._root = str(self.root)
        self._dirs: set[str] = set()  # directories known to exist (see _tmp_name)
        self.file_mode = file_mode

    def _path(self, key: str) -> Path:
        return Path(self._spath(key))

    def _spath(self, key: str) -> str:
        """The file of `key`, as a string: the copy loop and shippers put and delete
        hundreds of objects a second, and pathlib's parsing was a tenth of their work."""
        if key.startswith("/") or ".." in key.split("/"):
            raise Permanent(f"invalid key {key!r}")
        return f"{self._root}/{key}"

    def _tmp_name(self, path: str) -> str:
        """A unique temp name beside `path`, its directory created if need be."""
        parent, name = os.path.split(path)
        if parent not in self._dirs:
            os.makedirs(parent, exist_ok=True)
            self._dirs.add(parent)
        return f"{parent}/{_TMP_PREFIX}{name}.{secrets.token_hex(8)}"

    def _write_tmp(self, path: str, data: bytes | BinaryIO) -> str:
        try:
            return self._write_tmp_once(path, data)
        except FileNotFoundError:
            self._dirs.discard(os.path.dirname(path))  # removed behind our back: once more
            return self._write_tmp_once(path, data)

    def _write_tmp_once(self, path: str, data: bytes | BinaryIO) -> str:
        tmp = self._tmp_name(path)
        try:
            with create_exclusive(tmp, self.file_mode) as out:
                if isinstance(data, (bytes, bytearray, memoryview)):
                    out.write(data)
                else:
                    shutil.copyfileobj(data, out, _COPY_CHUNK)
                out.flush()
                if self.durable:
                    os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):  # a full disk must not keep the partial copy
                os.unlink(tmp)
            raise
        return tmp

    def put(self, key: str, data: bytes | BinaryIO) -> None:
        path = self._spath(key)
        try:
            tmp = self._link_tmp(path, data) or self._write_tmp(path, data)
            try:
                os.replace(tmp, path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            if self.durable:
                fsync_dir(os.path.dirname(path))
            else:
                with self._unsynced_lock:
                    self._unsynced.add(path)
        except OSError as err:
            raise _translate(err, f"{self.url}/{key}") from None

    def _link_tmp(self, path: str, data: bytes | BinaryIO) -> str | None:
        """A durable local file on the same filesystem is linked, not copied.

        Objects are immutable, and a second name on one filesystem survives exactly what a
        copy there would; a snapshot of a large database then costs no second write.
        """
        name = getattr(data, "name", None)
        if not isinstance(name, str) or not self.durable or getattr(data, "tell", lambda: 0)() != 0:
            return None
        try:
            tmp = self._tmp_name(path)
            if os.stat(name).st_dev != os.stat(os.path.dirname(path)).st_dev:
                return None
            with open(name, "rb") as src:
                os.fsync(src.fileno())  # the link shares the source's data: make it durable
            os.link(name, tmp)
            return tmp
        except OSError:
            return None  # no hard links here (other filesystem, permissions): copy instead

    def sync(self, exclude: Iterable[str] = ()) -> None:
        """Make every object written since the last sync durable (files, then directories);
        the keys in `exclude` stay pending for the next sync (their bytes are durable elsewhere
        meanwhile: the spool's state log carries them).

        On failure every path taken stays pending (none is forgotten, so a later sync cannot
        "succeed" over it), and the error is raised: after a failed fsync the kernel may
        have dropped the data, so the caller must treat these objects as lost and write
        them again (PostgreSQL's fsync lesson), not merely retry the fsync.
        """
        skip = {self._spath(k) for k in exclude}
        with self._unsynced_lock:
            paths, self._unsynced = self._unsynced - skip, self._unsynced & skip
        try:
            self._fsync_paths(paths)
        except OSError as err:
            with self._unsynced_lock:
                self._unsynced |= paths
            raise _translate(err, f"{self.url} (sync)") from None

    def sync_all(self) -> None:
        """fsync every object and directory under the root (after a restart, when which
        were synced is not known)."""
        paths = {self._spath(o.key) for o in self.list()}
        try:
            self._fsync_paths(paths)
        except OSError as err:
            raise _translate(err, f"{self.url} (sync)") from None
        with self._unsynced_lock:
            self._unsynced -= paths

    @staticmethod
    def _fsync_paths(paths: set[str]) -> None:
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # already shipped and pruned: nothing left to protect
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for parent in {os.path.dirname(p) for p in paths}:
            try:
                fsync_dir(parent)
            except FileNotFoundError:
                continue

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """Stream an object into place: visible under `key` only once whole and durable."""
        path = self._path(key)
        tmp = Path(self._tmp_name(str(path)))
        try:
            with create_exclusive(tmp, self.file_mode) as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def put_if_absent(self, key: str, data: bytes) -> None:
        path = self._spath(key)
        try:
            tmp = self._write_tmp(path, data)
            try:
                os.link(tmp, path)  # link(2) fails atomically if the name exists
            except FileExistsError:
                raise AlreadyExists(f"{self.url}/{key} already exists") from None
            finally:
                os.unlink(tmp)
            fsync_dir(os.path.dirname(path))
        except OSError as err:
            raise _translate(err, f"{self.url}/{key}") from None

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        """Compare-and-swap under an flock on a sidecar lock file (local filesystems only)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(path.parent / f".lock-{path.name}", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                current = self._etag(path.read_bytes())
            except FileNotFoundError:
                current = None
            if current != etag:
                raise PreconditionFailed(f"{self.url}/{key} changed concurrently")
            self.put(key, data)
            return self._etag(data)
        finally:
            os.close(lock_fd)

    @staticmethod
    def _etag(data: bytes) -> str:
        return hashlib.md5(data).hexdigest()

    def get(self, key: str) -> bytes:
        try:
            with open(self._spath(key), "rb") as f:
                return f.read()
        except OSError as err:
            raise _translate(err, f"{self.url}/{key}") from None

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        data = self.get(key)
        return data, self._etag(data)

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        try:
            f = open(self._path(key), "rb")
        except OSError as err:
            raise _translate(err, f"{self.url}/{key}") from None
        if offset:
            f.seek(offset)
        if length is None:
            return f
        import io

        with f:
            return io.BytesIO(f.read(length))

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = self._path(key).stat()
        except OSError as err:
            raise _translate(err, f"{self.url}/{key}") from None
        return ObjectInfo(key, st.st_size)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Walk only the directories that can hold keys under `prefix`, in sorted order."""
        base_dir, _, _ = prefix.rpartition("/")
        start = self.root / base_dir if base_dir else self.root
        if not start.is_dir():
            return iter(())
        return self._walk(start, prefix, start_after)

    def _walk(self, directory: Path, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except FileNotFoundError:
            return
        except OSError as err:
            raise _translate(err, str(directory)) from None
        for entry in entries:
            if entry.name.startswith((_TMP_PREFIX, ".lock-")):
                continue
            key = os.path.relpath(entry.path, self.root).replace(os.sep, "/")
            if entry.is_dir(follow_symlinks=False):
                if prefix.startswith(key + "/") or key.startswith(prefix) or prefix == "":
                    yield from self._walk(Path(entry.path), prefix, start_after)
                continue
            if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                continue
            try:
                size = entry.stat().st_size
            except FileNotFoundError:
                continue  # deleted while listing
            yield ObjectInfo(key, size)

    def delete_many(self, keys: Iterable[str]) -> None:
        parents = set()
        for key in keys:
            path = self._spath(key)
            try:
                os.unlink(path)
                parents.add(os.path.dirname(path))
            except FileNotFoundError:
                pass
            except OSError as err:
                raise _translate(err, f"{self.url}/{key}") from None
        if self.durable:
            for parent in parents:
                fsync_dir(parent)

    def close(self) -> None:
        pass
