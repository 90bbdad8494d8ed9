"""End-to-end against an S3 replica (moto's server): the oracle and crash tests of the file
replica, request economy (batching per sync interval, nothing while idle) and the lease.

The replicator runs as a real process configured by a YAML file (endpoint and credentials in
the file, never in os.environ); restores run in-process through open_storage.
"""

from __future__ import annotations

import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import apsw
import yaml

from replicator import layout
from replicator.config import ReplicaConfig, S3Options
from replicator.plan import Target
from replicator.restore import restore
from replicator.storage import Storage, open_storage

from .harness import BIN, TESTS, read_oracle, shipped_txids, start_replicator, start_writer, stop, wait_for

sys.path.insert(0, str(TESTS))
import workload  # noqa: E402


# -- helpers shared with test_seaweedfs.py and test_s3_cli.py ---------------------------------


def write_config(path: Path, db: Path, opts: S3Options, *, top_level_credentials: bool = False,
                 **replica_keys: Any) -> Path:
    """A config replicating `db` to `opts` (Litestream keys); extra replica keys as given,
    e.g. write_config(..., **{"sync-interval": "100ms"})."""
    replica: dict[str, Any] = {"type": "s3", "bucket": opts.bucket, "path": opts.prefix,
                               "endpoint": opts.endpoint, "region": opts.region or "us-east-1",
                               "force-path-style": True}
    creds = {"access-key-id": opts.access_key_id, "secret-access-key": opts.secret_access_key}
    top: dict[str, Any] = dict(creds) if top_level_credentials else {}
    if not top_level_credentials:
        replica.update(creds)
    replica.update(replica_keys)
    top["dbs"] = [{"path": str(db), "replicas": [replica]}]
    path.write_text(yaml.safe_dump(top, sort_keys=False))
    path.chmod(0o600)  # it holds credentials: readable by others, the commands warn about it
    return path


def s3_storage(opts: S3Options) -> Storage:
    """The code under test's view of the replica (for restores and listings)."""
    url = f"s3://{opts.bucket}/{opts.prefix}".rstrip("/")
    return open_storage(ReplicaConfig(name="s3", url=url, type="s3", s3=opts))


def bucket_objects(server, opts: S3Options) -> dict[str, str]:
    """key -> etag of everything under the replica prefix, read with a plain boto3 client."""
    client, out = server.client(), {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=opts.bucket, Prefix=opts.prefix + "/"):
        for obj in page.get("Contents", ()):
            out[obj["Key"][len(opts.prefix) + 1:]] = obj["ETag"]
    return out


def segment_keys(objects: dict[str, str]) -> list[str]:
    return sorted(k for k in objects if k.startswith("generations/") and "/segments/" in k)


def generations(objects: dict[str, str]) -> set[str]:
    return {k.split("/")[1] for k in objects if k.startswith("generations/")}


def init_db(db: Path) -> None:
    conn = apsw.Connection(str(db))
    list(conn.execute("PRAGMA journal_mode=wal"))
    workload.setup(conn)
    conn.close()


def restore_state(storage: Storage, out: Path, target: Target = Target()) -> tuple[int, str]:
    out.unlink(missing_ok=True)
    restore(storage, out, target)
    return workload.db_state(str(out))


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI without -v (what a user sees), with no AWS_* from the outside environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout,
                          env={**base, **(env or {})}, stdin=subprocess.DEVNULL)


def has_snapshot(server, opts: S3Options) -> bool:
    return any("/snapshots/" in k for k in bucket_objects(server, opts))


FAST = {"sync-interval": "100ms"}


def wait_started(log: Path) -> None:
    """Until the daemon has started (its signal handlers are installed before this line)."""
    wait_for(lambda: "INFO replicating " in log.read_text(errors="replace"), 30, f"{log.name}: started")


# -- oracle ------------------------------------------------------------------------------------

ORACLE_OPS = 600
ORACLE_SEED = 7


