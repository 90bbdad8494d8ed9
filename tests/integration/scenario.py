"""The scenario matrix's moving parts: a scripted application process and the oracle.

The application (tests/app.py) does one thing per command and says when it is done, and the
replicator is a real `replicator replicate` process, so each cell of the matrix is a fixed
sequence of real events, not a race.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

from replicator import layout
from replicator.plan import Target
from replicator.restore import restore
from replicator.storage import open_storage

from .harness import STARTED, TESTS, shipped_txids, start_replicator, stop, wait_for

sys.path.insert(0, str(TESTS))
import app as app_mod  # noqa: E402


class AppProc:
    """tests/app.py as a child process, one command at a time."""

    def __init__(self, db: Path, seed: int, mode: str = "keep"):
        flag = {"keep": [], "per-write": ["--per-write"], "cli": ["--cli"]}[mode]
        self.proc = subprocess.Popen([sys.executable, str(TESTS / "app.py"), str(db), str(seed), *flag],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        STARTED.append(self.proc)
        self.seed = seed
        self.k = int(self._reply().split()[-1])

    def _reply(self) -> str:
        line = self.proc.stdout.readline().strip()
        assert line.startswith("ok"), f"application: {line or 'exited'}"
        return line

    def send(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def write(self, n: int) -> int:
        self.k = int(self.send(f"write {n}").split()[1])
        return self.k

    def quit(self) -> None:
        self.send("quit")
        self.proc.wait(30)
        self.proc.stdin.close()
        self.proc.stdout.close()


class Replicator:
    """One `replicator replicate DB file://REPLICA` run after another, each with its log."""

    def __init__(self, tmp: Path, db: Path, replica: Path):
        self.tmp, self.db, self.replica = tmp, db, replica
        self.logs: list[Path] = []
        self.proc: subprocess.Popen | None = None
        self.reported: list[int] = []  # highest txid each run reported as shipped

    def start(self) -> None:
        log = self.tmp / f"replicator-{len(self.logs)}.log"
        self.logs.append(log)
        self.proc = start_replicator(["replicate", str(self.db), f"file://{self.replica}"], log)

    @property
    def log(self) -> str:
        return self.logs[-1].read_text(errors="replace")

    def wait_tailing(self) -> None:
        """Until this run has resumed or started its generation (its tail is in place)."""
        wait_for(lambda: "resuming generation" in self.log or "started with a snapshot" in self.log
                 or self.proc.poll() is not None, 60, "the replicator to take up its tail")
        assert self.proc.poll() is None, self.log[-3000:]
        wait_for(lambda: "replicating" in self.log, 60, "the signal handlers")

    def wait_shipped(self, txid: int) -> None:
        wait_for(lambda: shipped_txids(self.logs[-1]) >= txid or self.proc.poll() is not None, 60,
                 f"txid {txid} to be shipped")
        assert self.proc.poll() is None, self.log[-3000:]

    def stop(self, kill: bool = False) -> None:
        assert self.proc is not None
        if kill:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        else:
            assert stop(self.proc) == 0, self.log[-3000:]
        self.reported.append(shipped_txids(self.logs[-1]))
        self.proc = None


def check_replica(replica: Path, tmp: Path, seed: int, final_k: int, reported: list[int],
                  samples: int = 4, rng_seed: int = 0) -> layout.Listing:
    """The oracle: the latest restore holds every committed transaction; every restore of
    every generation (its ends and random points between) is the application's state after
    some op k, with k never going back as txids grow; reported txids are restorable."""
    storage = open_storage(f"file://{replica}")
    listing = layout.parse_listing(storage.list(layout.GENERATIONS))
    rng = random.Random(rng_seed)
    out = tmp / "check.db"
    seen: dict[int, tuple[int, str]] = {}  # txid -> (k, hash); -1 = latest

    def at(txid: int | None) -> None:
        out.unlink(missing_ok=True)
        result = restore(storage, out, Target(txid=txid))
        seen[-1 if txid is None else result.txid] = app_mod.db_state(str(out))

    for gen in listing.generations:
        if gen.first_txid is None:
            continue
        points = {gen.first_txid, gen.last_txid}
        points.update(rng.sample(range(gen.first_txid, gen.last_txid + 1),
                                 min(samples, gen.last_txid - gen.first_txid + 1)))
        for txid in sorted(points):
            at(txid)
    for txid in reported:
        if txid:
            at(txid)
    at(None)
    expected = app_mod.expected_hashes(seed, {k for k, _ in seen.values()})
    for txid, (k, digest) in seen.items():
        assert digest == expected[k], f"restore at txid {txid}: k={k} is not the application's state after op {k}"
    assert seen[-1][0] == final_k, f"latest restore holds op {seen[-1][0]}, the application committed {final_k}"
    ks = [seen[t][0] for t in sorted(t for t in seen if t >= 0)]
    assert ks == sorted(ks), "a later txid restores an earlier state"
    return listing
