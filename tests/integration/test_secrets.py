"""Secrets never appear in output or in the replica: every command, run with known credential
values (and -v, the most it logs), has its stdout and stderr grepped, and so has every object
in the bucket (lease and replica.json included) and every file of the spool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import apsw

from replicator.spool import spool_dir

from .harness import BIN, start_replicator, stop, wait_for

ACCESS_KEY = "AKIAPLANTEDACCESS01"
SECRET = "planted-Secret-Value-0123456789"


def _run(*args, timeout: float = 120) -> str:
    proc = subprocess.run([str(BIN), "-v", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return f"[{args[0]} -> {proc.returncode}]\n{proc.stdout}{proc.stderr}"  # not the args: they hold secrets


def test_no_command_shows_a_secret_and_no_object_holds_one(tmp_path: Path, moto_server) -> None:
    bucket = "secrets-test"
    moto_server.client().create_bucket(Bucket=bucket)
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(2000)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"))
    config = tmp_path / "replicator.yml"
    config.write_text(
        f"addr: 127.0.0.1:0\naccess-key-id: {ACCESS_KEY}\nsecret-access-key: {SECRET}\n"
        f"dbs:\n  - path: {db}\n    replicas:\n      - type: s3\n        bucket: {bucket}\n        path: app\n"
        f"        endpoint: {moto_server.endpoint}\n        region: {moto_server.region}\n"
        "        force-path-style: true\n        sync-interval: 100ms\n")
    config.chmod(0o600)
    bad = tmp_path / "unreachable.yml"
    bad.write_text(config.read_text().replace(moto_server.endpoint, "http://127.0.0.1:9").replace(
        "addr: 127.0.0.1:0\n", ""))
    bad.chmod(0o600)
    url = f"s3://{bucket}/app?endpoint={moto_server.endpoint}&region={moto_server.region}"
    outputs = []

    log = tmp_path / "run.log"
    proc = start_replicator(["run", "-c", str(config)], log)
    wait_for(lambda: "replicating" in log.read_text(), 30, "the daemon to start")
    for i in range(100):
        conn.execute("INSERT INTO t(v) VALUES (?)", (f"value {i}",))
    outputs.append(_run("sync", "-c", config))
    outputs.append(_run("status", "-c", config, "--json"))
    outputs.append(_run("status", "-c", config))
    import re
    import urllib.request

    metrics_url = re.search(r"serving metrics on (http://\S+/metrics)", log.read_text()).group(1)
    scraped = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    assert "replicator_" in scraped
    outputs.append(scraped)
    outputs.append(_run("snapshot", db, "-c", config, "--name", "pre-migration"))
    assert stop(proc) == 0, log.read_text()[-2000:]
    outputs.append(log.read_text())
    for kind in ("generations", "snapshots", "segments"):
        outputs.append(_run(kind, db, "-c", config))
    outputs.append(_run("restore", "-o", tmp_path / "out.db", "-c", config, db))
    outputs.append(_run("verify", db, "-c", config))
    outputs.append(_run("compact", "--once", "-c", config))
    outputs.append(_run("compact", "--dry-run", "-c", config))
    outputs.append(_run("status", "-c", config, "--json"))
    outputs.append(_run("sync", "-c", config))
    outputs.append(_run("sync", "-c", bad, "--timeout", "2"))
    outputs.append(_run("restore", "-o", tmp_path / "out2.db", "-c", bad, db, timeout=180))
    outputs.append(_run("replicate", db, f"s3://{ACCESS_KEY}:{SECRET}@{bucket}/app"))
    outputs.append(_run("restore", "-o", tmp_path / "out3.db", f"s3://{ACCESS_KEY}:{SECRET}@{bucket}/app"))
    conn.close()

    text = "\n".join(outputs)
    assert "restored" in text or "txid" in text  # the commands ran (so the grep means something)
    for secret in (SECRET, ACCESS_KEY):
        assert secret not in text, [o for o in outputs if secret in o][0][:3000]

    client = moto_server.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    assert any(k.endswith("lease.json") for k in keys) or keys  # the bucket holds the replica
    for key in keys:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert SECRET.encode() not in body and ACCESS_KEY.encode() not in body, key
    for f in spool_dir(str(db)).rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert SECRET.encode() not in data and ACCESS_KEY.encode() not in data, f
