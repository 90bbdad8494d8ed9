"""SIGTERM/SIGINT as a threading.Event that the main thread can wait on without hanging.

`signal.signal(sig, lambda *_: stop.set())` with the main thread in `stop.wait()` can hang
for good in two ways. With worker threads running, the kernel may deliver the process-directed
signal to one of them: CPython only flags it, the main thread's blocked lock acquire is never
interrupted, and the Python handler never runs. And when the handler does run in the main
thread, it can run inside `Event.wait` while that thread holds the Event's non-reentrant
Condition lock, so `set()` deadlocks on it. Here the C-level handler writes the signal number
to a wake-up pipe (`signal.set_wakeup_fd`), which works whichever thread the kernel picked,
and a small watcher thread reading that pipe sets the Event: no Python code runs in a handler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _ignore(signum: int, frame: object) -> None:
    """A Python handler must be installed for the C handler to write the wake-up byte;
    SIG_IGN would discard the signal before it reaches the pipe."""


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[threading.Event]:
    """Within the block, any of `signals` sets the yielded Event (main thread only)."""
    stop = threading.Event()
    r, w = os.pipe()
    os.set_blocking(w, False)
    previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, _ignore) for sig in signals}

    def watch() -> None:
        while True:
            data = os.read(r, 64)
            if not data:  # the write end is closed: the block has ended
                return
            received = [b for b in data if b in signals]
            if received and stop.is_set():
                log.info("already stopping (signal %d again)", received[-1])
            if received:
                stop.set()

    watcher = threading.Thread(target=watch, name="signal-watcher", daemon=True)
    watcher.start()
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(w)
        watcher.join(5)
        os.close(r)