def test_oracle_s3_replica(tmp_path: Path, moto_server, make_bucket) -> None:
    db, log = tmp_path / "app.db", tmp_path / "replicator.log"
    opts = make_bucket(moto_server, prefix="oracle/app")
    init_db(db)
    rep = start_replicator(["run", "-c", str(write_config(tmp_path / "r.yml", db, opts, **FAST))], log)
    wait_for(lambda: has_snapshot(moto_server, opts), 30, "the first snapshot in the bucket")
    writer = start_writer(db, ORACLE_OPS, ORACLE_SEED, "--pause-every", "50", "--pause-ms", "20")
    assert writer.wait(120) == 0
    assert stop(rep) == 0, log.read_text()[-3000:]

    storage = s3_storage(opts)
    listing = layout.parse_listing(storage.list(layout.GENERATIONS))
    assert len(listing.generations) == 1
    gen = listing.generations[0]
    oracle = read_oracle(db)
    assert [row[0] for row in oracle] == list(range(1, ORACLE_OPS + 1))

    rng = random.Random(ORACLE_SEED)
    first, last = gen.first_txid, gen.last_txid
    txids = sorted(rng.sample(range(first, last + 1), 12)) + [first, last]
    times = sorted(rng.randint(oracle[0][1], oracle[-1][2]) for _ in range(8))
    out = tmp_path / "out.db"
    results: dict[tuple[str, int], tuple[int, str]] = {}
    for txid in txids:
        results[("txid", txid)] = restore_state(storage, out, Target(txid=txid))
    for t in times:
        results[("time", t)] = restore_state(storage, out, Target(time_ns=t))
    results[("latest", 0)] = restore_state(storage, out)

    expected = workload.expected_hashes(ORACLE_SEED, {k for k, _ in results.values()})
    for (kind, value), (k, digest) in results.items():
        assert digest == expected[k], f"{kind} {value}: restored k={k} is not the workload's prefix"
    ks = [results[("txid", t)][0] for t in sorted(set(txids))]
    assert ks == sorted(ks)
    assert results[("txid", last)][0] == ORACLE_OPS
    assert results[("latest", 0)][0] == ORACLE_OPS
    for t in times:
        k = results[("time", t)][0]
        began = max((row[0] for row in oracle if row[1] <= t), default=0)
        finished = max((row[0] for row in oracle if row[2] <= t - 1_000_000_000), default=0)
        assert finished <= k <= began, (t, k, finished, began)


# -- crash -------------------------------------------------------------------------------------

CRASH_OPS = 1200
CRASH_SEED = 11
KILLS = 3


def test_sigkill_replicator_with_s3_replica(tmp_path: Path, moto_server, make_bucket) -> None:
    db = tmp_path / "app.db"
    opts = make_bucket(moto_server, prefix="crash")
    init_db(db)
    config = write_config(tmp_path / "r.yml", db, opts, **FAST)
    rng = random.Random(CRASH_SEED)
    logs: list[Path] = []

    def launch() -> subprocess.Popen:
        logs.append(tmp_path / f"replicator-{len(logs)}.log")
        return start_replicator(["run", "-c", str(config)], logs[-1])

    # ~9 s of writing: every kill and restart happens while the writer runs.
    writer = start_writer(db, CRASH_OPS, CRASH_SEED, "--pause-every", "10", "--pause-ms", "60")
    rep = launch()
    reported: list[int] = []
    for _ in range(KILLS):
        wait_started(logs[-1])  # startup takes ~1.5 s: crash while shipping, not while importing
        time.sleep(rng.uniform(0.2, 1.0))  # a random moment to crash at, not a synchronisation
        rep.send_signal(signal.SIGKILL)
        rep.wait()
        reported.append(shipped_txids(logs[-1]))
        rep = launch()
    assert sum(1 for t in reported if t) >= 2, f"too few crashes happened mid-shipping: {reported}"
    assert writer.wait(180) == 0
    wait_started(logs[-1])
    assert stop(rep) == 0, logs[-1].read_text()[-3000:]
    reported.append(shipped_txids(logs[-1]))
    assert all("Traceback" not in log.read_text() for log in logs)

    storage = s3_storage(opts)
    listing = layout.parse_listing(storage.list(layout.GENERATIONS))
    out = tmp_path / "out.db"
    results: dict[str, tuple[int, str]] = {}
    for i, txid in enumerate(reported):  # everything reported as shipped is still restorable
        if txid:
            results[f"reported-{i}"] = restore_state(storage, out, Target(txid=txid))
    for gen in listing.generations:
        if gen.first_txid is None:
            continue
        span = range(gen.first_txid, gen.last_txid + 1)
        for txid in rng.sample(span, min(2, len(span))):
            results[f"{gen.name}-{txid}"] = restore_state(storage, out, Target(txid=txid))
    results["latest"] = restore_state(storage, out)

    expected = workload.expected_hashes(CRASH_SEED, {k for k, _ in results.values()})
    for label, (k, digest) in results.items():
        assert digest == expected[k], f"{label}: restored k={k} is not an exact prefix"
    assert results["latest"][0] == CRASH_OPS
    ks = [results[f"reported-{i}"][0] for i, t in enumerate(reported) if t]
    assert ks == sorted(ks)


