"""Crash points for the crash tests: `REPLICATOR_CRASH_AT=name[:n]` makes the process
SIGKILL itself the n-th time (default 1st) it reaches the point `name`, so a test can crash
the replicator inside a checkpoint's fence or half-way through a snapshot, not only at a
random moment. `REPLICATOR_HANG_AT=name[:n]` instead blocks the thread that reaches it for
good (a wedged worker, for the watchdog's tests). Unset (always, outside tests), `point()` is
two global lookups.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "REPLICATOR_CRASH_AT"
HANG_ENV = "REPLICATOR_HANG_AT"


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, n = value.partition(":")
    return name, int(n) if n.isdigit() else 1


_target = _parse(os.environ.get(ENV))
_hang = _parse(os.environ.get(HANG_ENV))
_seen = 0
_hang_seen = 0


def point(name: str) -> None:
    """A place where a crash is worth testing (see the module docstring)."""
    global _seen, _hang_seen
    if _hang is not None and _hang[0] == name:
        _hang_seen += 1
        if _hang_seen >= _hang[1]:
            threading.Event().wait()  # never set: this thread is wedged from here on
    if _target is None or _target[0] != name:
        return
    _seen += 1
    if _seen >= _target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
