"""The compactor beside a running replicator and a running writer, and beside restores:
days of history (made on an injected clock, ending now), then a real `replicator replicate`
replicates on while a writer commits, and `replicator compact --once` passes run
meanwhile (retiring, merging and building on the old history while new segments arrive).
Afterwards every point of the window restores exactly and the latest equals the source."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from replicator.config import ReplicaConfig
from replicator.demo import content_hash
from replicator.plan import Target
from replicator.restore import restore
from replicator.storage import open_storage

from .harness import BIN, TESTS, start_replicator, start_writer, stop, wait_for

sys.path.insert(0, str(TESTS))
from test_compactor import HOUR, _make_history  # noqa: E402


@pytest.mark.slow
def test_compactor_beside_a_live_replicator_writer_and_restores(tmp_path: Path) -> None:
    db, replica_dir = tmp_path / "app.db", tmp_path / "replica"
    replica = ReplicaConfig(name="file", url=f"file://{replica_dir}", type="file", path=str(replica_dir))
    hours = 52
    h = _make_history(tmp_path, replica, hours=hours, start_ns=time.time_ns() - (hours + 1) * HOUR,
                      row_bytes=12_000)
    config = tmp_path / "r.yml"
    config.write_text(f"dbs:\n  - path: {db}\n    snapshot-history-ratio: 0.2\n    replicas:\n"
                      f"      - url: file://{replica_dir}\n        retention: 24h\n")
    log = tmp_path / "replicator.log"
    rep = start_replicator(["replicate", str(db), f"file://{replica_dir}"], log)
    wait_for(lambda: "replicating" in log.read_text(), 60, "the replicator to start")
    writer = start_writer(db, 400, 3, "--pause-every", "20", "--pause-ms", "20")
    storage = open_storage(replica)
    restores_ok, stop_restoring = [], threading.Event()

    def restore_loop() -> None:  # restores of the latest state while compacting
        out = tmp_path / "concurrent.db"
        while not stop_restoring.is_set():
            out.unlink(missing_ok=True)
            restore(storage, out, Target())
            restores_ok.append(1)

    t = threading.Thread(target=restore_loop, daemon=True)
    t.start()
    passes = []
    try:
        for _ in range(3):
            done = subprocess.run([str(BIN), "compact", "--once", "-c", str(config)], capture_output=True,
                                  text=True, timeout=120, env=dict(os.environ))
            assert done.returncode == 0, done.stderr[-2000:]
            passes.append(done.stderr)
    finally:
        stop_restoring.set()
        t.join(60)
    assert writer.wait(120) == 0
    assert stop(rep) == 0, log.read_text()[-3000:]
    assert restores_ok, "no restore ran beside the compactor"
    assert "merged" in passes[0] and "deleted 0 objects" not in passes[0], passes[0]
    out = tmp_path / "out.db"
    window_ns = time.time_ns() - 24 * HOUR
    for txid in [t for t in sorted(h.states) if h.times.get(t, 0) >= window_ns][::4]:
        out.unlink(missing_ok=True)
        restore(storage, out, Target(txid=txid))
        assert content_hash(out) == h.states[txid], txid
    out.unlink(missing_ok=True)
    restore(storage, out, Target())
    assert content_hash(out) == content_hash(db)
