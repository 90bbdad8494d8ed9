"""End-to-end against SeaweedFS, a real object store that checks request signatures: replicate
and restore through the CLI, and an outage of the store while the application keeps writing."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from replicator import layout

from .harness import TESTS, read_oracle, shipped_txids, start_replicator, start_writer, stop, wait_for
from .test_s3_e2e import (
    FAST,
    bucket_objects,
    generations,
    init_db,
    restore_state,
    run_cli,
    s3_storage,
    wait_started,
    write_config,
)

sys.path.insert(0, str(TESTS))
import workload  # noqa: E402

pytestmark = pytest.mark.seaweedfs

OUTAGE_S = 4.0


def test_replicate_url_and_restore_with_environment_credentials(tmp_path: Path, seaweedfs_server,
                                                                 make_bucket) -> None:
    """`replicate DB s3://...` and `restore s3://...` with endpoint and keys only in AWS_*."""
    ops, seed = 400, 3
    db, log, out = tmp_path / "app.db", tmp_path / "replicator.log", tmp_path / "out.db"
    opts = make_bucket(seaweedfs_server, prefix="env/app")
    url = f"s3://{opts.bucket}/{opts.prefix}"
    init_db(db)
    rep = start_replicator(["replicate", str(db), url], log, env=seaweedfs_server.env)
    wait_started(log)
    assert start_writer(db, ops, seed, "--pause-every", "50", "--pause-ms", "20").wait(60) == 0
    assert stop(rep) == 0, log.read_text()[-3000:]

    listed = run_cli("generations", url, env=seaweedfs_server.env)
    assert listed.returncode == 0, listed.stderr
    (gen,) = generations(bucket_objects(seaweedfs_server, opts))
    assert gen in listed.stdout
    restored = run_cli("restore", "-o", str(out), url, env=seaweedfs_server.env)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.startswith(f"restored {out} to txid "), restored.stdout
    assert workload.db_state(str(out)) == (ops, workload.expected_hashes(seed, {ops})[ops])


def spooled_segments(db: Path) -> list[layout.SegmentInfo]:
    root = Path(str(db) + "-replicator") / "objects"
    out = []
    for path in root.glob("generations/*/segments/*"):
        info = layout.parse_key(str(path.relative_to(root)), path.stat().st_size)
        if isinstance(info, layout.SegmentInfo):
            out.append(info)
    return out


def test_store_outage_while_writing_is_ridden_out(tmp_path: Path, seaweedfs_server, make_bucket) -> None:
    ops, seed = 1000, 13
    db, log = tmp_path / "app.db", tmp_path / "replicator.log"
    opts = make_bucket(seaweedfs_server, prefix="outage")
    init_db(db)
    config = write_config(tmp_path / "r.yml", db, opts, **FAST)
    rep = start_replicator(["run", "-c", str(config)], log)
    wait_started(log)
    # ~10 s of writing at ~100 tx/s; the outage happens in the middle of it.
    writer = start_writer(db, ops, seed, "--pause-every", "10", "--pause-ms", "100")
    oracle = Path(str(db) + ".oracle")
    wait_for(lambda: oracle.exists() and len(read_oracle(db)) >= 200 and shipped_txids(log) > 0, 30, "writes being shipped")
    try:
        seaweedfs_server.stop()
        before_outage = shipped_txids(log)
        time.sleep(OUTAGE_S)  # the outage's length is the point
        assert rep.poll() is None, log.read_text()[-3000:]
        assert writer.poll() is None, "the writer finished during the outage: make it slower"
        backlog = spooled_segments(db)
        assert max(s.last_txid for s in backlog) > before_outage + 50, "the spool holds no backlog"
        assert shipped_txids(log) == before_outage, "shipped to a store that was down"
    finally:
        if seaweedfs_server.proc is None:
            seaweedfs_server.start()  # other tests share the server
    assert writer.wait(60) == 0
    wait_for(lambda: "caught up" in log.read_text(), 30, "the replicator to catch up after the outage")
    assert stop(rep) == 0, log.read_text()[-3000:]
    assert spooled_segments(db) == [], "the spool still holds acknowledged segments"

    text = log.read_text()
    assert "Traceback" not in text
    warnings = re.findall(r"WARNING replica s3://\S+ unreachable, keeping data in the spool", text)
    assert 1 <= len(warnings) <= 2, f"outage logged per attempt, not per interval: {len(warnings)}"
    (gen,) = generations(bucket_objects(seaweedfs_server, opts))  # no new generation either
    assert f"generation {gen} started" in text
    k, digest = restore_state(s3_storage(opts), tmp_path / "out.db")
    assert (k, digest) == (ops, workload.expected_hashes(seed, {ops})[ops])
    assert shipped_txids(log) > before_outage + 50