def test_restart_after_idle_crash_resumes_from_the_bucket_listing(tmp_path: Path, moto_server,
                                                                    make_bucket) -> None:
    """Positions recovered from one LIST: a crashed replicator restarted while the database is
    idle resumes its generation, re-uploads nothing and ships only the new transactions."""
    db = tmp_path / "app.db"
    opts = make_bucket(moto_server, prefix="resume")
    init_db(db)
    config = write_config(tmp_path / "r.yml", db, opts, **FAST)
    log1, log2 = tmp_path / "1.log", tmp_path / "2.log"
    rep = start_replicator(["run", "-c", str(config)], log1)
    wait_started(log1)
    assert start_writer(db, 100, 3).wait(60) == 0
    storage, out = s3_storage(opts), tmp_path / "out.db"
    wait_for(lambda: restore_state(storage, out)[0] == 100, 20, "the replica to catch up", interval=0.3)
    rep.send_signal(signal.SIGKILL)
    rep.wait()
    before = bucket_objects(moto_server, opts)

    rep = start_replicator(["run", "-c", str(config)], log2)
    wait_started(log2)
    (gen,) = generations(before)
    assert f"resuming generation {gen}" in log2.read_text(), log2.read_text()[-2000:]
    assert start_writer(db, 150, 3).wait(60) == 0
    wait_for(lambda: restore_state(storage, out)[0] == 150, 20, "the new transactions", interval=0.3)
    assert stop(rep) == 0, log2.read_text()[-3000:]
    after = bucket_objects(moto_server, opts)
    assert generations(after) == {gen}
    new = set(after) - set(before)
    assert new and all("/segments/" in k for k in new), new  # no second snapshot, same generation
    assert all(after[k] == before[k] for k in before if k != "lease.json" and k in after)
    k, digest = restore_state(storage, out)
    assert (k, digest) == (150, workload.expected_hashes(3, {150})[150])


def test_clean_restart_resumes_the_generation(tmp_path: Path, moto_server, make_bucket) -> None:
    """A SIGTERM'd replicator restarted with no writes in between resumes its generation
    instead of uploading a new snapshot (each snapshot is a full copy of the database)."""
    db = tmp_path / "app.db"
    opts = make_bucket(moto_server, prefix="clean-restart")
    init_db(db)
    config = write_config(tmp_path / "r.yml", db, opts, **FAST)
    log1, log2 = tmp_path / "1.log", tmp_path / "2.log"
    rep = start_replicator(["run", "-c", str(config)], log1)
    wait_started(log1)
    assert start_writer(db, 100, 3).wait(60) == 0
    wait_for(lambda: shipped_txids(log1) > 0, 20, "the writes shipped")
    assert stop(rep) == 0, log1.read_text()[-3000:]
    (gen,) = generations(bucket_objects(moto_server, opts))

    rep = start_replicator(["run", "-c", str(config)], log2)
    wait_started(log2)
    assert stop(rep) == 0, log2.read_text()[-3000:]
    assert f"resuming generation {gen}" in log2.read_text(), log2.read_text()[-2000:]
    assert generations(bucket_objects(moto_server, opts)) == {gen}


# -- request economy -------------------------------------------------------------------------

ECONOMY_OPS = 800
IDLE_S = 3.0


