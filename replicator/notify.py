"""systemd's notify protocol (sd_notify(3)): readiness, status and watchdog pings as
datagrams to $NOTIFY_SOCKET. Without it (not under systemd, or `Type=simple`) every send is
a no-op, so the daemon calls it unconditionally.

A dozen lines of socket code instead of a dependency: the protocol is one `sendto` of
newline-separated KEY=VALUE lines to a Unix datagram socket; a name starting with '@' is in
the abstract namespace (a leading NUL byte on the wire).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to one socket (or nowhere). Never raises: a manager that went
    away must not stop replication; the first failure is logged once."""

    def __init__(self, address: str | None, watchdog_s: float | None = None):
        self.address = address or None
        self.watchdog_s = watchdog_s  # the manager's watchdog period, None when it has none
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        """$NOTIFY_SOCKET, and $WATCHDOG_USEC when $WATCHDOG_PID is unset or names us
        (sd_watchdog_enabled's rule: a watchdog meant for a parent is not ours)."""
        watchdog_s = None
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1e6
        return cls(environ.get("NOTIFY_SOCKET"), watchdog_s)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """One datagram of `lines` (e.g. "READY=1", "STATUS=..."); True if it was sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), target)
            return True
        except OSError as err:
            if not self._failed:
                log.warning("cannot notify the service manager at %s: %s", self.address, err.strerror or err)
                self._failed = True
            return False

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 tell this reload from an earlier one
        return self.send("RELOADING=1", "STATUS=reloading the config",
                         f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# The environment a child (run --exec) must not inherit: the manager talks to us, not to it.
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
