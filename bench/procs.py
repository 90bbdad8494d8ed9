"""Processes the benchmark starts, and what /proc says about them.

Every process is started in a process group the benchmark owns and is registered, so
`cleanup()` (run from a finally) ends exactly the processes this benchmark started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
_started: list[subprocess.Popen] = []


def spawn(args: list[str], log: Path | None = None, *, new_group: bool = True,
          process_group: int | None = None, env: dict | None = None, cwd: str | None = None) -> subprocess.Popen:
    """Start a process (its own group unless process_group joins an existing one of ours)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        kwargs: dict = {}
        if process_group is not None:
            kwargs["process_group"] = process_group
        elif new_group:
            kwargs["process_group"] = 0  # its own group in our session, so others can join it
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, **kwargs)
    finally:
        if log:
            out.close()
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int | None:
    """Signal one process and wait; SIGKILL if it does not exit in time. Returns its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ValueError):
        _started.remove(proc)
    return proc.returncode


def end_run(run_dir: Path, running: list[subprocess.Popen | None], s3_configs: bool = True) -> None:
    """After one measured run: kill what it left running, and delete its YAML configs when
    they hold (throwaway) S3 credentials."""
    for p in running:
        if p is not None and p.poll() is None:
            stop(p, 9, 10)
    if s3_configs:
        for cfg in run_dir.glob("*.yml"):
            cfg.unlink()


def kill_group(pgid: int, members: list[subprocess.Popen]) -> None:
    """SIGKILL a whole process group of ours in one call (all members die together)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    for p in members:
        p.wait()
        with contextlib.suppress(ValueError):
            _started.remove(p)


def cleanup() -> None:
    """Kill every process this benchmark started and has not stopped yet."""
    for proc in list(_started):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        _started.remove(proc)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out.extend(int(c) for c in (task / "children").read_text().split())
    return out


def tree(pid: int) -> list[int]:
    """pid and its living descendants."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(_children(p))
    return seen


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on


def cpu_seconds(pid: int) -> float:
    """utime+stime of pid and its living descendants, plus cutime+cstime of those reaped."""
    total = 0
    for i, p in enumerate(tree(pid)):
        try:
            f = _stat_fields(p)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])  # utime, stime (fields 14, 15)
        if i == 0:
            total += int(f[13]) + int(f[14])  # cutime, cstime (fields 16, 17)
    return total / CLK_TCK


def cpu_ns_precise(pid: int) -> int:
    """Sum of schedstat run time over the living threads of pid's tree (ns resolution)."""
    total = 0
    for p in tree(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    return total


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of pid (the largest over its living descendants, if any has a larger one)."""
    best = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]) * 1024)
    return best


class FileSizePoller:
    """Polls a file's size every interval in a thread; keeps the high-water mark."""

    def __init__(self, path: str, interval_s: float = 0.05):
        self.path = path
        self.interval_s = interval_s
        self.high = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.high = max(self.high, os.stat(self.path).st_size)
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "FileSizePoller":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_for(predicate, timeout_s: float, interval_s: float = 0.02, proc: subprocess.Popen | None = None) -> float | None:
    """Seconds until predicate() is true, or None on timeout (or if proc died)."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s or (proc is not None and proc.poll() is not None):
            return None
        time.sleep(interval_s)


def drop_file_cache(paths: list[Path]) -> None:
    """Evict files from the page cache (fsync, then POSIX_FADV_DONTNEED): a cold read without
    needing /proc/sys/vm/drop_caches."""
    for p in paths:
        with contextlib.suppress(OSError):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def drop_caches_global() -> bool:
    """sync; echo 3 > /proc/sys/vm/drop_caches. False where not permitted (containers)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False