def test_puts_are_batched_per_sync_interval_and_idle_costs_nothing(tmp_path: Path, moto_server,
                                                                    make_bucket) -> None:
    """Default sync interval (1s, not set in the config): ~200 tx/s for ~4 s ships about one
    segment object per second, and an idle database writes nothing at all."""
    db, log = tmp_path / "app.db", tmp_path / "replicator.log"
    opts = make_bucket(moto_server, prefix="economy")
    init_db(db)
    config = write_config(tmp_path / "r.yml", db, opts, top_level_credentials=True)
    assert "sync-interval" not in config.read_text()
    rep = start_replicator(["run", "-c", str(config)], log)
    wait_for(lambda: has_snapshot(moto_server, opts), 30, "the first snapshot in the bucket")

    started = time.monotonic()
    writer = start_writer(db, ECONOMY_OPS, 5, "--pause-every", "10", "--pause-ms", "40")
    assert writer.wait(60) == 0
    write_s = time.monotonic() - started
    assert 2.5 < write_s < 30, f"the writer should take ~4 s, took {write_s:.1f}s"

    storage, out = s3_storage(opts), tmp_path / "out.db"
    wait_for(lambda: restore_state(storage, out)[0] == ECONOMY_OPS, 20, "the replica to catch up",
             interval=0.5)
    before = bucket_objects(moto_server, opts)
    segments = segment_keys(before)
    # One merged object per sync interval while writes flow (plus the interval in progress when
    # the writer started and the one that catches up), instead of one per transaction.
    assert 2 <= len(segments) <= math.ceil(write_s) + 3, (write_s, segments)
    assert shipped_txids(log) >= ECONOMY_OPS

    time.sleep(IDLE_S)  # the duration is the point: nothing may be written while idle
    assert bucket_objects(moto_server, opts) == before, "objects written or rewritten while idle"

    assert stop(rep) == 0, log.read_text()[-3000:]
    after = bucket_objects(moto_server, opts)
    assert segment_keys(after) == segments, "a clean stop with nothing new still uploaded a segment"
    assert "lease.json" not in after, "a clean stop releases the lease"


# -- lease -------------------------------------------------------------------------------------


def test_second_replicator_on_the_same_replica_is_refused(tmp_path: Path, moto_server, make_bucket) -> None:
    opts = make_bucket(moto_server, prefix="shared/replica")
    db_a, db_b = tmp_path / "a" / "app.db", tmp_path / "b" / "app.db"
    for db in (db_a, db_b):
        db.parent.mkdir()
        init_db(db)
    log_a = tmp_path / "a.log"
    cfg_a = write_config(tmp_path / "a.yml", db_a, opts, **FAST)
    cfg_b = write_config(tmp_path / "b.yml", db_b, opts, **FAST)
    rep_a = start_replicator(["run", "-c", str(cfg_a)], log_a)
    wait_for(lambda: has_snapshot(moto_server, opts), 30, "A's first snapshot in the bucket")
    gens = generations(bucket_objects(moto_server, opts))
    assert len(gens) == 1

    # B is refused on one line naming the holder, and keeps waiting for the lease (A may be
    # stopping) instead of exiting; it writes nothing meanwhile.
    log_b = tmp_path / "b.log"
    rep_b = start_replicator(["run", "-c", str(cfg_b)], log_b)
    wait_for(lambda: "held by" in log_b.read_text() or rep_b.poll() is not None, 30, "B to be refused")
    assert rep_b.poll() is None, log_b.read_text()[-3000:]
    lines = [ln for ln in log_b.read_text().splitlines() if "held by" in ln]
    assert len(lines) == 1 and "Traceback" not in log_b.read_text(), log_b.read_text()[-3000:]
    message = lines[0]
    assert f"s3://{opts.bucket}/{opts.prefix}" in message
    assert socket.gethostname() in message and f"pid {rep_a.pid}" in message, message
    assert str(db_a) in message, message  # the holder's database, so the operator can find it
    assert stop(rep_b) != 0  # stopped with its data only in its spool
    for secret in (opts.access_key_id, opts.secret_access_key):
        assert secret not in log_b.read_text()
    # The refused replicator wrote nothing: still one generation, A's, and A is unharmed.
    assert generations(bucket_objects(moto_server, opts)) == gens
    assert rep_a.poll() is None

    # A clean stop releases the lease, and then B may start.
    assert stop(rep_a) == 0, log_a.read_text()[-3000:]
    assert "lease.json" not in bucket_objects(moto_server, opts)
    first_run_end = len(log_b.read_text())
    rep_b = start_replicator(["run", "-c", str(cfg_b)], log_b)
    # B's history from while it waited ships now: its first run's generation, resumed (the
    # file is what that run saved, page for page), not a third one.
    wait_for(lambda: len(generations(bucket_objects(moto_server, opts))) == 2, 30,
             "B's generation in the bucket")
    # The shippers send what the spool holds from their start, so the generation may reach
    # the bucket before the worker has logged its resume proof: wait for that line too.
    def second_run() -> str:
        return log_b.read_text()[first_run_end:]
    wait_for(lambda: "resuming generation" in second_run() or "a new generation" in second_run()
             or rep_b.poll() is not None, 30, "B's second run to resume or to start anew")
    assert rep_b.poll() is None
    assert "resuming generation" in second_run(), second_run()[-3000:]
    assert stop(rep_b) == 0, log_b.read_text()[-3000:]
