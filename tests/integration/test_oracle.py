"""Oracle: replicate a real writer, restore at many points, compare with the workload's state."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from replicator import layout
from replicator.plan import Target
from replicator.restore import restore
from replicator.storage import open_storage

from .harness import TESTS, read_oracle, start_replicator, start_writer, stop, wait_for

sys.path.insert(0, str(TESTS))
import workload  # noqa: E402

OPS = 1500
SEED = 7


def check_restore(storage, out: Path, target: Target, expected: dict[int, str] | None = None):
    out.unlink(missing_ok=True)
    result = restore(storage, out, target)
    k, digest = workload.db_state(str(out))
    return result, k, digest


@pytest.mark.slow
def test_oracle_file_replica(tmp_path: Path) -> None:
    db, replica, log = tmp_path / "app.db", tmp_path / "replica", tmp_path / "replicator.log"
    seed_conn = __import__("apsw").Connection(str(db))
    list(seed_conn.execute("PRAGMA journal_mode=wal"))
    workload.setup(seed_conn)
    seed_conn.close()
    rep = start_replicator(["replicate", str(db), f"file://{replica}"], log)
    wait_for(lambda: any((replica / "generations").glob("*/snapshots/*")), 30, "the first snapshot")
    writer = start_writer(db, OPS, SEED, "--pause-every", "50", "--pause-ms", "20")
    assert writer.wait(120) == 0
    assert stop(rep) == 0, log.read_text()[-3000:]

    storage = open_storage(f"file://{replica}")
    listing = layout.parse_listing(storage.list(layout.GENERATIONS))
    assert len(listing.generations) == 1
    gen = listing.generations[0]
    oracle = read_oracle(db)
    assert [row[0] for row in oracle] == list(range(1, OPS + 1))

    rng = random.Random(SEED)
    first, last = gen.first_txid, gen.last_txid
    txids = sorted(rng.sample(range(first, last + 1), 25)) + [first, last]
    times = sorted(rng.randint(oracle[0][1], oracle[-1][2]) for _ in range(15))
    results = {}
    for txid in txids:
        results[("txid", txid)] = check_restore(storage, tmp_path / "out.db", Target(txid=txid))
    for t in times:
        results[("time", t)] = check_restore(storage, tmp_path / "out.db", Target(time_ns=t))
    results[("latest", 0)] = check_restore(storage, tmp_path / "out.db", Target())

    expected = workload.expected_hashes(SEED, {k for _, k, _ in results.values()})
    for (kind, value), (result, k, digest) in results.items():
        assert digest == expected[k], f"{kind} {value}: restored k={k} is not the workload's prefix"
    # Txid order is workload order.
    ks = [results[("txid", t)][1] for t in sorted(set(txids))]
    assert ks == sorted(ks)
    assert results[("txid", last)][1] == OPS
    assert results[("latest", 0)][1] == OPS
    # A timestamp restore holds no op that began after the target, and every op that had
    # finished well before it (the bound is loose on purpose: latency is the bench's job).
    for t in times:
        k = results[("time", t)][1]
        began = max((row[0] for row in oracle if row[1] <= t), default=0)
        finished = max((row[0] for row in oracle if row[2] <= t - 5_000_000_000), default=0)
        assert finished <= k <= began, (t, k, finished, began)
