"""The spool's disk fills up under a running replicator and a running application: a real
full disk (a small tmpfs mounted as the spool), real processes. Nothing is lost, the log
says what happened, checkpoints pause (the WAL grows), and replication resumes by itself
once space returns. Skipped where mounting is refused (no root, a restricted sandbox)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from replicator.spool import spool_dir

from .harness import wait_for
from .scenario import AppProc, Replicator, check_replica

SEED = 9


@pytest.fixture
def small_spool(tmp_path: Path):
    db = tmp_path / "app.db"
    spool = spool_dir(str(db))
    spool.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(spool)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield db, spool
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def _fill(path: Path) -> int:
    """Write zeros until the filesystem is full; returns the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:  # unbuffered: ENOSPC surfaces here, not at close
        chunk = bytes(64 << 10)
        try:
            while True:
                written += f.write(chunk)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return written


def test_a_full_spool_disk_loses_nothing_and_recovers_by_itself(tmp_path: Path, small_spool) -> None:
    db, spool = small_spool
    replica = tmp_path / "replica"
    app = AppProc(db, SEED)
    rep = Replicator(tmp_path, db, replica)
    rep.start()
    rep.wait_tailing()
    app.write(30)
    rep.wait_shipped(31)  # settled before the disk fills (txid 1 is the first snapshot)
    filler = spool / "filler"
    assert _fill(filler) > 0
    wal_before = os.path.getsize(str(db) + "-wal")
    app.write(200)  # while the spool is full
    wait_for(lambda: "No space left on device" in rep.log, 30, "the replicator to report the full disk")
    assert "checkpoints are paused" in rep.log
    app.send("checkpoint PASSIVE")  # the application's own checkpoints cannot free the frames
    app.write(50)
    assert os.path.getsize(str(db) + "-wal") > wal_before  # the WAL keeps every frame
    assert rep.proc.poll() is None
    assert "writable again" not in rep.log  # no false recovery while the disk is full
    filler.unlink()
    wait_for(lambda: "writable again" in rep.log, 60, "the replicator to resume by itself")
    app.write(20)
    rep.stop()
    final = app.k
    app.quit()
    listing = check_replica(replica, tmp_path, SEED, final, rep.reported, samples=8)
    assert len(listing.generations) == 1  # one unbroken history: nothing was skipped
    assert "Traceback" not in rep.log
