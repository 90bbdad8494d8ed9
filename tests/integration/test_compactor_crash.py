"""`replicator compact --once` SIGKILLed inside a pass (after a snapshot is built, after a
merged object is written, before the deletes), then run to the end: at every stop the
replica restores every point of the window exactly."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from replicator.config import ReplicaConfig
from replicator.plan import Target
from replicator.restore import restore
from replicator.storage import open_storage

from .harness import BIN, TESTS

sys.path.insert(0, str(TESTS))
from test_compactor import HOUR, _make_history  # noqa: E402

from replicator.demo import content_hash  # noqa: E402


def _compact(config: Path, crash_at: str | None) -> subprocess.CompletedProcess:
    env = {"REPLICATOR_CRASH_AT": crash_at} if crash_at else {}
    import os

    return subprocess.run([str(BIN), "compact", "--once", "-c", str(config)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def _check_window(replica: ReplicaConfig, h, tmp_path: Path, retention_ns: int) -> int:
    storage = open_storage(replica)
    window_ns = time.time_ns() - retention_ns
    out, checked = tmp_path / "check.db", 0
    in_window = [t for t in sorted(h.states) if h.times.get(t, 0) >= window_ns]
    for txid in in_window[:4] + in_window[4::4]:  # the window's first ones, then every fourth
        out.unlink(missing_ok=True)
        restore(storage, out, Target(txid=txid))
        assert content_hash(out) == h.states[txid], txid
        checked += 1
    return checked


@pytest.mark.slow
@pytest.mark.parametrize("point", ["compact-snapshot", "compact-merged", "compact-delete"])
def test_a_compactor_killed_anywhere_leaves_the_window_restorable(tmp_path: Path, point: str) -> None:
    replica_dir = tmp_path / "replica"
    replica = ReplicaConfig(name="file", url=f"file://{replica_dir}", type="file", path=str(replica_dir))
    hours = 40
    h = _make_history(tmp_path, replica, hours=hours, start_ns=time.time_ns() - (hours + 1) * HOUR,
                      row_bytes=12_000)  # past the 1 MiB a replica-side snapshot waits for
    config = tmp_path / "r.yml"
    config.write_text(f"dbs:\n  - path: {tmp_path / 'app.db'}\n    snapshot-history-ratio: 0.2\n    replicas:\n"
                      f"      - url: file://{replica_dir}\n        retention: 24h\n")
    crashed = _compact(config, f"{point}:1")
    assert crashed.returncode == -9, crashed.stderr[-2000:]  # it really died at the point
    assert _check_window(replica, h, tmp_path, 24 * HOUR) >= 20
    # Its lease keeps the next compactor out until it lapses (two minutes), naming the holder.
    refused = _compact(config, None)
    assert refused.returncode == 1 and "compactor.lease.json is held by" in refused.stderr, refused.stderr
    (replica_dir / "compactor.lease.json").unlink()  # (as if two minutes had passed)
    done = _compact(config, None)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compact file://" in done.stderr and "Traceback" not in done.stderr
    assert _check_window(replica, h, tmp_path, 24 * HOUR) >= 20
    for _ in range(6):  # the passes that finish the chain (a pass builds at most 8 snapshots)
        more = _compact(config, None)
        assert more.returncode == 0, more.stderr[-2000:]
        if "built 0 snapshots" in more.stderr:
            break
    assert _check_window(replica, h, tmp_path, 24 * HOUR) >= 20
    again = _compact(config, None)  # what is left is not done twice
    assert again.returncode == 0 and "deleted 0 objects" in again.stderr, again.stderr[-2000:]
