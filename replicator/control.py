"""The running replicator's control socket: `status`, `snapshot` and `sync` are asked of it.

One Unix socket per database, in its spool (`<spool>/control.sock`), so a command that knows
only the database path finds it without a config, and a daemon restarting one database (a
reload) takes its socket with it. Owner-only twice over: the file is 0600 from its first
instant (bound in a private directory, then renamed into place), and the peer's uid
(SO_PEERCRED) must be the daemon's own or root's. A request is served at once and answered on
the connection that asked, where the polled request files it replaces waited for the next
wake-up and left files behind when either side died. Protocol: one JSON object per line each
way; an answer carries "ok" and either the result or "error" (one line, shown to the user).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ReplicatorError

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_REQUEST_BYTES = 64 << 10  # requests are a few dozen bytes; a peer sending more is cut off
MAX_REPLY_BYTES = 16 << 20  # a status of many replicas is a few KiB
_SUN_PATH_MAX = 100  # sockaddr_un's sun_path is 108 bytes with the NUL; keep a margin

Handler = Callable[[dict[str, Any]], Any]


class ControlServer:
    """Serves `handlers[request["op"]](request)` to owner-only peers, one thread per connection
    (a `sync --wait` may take a while; it must not hold up a `status`)."""

    def __init__(self, spool_dir: Path, handlers: dict[str, Handler]):
        self.path = spool_dir / SOCKET_NAME
        self.handlers = handlers
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._sock = _bind_private(self.path)
        self._sock.listen(16)
        self._thread = threading.Thread(target=self._accept, name=f"control-{self.path.parent.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
        sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _accept(self) -> None:
        sock = self._sock
        while sock is not None and self._sock is sock:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed by stop()
            threading.Thread(target=self._serve, args=(conn,), name="control-request", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                if not _peer_allowed(conn):
                    _send(conn, {"ok": False, "error": "permission denied: not the replicator's user"})
                    return
                request = _recv(conn)
                handler = self.handlers.get(str(request.get("op")))
                if handler is None:
                    reply: dict[str, Any] = {"ok": False, "error": f"unknown request {request.get('op')!r}"}
                else:
                    reply = {"ok": True, "result": handler(request)}
            except ReplicatorError as err:
                reply = {"ok": False, "error": str(err)}
            except (OSError, ValueError) as err:  # the peer went away or sent garbage
                log.debug("control request dropped: %s", err)
                return
            except Exception as err:  # noqa: BLE001 - a bug answers the client, never kills the daemon
                log.exception("control request failed (a bug): %s", err)
                reply = {"ok": False, "error": f"internal error: {type(err).__name__}"}
            with contextlib.suppress(OSError):
                _send(conn, reply)


def ask(spool_dir: Path, request: dict[str, Any], timeout_s: float) -> Any | None:
    """The running replicator's answer, or None when none serves this database (no socket,
    or a stale one nobody listens on). An answer that is an error raises it."""
    path = spool_dir / SOCKET_NAME
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        try:
            with _short_path(path) as addr:
                sock.connect(addr)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except PermissionError:
            raise ReplicatorError(f"not allowed to talk to the replicator of this database ({path})",
                                  "run the command as the replicator's user") from None
        try:
            _send(sock, request)
            reply = _recv(sock, MAX_REPLY_BYTES)
        except TimeoutError:
            raise ReplicatorError(f"the running replicator did not answer within {timeout_s:g}s") from None
        except (OSError, ValueError) as err:
            raise ReplicatorError(f"the running replicator's answer was cut off ({err})") from None
    finally:
        sock.close()
    if not reply.get("ok"):
        raise ReplicatorError(str(reply.get("error", "the running replicator refused the request")))
    return reply.get("result")


def _bind_private(path: Path) -> socket.socket:
    """A listening socket at `path`, never reachable by others: bound inside a 0700
    directory, made 0600, then renamed over any stale socket (the spool's lock says no
    other replicator serves this database)."""
    private = Path(tempfile.mkdtemp(prefix=".control-", dir=path.parent))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        tmp = private / SOCKET_NAME
        with _short_path(tmp) as addr:
            sock.bind(addr)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as err:
        sock.close()
        raise ReplicatorError(f"cannot create the control socket {path}: {err.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(private)
    return sock


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """An address for `path` that fits sun_path: the path itself, or for a deep spool the
    same file reached through /proc/self/fd/N of its directory (Linux resolves it)."""
    if len(os.fsencode(path)) < _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _peer_allowed(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (os.geteuid(), 0)


def _send(sock: socket.socket, obj: Any) -> None:
    sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


def _recv(sock: socket.socket, limit: int = MAX_REQUEST_BYTES) -> dict[str, Any]:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("connection closed before a whole line")
        buf += chunk
        if len(buf) > limit:
            raise ValueError("message too long")
    obj = json.loads(buf)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj
