"""Crash: SIGKILL the replicator (and once the writer) at random moments while writing.

After restarts, everything the replicator reported as shipped is restorable, every restore
is an exact prefix of the workload, and the final state equals the source.
"""

from __future__ import annotations

import random
import signal
import sys
import time
from pathlib import Path

import apsw
import pytest

from replicator import layout
from replicator.plan import Target
from replicator.restore import restore
from replicator.storage import open_storage

from .harness import TESTS, shipped_txids, start_replicator, start_writer, stop, wait_for

sys.path.insert(0, str(TESTS))
import workload  # noqa: E402

OPS = 2500
SEED = 11
KILLS = 6


def _init_db(db: Path) -> None:
    conn = apsw.Connection(str(db))
    list(conn.execute("PRAGMA journal_mode=wal"))
    workload.setup(conn)
    conn.close()


@pytest.mark.slow
def test_sigkill_replicator_and_writer(tmp_path: Path) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    _init_db(db)
    rng = random.Random(SEED)
    logs: list[Path] = []

    def launch():
        log = tmp_path / f"replicator-{len(logs)}.log"
        logs.append(log)
        return start_replicator(["replicate", str(db), f"file://{replica}"], log)

    writer = start_writer(db, OPS, SEED, "--pause-every", "20", "--pause-ms", "10")
    rep = launch()
    reported: list[int] = []
    writer_killed = False
    for i in range(KILLS):
        time.sleep(rng.uniform(0.2, 1.2))  # a random moment to crash at, not a synchronisation
        rep.send_signal(signal.SIGKILL)
        rep.wait()
        reported.append(shipped_txids(logs[-1]))
        if not writer_killed and i == KILLS // 2 and writer.poll() is None:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            writer_killed = True
            writer = start_writer(db, OPS, SEED, "--pause-every", "20", "--pause-ms", "10")
        rep = launch()
    assert writer.wait(180) == 0
    # SIGTERM before the daemon has installed its handler would just kill it (a crash, which
    # the loop above already covers): stop the last one only once it is running.
    wait_for(lambda: "replicating" in logs[-1].read_text(), 60, "the last replicator to start")
    assert stop(rep) == 0, logs[-1].read_text()[-3000:]
    reported.append(shipped_txids(logs[-1]))
    assert max(reported) > 0

    _check(tmp_path, replica, reported, rng, OPS)


def _check(tmp_path: Path, replica: Path, reported: list[int], rng: random.Random, ops: int) -> None:
    """Every txid reported as shipped before a crash is restorable, random points of every
    generation are exact prefixes of the workload, and the latest is all of it."""
    storage = open_storage(f"file://{replica}")
    listing = layout.parse_listing(storage.list(layout.GENERATIONS))
    out = tmp_path / "out.db"
    results: dict[str, int] = {}
    digests: dict[str, str] = {}

    def check(label: str, target: Target) -> None:
        out.unlink(missing_ok=True)
        restore(storage, out, target)
        results[label], digests[label] = workload.db_state(str(out))

    # Everything reported as shipped before each crash is still restorable.
    for i, txid in enumerate(reported):
        if txid:
            check(f"reported-{i}", Target(txid=txid))
    # Random intermediate points in every generation are exact prefixes.
    for gen in listing.generations:
        if gen.first_txid is None:
            continue
        for txid in rng.sample(range(gen.first_txid, gen.last_txid + 1), min(6, gen.last_txid - gen.first_txid + 1)):
            check(f"{gen.name}-{txid}", Target(txid=txid))
    check("latest", Target())

    expected = workload.expected_hashes(SEED, set(results.values()))
    for label, k in results.items():
        assert digests[label] == expected[k], f"{label}: restored k={k} is not an exact prefix"
    assert results["latest"] == ops
    # Restores at increasing reported txids never go back in the workload.
    ks = [results[f"reported-{i}"] for i, t in enumerate(reported) if t]
    assert ks == sorted(ks)


CRASH_POINTS = ["mark-synced", "backfilled", "checkpoint-fenced", "snapshot-image", "spooled-unrecorded",
                "sync-objects"]


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_inside_checkpoints_snapshots_and_the_spool(tmp_path: Path, point: str) -> None:
    """The replicator kills itself at a named point (replicator/faults.py): between the
    spool's sync and the read mark's move, after a backfill, inside (c)'s fence with R's
    transaction ended, half-way through a snapshot image, between a batch's objects and its
    state record, and between the objects' fsync and the log's marker. Three crashes per
    point, each at a later passage, then a clean run; the oracle after."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    _init_db(db)
    config = tmp_path / "r.yml"
    config.write_text(f"dbs:\n  - path: {db}\n    min-checkpoint-page-count: 64\n    replicas:\n"
                      f"      - url: file://{replica}\n        snapshot-interval: 1s\n")
    # Slow enough that the writer outlasts three starts and crashes on a loaded machine: a
    # replicator whose writer has finished never reaches its crash point again.
    ops = 1200
    writer = start_writer(db, ops, SEED, "--pause-every", "10", "--pause-ms", "40")
    reported: list[int] = []
    for i in range(3):
        log = tmp_path / f"replicator-{i}.log"
        rep = start_replicator(["run", "-c", str(config)], log, env={"REPLICATOR_CRASH_AT": f"{point}:{2 + i}"})
        assert rep.wait(90) == -signal.SIGKILL, log.read_text()[-3000:]
        reported.append(shipped_txids(log))
    log = tmp_path / "replicator-last.log"
    rep = start_replicator(["run", "-c", str(config)], log)
    assert writer.wait(180) == 0
    wait_for(lambda: "replicating" in log.read_text(), 60, "the last replicator to start")
    assert stop(rep) == 0, log.read_text()[-3000:]
    reported.append(shipped_txids(log))
    _check(tmp_path, replica, reported, random.Random(SEED), ops)
