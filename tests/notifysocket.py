"""A datagram socket standing in for systemd's $NOTIFY_SOCKET: it collects what the daemon
sends (sd_notify's KEY=VALUE lines, one message per datagram) with the time each arrived."""

from __future__ import annotations

import os
import socket
import threading
import time


class NotifySocket:
    def __init__(self) -> None:
        self.address = f"@replicator-test-{os.getpid()}-{time.monotonic_ns()}"  # abstract: no path limits
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, OSError):
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.address}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def received(self, key: str, value: str | None = None, since: float = 0.0) -> list[dict[str, str]]:
        with self._lock:
            return [m for t, m in self.messages if t >= since and key in m and (value is None or m[key] == value)]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.sock.close()
