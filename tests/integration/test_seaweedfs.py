"""End-to-end against SeaweedFS, a real object store that checks request signatures: replicate
and restore through the CLI, and an outage of the store while the application keeps writing."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from replicator import layout
from replicator.plan import Target

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
    """Segments in the spool of a running replicator (which prunes them as they ship)."""
    root = Path(str(db) + "-replicator") / "objects"
    out = []
    for path in root.glob("generations/*/segments/*"):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue  # shipped and pruned between the listing and the stat
        info = layout.parse_key(str(path.relative_to(root)), size)
        if isinstance(info, layout.SegmentInfo):
            out.append(info)
    return out


def test_store_outage_while_writing_is_ridden_out(tmp_path: Path, seaweedfs_server, make_bucket) -> None:
    ops, seed = 800, 13
    db, log = tmp_path / "app.db", tmp_path / "replicator.log"
    opts = make_bucket(seaweedfs_server, prefix="outage")
    init_db(db)
    config = write_config(tmp_path / "r.yml", db, opts, **FAST)
    rep = start_replicator(["run", "-c", str(config)], log)
    wait_started(log)
    # ~8 s of writing at ~100 tx/s; the outage happens in the middle of it.
    writer = start_writer(db, ops, seed, "--pause-every", "10", "--pause-ms", "100")
    oracle = Path(str(db) + ".oracle")
    wait_for(lambda: oracle.exists() and len(read_oracle(db)) >= 200 and shipped_txids(log) > 0, 30,
             "writes being shipped")
    try:
        seaweedfs_server.stop()
        before_outage = shipped_txids(log)
        time.sleep(OUTAGE_S)  # the outage's length is the point
        assert rep.poll() is None, log.read_text()[-3000:]
        # The writer went on: the spool holds a backlog well past what reached the store.
        backlog = max((s.last_txid for s in spooled_segments(db)), default=0)
        assert backlog > shipped_txids(log) + 50, "the spool holds no backlog"
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
    assert shipped_txids(log) > before_outage + 50
    storage, out = s3_storage(opts), tmp_path / "out.db"
    during = restore_state(storage, out, Target(txid=backlog - 25))  # written during the outage
    latest = restore_state(storage, out)
    expected = workload.expected_hashes(seed, {during[0], ops})
    assert during == (during[0], expected[during[0]]) and during[0] < ops
    assert latest == (ops, expected[ops])


def test_stop_during_an_outage_keeps_the_backlog_for_the_next_run(tmp_path: Path, seaweedfs_server,
                                                                  make_bucket) -> None:
    """SIGTERM while the store is down: a prompt non-zero exit saying the data stays in the
    spool; the next run (store back) ships that backlog into the same generation."""
    seed = 17
    expected = workload.expected_hashes(seed, {300})[300]
    db, log1, log2 = tmp_path / "app.db", tmp_path / "1.log", tmp_path / "2.log"
    opts = make_bucket(seaweedfs_server, prefix="stopped")
    init_db(db)
    config = write_config(tmp_path / "r.yml", db, opts, **FAST)
    rep = start_replicator(["run", "-c", str(config)], log1)
    wait_started(log1)
    assert start_writer(db, 100, seed).wait(60) == 0
    wait_for(lambda: shipped_txids(log1) > 0 and not spooled_segments(db), 30, "the first writes shipped")
    try:
        seaweedfs_server.stop()
        assert start_writer(db, 300, seed).wait(60) == 0
        wait_for(lambda: "unreachable, keeping data in the spool" in log1.read_text(), 30, "the outage")
        wait_for(lambda: spooled_segments(db), 10, "segments spooled")
        started = time.monotonic()
        code = stop(rep)
        assert time.monotonic() - started < 15, "stopping during an outage should not hang"
        assert code != 0, "exit 0 although data never reached the replica"
        lines = [line for line in log1.read_text().splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and "spool" in lines[0], log1.read_text()[-2000:]
        assert spooled_segments(db), "the backlog was dropped"
        (gen,) = {s.generation for s in spooled_segments(db)}
    finally:
        if seaweedfs_server.proc is None:
            seaweedfs_server.start()

    rep = start_replicator(["run", "-c", str(config)], log2)
    wait_started(log2)
    wait_for(lambda: not spooled_segments(db), 30, "the backlog to drain")
    assert stop(rep) == 0, log2.read_text()[-3000:]
    # The backlog went into the first run's generation, up to the last write before the stop.
    # (The second run starts a new generation: see test_clean_restart_resumes_the_generation.)
    storage, out = s3_storage(opts), tmp_path / "out.db"
    first = next(g for g in layout.parse_listing(storage.list(layout.GENERATIONS)).generations
                 if g.name == gen)
    assert restore_state(storage, out, Target(txid=first.last_txid)) == (300, expected)
    assert restore_state(storage, out) == (300, expected)
