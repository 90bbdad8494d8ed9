"""The CLI with bad S3 input: every failure is one `error: ...` line on stderr, a non-zero
exit, no traceback, no credentials, and a bounded time (retries end)."""

from __future__ import annotations

import dataclasses
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from replicator.config import S3Options

from .harness import TESTS, start_replicator, start_writer, stop, wait_for
from .test_s3_e2e import (
    FAST,
    bucket_objects,
    has_snapshot,
    init_db,
    restore_state,
    run_cli,
    s3_storage,
    write_config,
)

sys.path.insert(0, str(TESTS))
import workload  # noqa: E402

BOUNDED_S = 30.0  # botocore's and our retries of a refused connection end well within this


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unreachable(port: int) -> S3Options:
    return S3Options(bucket="some-bucket", prefix="app", region="us-east-1", endpoint=f"http://127.0.0.1:{port}",
                     force_path_style=True, access_key_id="AKIDUNREACHABLE0001",
                     secret_access_key="unreachable-secret-" + uuid.uuid4().hex)


def env_for(opts: S3Options) -> dict[str, str]:
    assert opts.endpoint and opts.access_key_id and opts.secret_access_key
    return {"AWS_ACCESS_KEY_ID": opts.access_key_id, "AWS_SECRET_ACCESS_KEY": opts.secret_access_key,
            "AWS_REGION": opts.region or "us-east-1", "AWS_ENDPOINT_URL_S3": opts.endpoint}


