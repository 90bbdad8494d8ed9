"""Real processes for end-to-end tests: the replicator CLI and the workload writer."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "replicator"
STARTED: list[subprocess.Popen] = []  # reaped after each test by conftest's fixture
SHIPPED = re.compile(r"shipped \S+ \(txid (\d+)-(\d+)\)")


def start_writer(db: Path, ops: int, seed: int, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(TESTS / "workload.py"), str(db), str(ops), str(seed), *extra])
    STARTED.append(proc)
    return proc


def start_replicator(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(BIN), "-v", *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    STARTED.append(proc)
    return proc


def reap() -> None:
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll with a deadline: the test fails with `what` if it never becomes true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def shipped_txids(log: Path) -> int:
    """Highest txid the replicator has reported as shipped, from its debug log."""
    best = 0
    for m in SHIPPED.finditer(log.read_text(errors="replace")):
        best = max(best, int(m.group(2)))
    return best


def read_oracle(db: Path) -> list[tuple[int, int, int]]:
    rows = []
    for line in (Path(str(db) + ".oracle")).read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return rows
