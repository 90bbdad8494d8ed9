"""SIGTERM/SIGINT as a threading.Event that the main thread can wait on without hanging.

`signal.signal(sig, lambda *_: stop.set())` with the main thread in `stop.wait()` can hang
for good in two ways. With worker threads running, the kernel may deliver the process-directed
signal to one of them: CPython only flags it, the main thread's blocked lock acquire is never
interrupted, and the Python handler never runs. And when the handler does run in the main
thread, it can run inside `Event.wait` while that thread holds the Event's non-reentrant
Condition lock, so `set()` deadlocks on it. Here the C-level handler writes the signal number
to a wake-up pipe (`signal.set_wakeup_fd`), which works whichever thread the kernel picked,
and a small watcher thread reading that pipe sets the Event: no Python code runs in a handler.

`daemon_signals` is the same watcher for `run`: SIGTERM/SIGINT set `stop`, SIGHUP sets a
separate `reload`, and either sets `woke`, the one Event the daemon's main loop waits on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
from typing import Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNALS = (signal.SIGHUP,)


def _ignore(signum: int, frame: object) -> None:
    """A Python handler must be installed for the C handler to write the wake-up byte;
    SIG_IGN would discard the signal before it reaches the pipe."""


@dataclasses.dataclass
class Signals:
    """What the watcher has seen: `stop` (SIGTERM/SIGINT), `reload` (SIGHUP), and `woke`,
    set by either so that one wait serves both. `stops` counts stop signals and `last_stop`
    is the newest one's number (run --exec forwards each to its child)."""

    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    reload: threading.Event = dataclasses.field(default_factory=threading.Event)
    woke: threading.Event = dataclasses.field(default_factory=threading.Event)
    stops: int = 0
    last_stop: int = 0


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[threading.Event]:
    """Within the block, any of `signals` sets the yielded Event (main thread only)."""
    with _watching(signals, ()) as seen:
        yield seen.stop


@contextlib.contextmanager
def daemon_signals(stop: tuple[int, ...] = STOP_SIGNALS,
                   reload: tuple[int, ...] = RELOAD_SIGNALS) -> Iterator[Signals]:
    """Within the block, `stop` signals set .stop and `reload` signals .reload (main thread only)."""
    with _watching(stop, reload) as seen:
        yield seen


@contextlib.contextmanager
def _watching(stop_signals: tuple[int, ...], reload_signals: tuple[int, ...]) -> Iterator[Signals]:
    seen = Signals()
    r, w = os.pipe()
    os.set_blocking(w, False)
    previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, _ignore) for sig in (*stop_signals, *reload_signals)}

    def watch() -> None:
        while True:
            data = os.read(r, 64)
            if not data:  # the write end is closed: the block has ended
                return
            for b in data:
                if b in stop_signals:
                    if seen.stop.is_set():
                        log.info("already stopping (signal %d again)", b)
                    seen.stops += 1
                    seen.last_stop = b
                    seen.stop.set()
                    seen.woke.set()
                elif b in reload_signals:
                    seen.reload.set()
                    seen.woke.set()

    watcher = threading.Thread(target=watch, name="signal-watcher", daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(w)
        watcher.join(5)
        os.close(r)