def one_error(result: subprocess.CompletedProcess, *secrets: str | None) -> str:
    """The single `error: ...` line of a failed command (asserting the failure's shape)."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    out = result.stdout + result.stderr
    assert "Traceback" not in out, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == "", result.stdout
    for secret in secrets:
        assert secret and secret not in out, "a credential leaked into the output"
    return lines[0]


def timed(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = run_cli(*args, env=env, timeout=BOUNDED_S * 2)
    assert time.monotonic() - started < BOUNDED_S, f"{args[0]} took {time.monotonic() - started:.1f}s"
    return result


# -- unreachable endpoint ----------------------------------------------------------------------


def test_unreachable_endpoint_fails_restore_and_listing_quickly(tmp_path: Path) -> None:
    port = closed_port()
    opts = unreachable(port)
    db, out = tmp_path / "app.db", tmp_path / "out.db"
    config = write_config(tmp_path / "r.yml", db, opts)
    secrets = (opts.access_key_id, opts.secret_access_key)
    for args, env in (
        (("restore", "-c", str(config), "-o", str(out), str(db)), None),
        (("generations", "-c", str(config), str(db)), None),
        (("restore", "-o", str(out), "s3://some-bucket/app"), env_for(opts)),
        (("snapshots", "s3://some-bucket/app"), env_for(opts)),
    ):
        line = one_error(timed(*args, env=env), *secrets)
        assert f"cannot connect to http://127.0.0.1:{port}" in line, line
        assert "s3://some-bucket/app" in line, line
    assert not out.exists()


def test_run_with_an_unreachable_endpoint_keeps_retrying_then_replicates(tmp_path: Path, moto_server) -> None:
    """The store is down when the daemon starts: it keeps running (the spool protects the
    data), logs the outage once rather than per attempt, and ships once the store appears."""
    from moto.server import ThreadedMotoServer

    port = closed_port()
    opts = dataclasses.replace(unreachable(port), bucket=f"late-{uuid.uuid4().hex[:12]}")
    db, log = tmp_path / "app.db", tmp_path / "replicator.log"
    init_db(db)
    assert start_writer(db, 50, 5).wait(60) == 0
    rep = start_replicator(["run", "-c", str(write_config(tmp_path / "r.yml", db, opts, **FAST))], log)
    # Several failed rounds (5 attempts each) while the endpoint refuses connections.
    refused = f"cannot connect to http://127.0.0.1:{port}"
    wait_for(lambda: rep.poll() is not None or log.read_text().count(refused) >= 12, 60,
             "several rounds of retries")
    assert rep.poll() is None, "run exited on an unreachable store:\n" + log.read_text()[-2000:]
    text = log.read_text()
    assert len(re.findall(r"WARNING replica \S+ unreachable", text)) == 1, text[-3000:]
    assert opts.secret_access_key not in text

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        late = dataclasses.replace(moto_server, endpoint=f"http://127.0.0.1:{port}")
        late.client().create_bucket(Bucket=opts.bucket)
        wait_for(lambda: has_snapshot(late, opts), 30, "the snapshot once the store is up")
        assert start_writer(db, 80, 5).wait(60) == 0
        storage, out = s3_storage(opts), tmp_path / "out.db"
        wait_for(lambda: restore_state(storage, out)[0] == 80, 30, "the new writes", interval=0.3)
        assert stop(rep) == 0, log.read_text()[-3000:]
        assert restore_state(storage, out) == (80, workload.expected_hashes(5, {80})[80])
        assert "lease.json" not in bucket_objects(late, opts)
    finally:
        server.stop()


# -- wrong credentials (SeaweedFS checks signatures; moto accepts anything) --------------------


@pytest.mark.seaweedfs
@pytest.mark.parametrize("change", ["secret_access_key", "access_key_id"])
def test_wrong_credentials_are_one_line_without_secrets(tmp_path: Path, seaweedfs_server, make_bucket,
                                                        change: str) -> None:
    good = make_bucket(seaweedfs_server, prefix="app")
    bad = dataclasses.replace(good, **{change: "WRONG" + getattr(good, change)[5:]})
    db, out = tmp_path / "app.db", tmp_path / "out.db"
    init_db(db)
    config = write_config(tmp_path / "r.yml", db, bad, top_level_credentials=True)
    secrets = (good.access_key_id, good.secret_access_key, bad.access_key_id, bad.secret_access_key)
    url = f"s3://{good.bucket}/app"
    for args, env in (
        (("generations", "-c", str(config), str(db)), None),
        (("restore", "-o", str(out), url), env_for(bad)),
    ):
        line = one_error(timed(*args, env=env), *secrets)
        assert line.startswith(f"error: {url}"), line
        assert "access denied" in line, line
    assert not out.exists()
    # The daemon does not exit over a failing replica (credentials can be fixed while the
    # spool keeps the data): it says so on one line, keeps retrying, and stops when told.
    log = tmp_path / "run.log"
    rep = start_replicator(["run", "-c", str(config)], log)
    wait_for(lambda: "access denied" in log.read_text() or rep.poll() is not None, 60, "the failure to be reported")
    assert rep.poll() is None, log.read_text()[-3000:]
    assert stop(rep) != 0  # stopped with data not on the replica
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert len([ln for ln in text.splitlines() if "access denied" in ln]) == 1, text[-3000:]
    assert not any(secret in text for secret in secrets), "a credential leaked into the log"
    assert bucket_objects(seaweedfs_server, good) == {}, "wrote with the wrong credentials"


# -- missing bucket, bad URLs, empty replicas --------------------------------------------------


def test_missing_bucket_is_named(tmp_path: Path, moto_server) -> None:
    bucket = f"absent-{uuid.uuid4().hex[:12]}"
    opts = moto_server.options(bucket, prefix="app")
    db, out = tmp_path / "app.db", tmp_path / "out.db"
    init_db(db)
    config = write_config(tmp_path / "r.yml", db, opts)
    for args, env in (
        (("generations", f"s3://{bucket}/app"), moto_server.env),
        (("restore", "-o", str(out), f"s3://{bucket}/app"), moto_server.env),
    ):
        line = one_error(timed(*args, env=env), opts.secret_access_key)
        assert f"s3://{bucket}/app" in line and "no such bucket" in line, line
    assert not out.exists()
    # The daemon names the missing bucket on one line and keeps going (it may be created).
    log = tmp_path / "run.log"
    rep = start_replicator(["run", "-c", str(config)], log)
    wait_for(lambda: "no such bucket" in log.read_text() or rep.poll() is not None, 60, "the missing bucket")
    assert rep.poll() is None, log.read_text()[-3000:]
    line = next(ln for ln in log.read_text().splitlines() if "no such bucket" in ln)
    assert f"s3://{bucket}/app" in line and opts.secret_access_key not in log.read_text(), line
    assert stop(rep) != 0


@pytest.mark.parametrize("args", [
    ("generations", "s3://"),
    ("restore", "-o", "{out}", "s3:///some/prefix"),
    ("replicate", "{db}", "s3://"),
], ids=["generations", "restore", "replicate"])
def test_s3_url_without_a_bucket(tmp_path: Path, args: tuple[str, ...]) -> None:
    db, out = tmp_path / "app.db", tmp_path / "out.db"
    init_db(db)
    result = timed(*(a.format(db=db, out=out) for a in args))
    line = one_error(result)
    assert "without a bucket" in line and "s3://bucket/prefix" in line, line
    assert result.returncode == 2  # a usage error, like every other bad argument
    assert not out.exists() and not Path(str(db) + "-replicator").exists()


def test_restore_from_an_empty_prefix(tmp_path: Path, moto_server, make_bucket) -> None:
    opts = make_bucket(moto_server, prefix="nothing/here")
    url, out = f"s3://{opts.bucket}/nothing/here", tmp_path / "out.db"
    line = one_error(timed("restore", "-o", str(out), url, env=moto_server.env))
    assert url in line and "nothing to restore" in line, line
    assert not out.exists()

    ok = timed("restore", "--if-replica-exists", "-o", str(out), url, env=moto_server.env)
    assert ok.returncode == 0, ok.stderr
    assert "Traceback" not in ok.stderr and "nothing to restore" in ok.stdout
    assert not out.exists()
    assert bucket_objects(moto_server, opts) == {}, "a read-only command wrote to the replica"

    listed = timed("generations", url, env=moto_server.env)
    assert listed.returncode == 0 and "(no generations)" in listed.stdout, listed


def test_bad_read_timeout_in_the_environment_is_one_line(tmp_path: Path) -> None:
    opts = unreachable(closed_port())
    db, out = tmp_path / "app.db", tmp_path / "out.db"
    init_db(db)
    env = {**env_for(opts), "REPLICATOR_S3_READ_TIMEOUT": "a while"}
    for args in (("replicate", str(db), "s3://some-bucket/app"), ("restore", "-o", str(out), "s3://some-bucket/app")):
        result = timed(*args, env=env)
        line = one_error(result, opts.access_key_id, opts.secret_access_key)
        assert line.startswith("error: REPLICATOR_S3_READ_TIMEOUT: expected a positive duration"), line
        assert "'a while'" in line and result.returncode == 2, line
    assert not out.exists()
