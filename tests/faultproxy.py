"""A fault-injecting HTTP proxy on 127.0.0.1 for S3 tests (stdlib only).

It sits between the code under test and a real S3 server (moto's server mode, SeaweedFS) and
forwards every request unchanged (the Host header too, so signatures still verify), except
the ones a test told it to break. Faults are chosen per request, at runtime, by rules:

    proxy.inject(ERROR, method="PUT", path="/segments/", times=3, code="SlowDown")
    proxy.inject(RESET_DOWNLOAD, method="GET", fraction=0.5, seed=1)
    proxy.clear()

`path` is a substring of the request target (path and query string, so `list-type=2`
picks out ListObjectsV2). The proxy counts requests by method and records every fault it
injected, and whether the request had reached the server first (`forwarded`: a PUT that
was forwarded may have taken effect although the client saw a failure), so tests can
assert that the faults they meant really happened.

Each client request goes upstream on a connection of its own (no pooling to get wrong);
client connections are kept alive like a real server's, and closed after a fault.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import http.server
import io
import random
import socket
import socketserver
import struct
import threading
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

ERROR = "error"  # an S3 XML error response, without forwarding (code= picks which)
RESET_UPLOAD = "reset-upload"  # read half the request body, then reset: never reaches the server
RESET_DOWNLOAD = "reset-download"  # forward, send half the response, then reset
TRUNCATE = "truncate"  # forward, send the full Content-Length header but half the body, then close
STALL = "stall"  # hold the request (forwarded first unless forward=False), answer nothing, close
KINDS = (ERROR, RESET_UPLOAD, RESET_DOWNLOAD, TRUNCATE, STALL)

ERROR_STATUS = {"InternalError": 500, "SlowDown": 503, "ServiceUnavailable": 503}
ERROR_MESSAGE = {"InternalError": "We encountered an internal error. Please try again.",
                 "SlowDown": "Please reduce your request rate.",
                 "ServiceUnavailable": "Service is unable to handle request."}
DEFAULT_STALL_S = 5.0
UPSTREAM_TIMEOUT_S = 60.0  # a server slower than this is a broken test setup, not a fault
# Neither forwarded nor passed back: they describe one hop, and the proxy makes its own.
_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "expect", "te", "trailer",
                "transfer-encoding", "upgrade"}


@dataclasses.dataclass
class Rule:
    """Which requests get a fault: all conditions given must hold; `times` bounds how many
    faults the rule injects (None: no bound), `fraction` is the chance per matching request
    (drawn from its own seeded generator, so a run is repeatable for a given request order)."""

    kind: str
    method: str | None = None
    path: str | None = None
    times: int | None = None
    fraction: float = 1.0
    seed: int = 0
    code: str = "InternalError"
    stall_s: float = DEFAULT_STALL_S
    forward: bool = True  # STALL only: whether the server sees the request first
    injected: int = 0
    rng: random.Random = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.kind == ERROR and self.code not in ERROR_STATUS:
            raise ValueError(f"unknown error code {self.code!r} (one of {', '.join(ERROR_STATUS)})")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be within [0, 1], got {self.fraction!r}")
        if self.times is not None and self.times < 0:
            raise ValueError(f"times must be >= 0, got {self.times!r}")
        self.rng = random.Random(self.seed)

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.injected >= self.times

    def fires(self, method: str, target: str) -> bool:
        if self.exhausted or (self.method is not None and self.method != method):
            return False
        if self.path is not None and self.path not in target:
            return False
        return self.fraction >= 1.0 or self.rng.random() < self.fraction


@dataclasses.dataclass(frozen=True)
class Injected:
    """One fault that happened: what, to which request, and whether the server saw it."""

    kind: str
    method: str
    target: str
    forwarded: bool
    code: str | None = None  # ERROR: the S3 error code answered


class FaultProxy:
    """`with FaultProxy(server.endpoint) as proxy:` then point the client at `proxy.url`."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = (parts.hostname, parts.port)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self.requests: collections.Counter[str] = collections.Counter()  # method -> received
        self.injected: list[Injected] = []
        self.closing = threading.Event()  # ends stalls and idle connections on close()
        self._server = _Server(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting, end stalls and kept-alive connections, join every handler thread."""
        if self.closing.is_set():
            return
        self.closing.set()
        self._server.shutdown()
        self._thread.join()
        self._server.drop_connections()
        self._server.server_close()  # joins the handler threads (block_on_close)

    # -- control, from the test -----------------------------------------------------------

    def inject(self, kind: str, *, method: str | None = None, path: str | None = None,
               times: int | None = None, fraction: float = 1.0, seed: int = 0,
               code: str = "InternalError", stall_s: float = DEFAULT_STALL_S,
               forward: bool = True) -> Rule:
        """Add a rule (checked after the ones before it); returns it, to read `injected`."""
        rule = Rule(kind, method, path, times, fraction, seed, code, stall_s, forward)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """No more faults from now on (requests already being broken finish breaking)."""
        with self._lock:
            self._rules.clear()

    def faults(self, kind: str | None = None, method: str | None = None) -> int:
        """How many faults were injected, optionally of one kind and/or method."""
        with self._lock:
            return sum(1 for f in self.injected
                       if (kind is None or f.kind == kind) and (method is None or f.method == method))

    # -- used by the handler --------------------------------------------------------------

    def _choose(self, method: str, target: str) -> Rule | None:
        with self._lock:
            self.requests[method] += 1
            for rule in self._rules:
                if rule.fires(method, target):
                    rule.injected += 1
                    return rule
        return None

    def _record(self, rule: Rule, method: str, target: str, forwarded: bool) -> None:
        with self._lock:
            self.injected.append(Injected(rule.kind, method, target, forwarded,
                                          rule.code if rule.kind == ERROR else None))


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = False  # joined by server_close: no handler outlives the proxy
    block_on_close = True

    def __init__(self, proxy: FaultProxy):
        self.proxy = proxy
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def track(self, sock: socket.socket, alive: bool) -> None:
        with self._conns_lock:
            if alive:
                self._conns.add(sock)
            else:
                self._conns.discard(sock)

    def drop_connections(self) -> None:
        """Wake handlers blocked reading the next request of a kept-alive connection."""
        with self._conns_lock:
            conns = list(self._conns)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler


@dataclasses.dataclass
class _Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def head(self, head_request: bool) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {self.reason}"]
        lines += [f"{k}: {v}" for k, v in self.headers
                  if k.lower() not in _HOP_HEADERS and (head_request or k.lower() != "content-length")]
        if not head_request and not (100 <= self.status < 200 or self.status in (204, 304)):
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue answered for us
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the connection was reset on purpose
        self.server.track(self.connection, False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass  # one line per request on stderr otherwise

    def __getattr__(self, name: str):  # do_GET, do_PUT, ...: every method is proxied alike
        if name.startswith("do_"):
            return self._proxy
        raise AttributeError(name)

    def _proxy(self) -> None:
        proxy, method, target = self.server.proxy, self.command, self.path
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # The S3 client under test always sends a Content-Length; say so if that changes.
            self._send(_Response(411, "Length Required", [], b""), method)
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        rule = proxy._choose(method, target)
        kind = rule.kind if rule is not None else None
        if rule is not None and kind == RESET_UPLOAD:
            self.rfile.read(length // 2)
            proxy._record(rule, method, target, forwarded=False)
            self._reset()
            return
        body = self.rfile.read(length)
        if rule is not None and (kind == ERROR or (kind == STALL and not rule.forward)):
            proxy._record(rule, method, target, forwarded=False)
            if kind == STALL:
                self._stall(rule)
            else:
                self._send(_error(rule.code, target), method)
            return
        try:
            resp = self._forward(method, target, body)
        except (OSError, http.client.HTTPException):
            # The server is down or broke the exchange: what a gateway says then.
            self._send(_Response(502, "Bad Gateway", [], b""), method)
            self.close_connection = True
            return
        if rule is None:
            self._send(resp, method)
            return
        proxy._record(rule, method, target, forwarded=True)
        if kind == STALL:
            self._stall(rule)
            return
        head, data = self._wire(resp, method)
        # Half the body; without one (a PUT's answer), half the status line: a response cut
        # among its headers would still parse as complete.
        self.wfile.write(head + data[:len(data) // 2] if data else head[:head.index(b"\r\n") // 2])
        self.wfile.flush()
        if kind == RESET_DOWNLOAD:
            self._reset()
        else:
            self.close_connection = True  # a clean close, short of the promised length

    def _stall(self, rule: Rule) -> None:
        self.server.proxy.closing.wait(rule.stall_s)  # the fault itself: longer than the client waits
        self.close_connection = True

    def _forward(self, method: str, target: str, body: bytes) -> _Response:
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS]
        head = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers] + ["Connection: close"]
        with socket.create_connection(self.server.proxy.upstream, timeout=UPSTREAM_TIMEOUT_S) as up:
            up.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            resp = http.client.HTTPResponse(up, method=method)
            try:
                resp.begin()
                data = resp.read()
                return _Response(resp.status, resp.reason, resp.getheaders(), data)
            finally:
                resp.close()

    @staticmethod
    def _wire(resp: _Response, method: str) -> tuple[bytes, bytes]:
        head_request = method == "HEAD"
        return resp.head(head_request), b"" if head_request else resp.body

    def _send(self, resp: _Response, method: str) -> None:
        head, body = self._wire(resp, method)
        self.wfile.write(head + body)
        self.wfile.flush()

    def _reset(self) -> None:
        """Close with RST rather than FIN (SO_LINGER 0): the client sees ECONNRESET."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.wfile.close()
        self.connection.close()
        # The base class flushes and closes these after the request: let it, harmlessly.
        self.rfile, self.wfile = io.BytesIO(), io.BytesIO()


def _error(code: str, target: str) -> _Response:
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{ERROR_MESSAGE[code]}</Message>"
            f"<Resource>{escape(target)}</Resource><RequestId>faultproxy</RequestId></Error>").encode()
    status = ERROR_STATUS[code]
    return _Response(status, http.HTTPStatus(status).phrase, [("Content-Type", "application/xml")], body)

