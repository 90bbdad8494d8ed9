"""Progress on a terminal (rich): a bar with bytes, rate and ETA, or a spinner with the
elapsed time where the total is unknown. Nothing at all when stderr is not a terminal
(cron, systemd, pipes), unless forced with --progress.

The library reports through plain callbacks (restore.Progress: bytes done, bytes total);
this is the only module that knows rich.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

Report = Callable[[int, int], None]


def wanted(flag: bool | None) -> bool:
    """--progress / --no-progress, else: only when stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag


def _console(forced: bool):
    from rich.console import Console

    return Console(stderr=True, force_terminal=True if forced and not sys.stderr.isatty() else None)


@contextlib.contextmanager
def bar(description: str, enabled: bool) -> Iterator[Report]:
    """Yields a (done, total) callback drawing a byte bar; callable from any thread."""
    if not enabled:
        yield lambda done, total: None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=_console(True), transient=False) as p:
        task = p.add_task(description, total=None)
        yield lambda done, total: p.update(task, completed=done, total=total)


@contextlib.contextmanager
def spinner(description: str, enabled: bool) -> Iterator[None]:
    """A spinner with the elapsed time, for waits of unknown length (a daemon's snapshot)."""
    if not enabled:
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=_console(True), transient=False) as p:
        p.add_task(description, total=None)
        yield
