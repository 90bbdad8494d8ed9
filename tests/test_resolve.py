"""resolve.py: how every command reads its arguments: a replica from a URL, a replica
directory or a database named in the config; a point in time; the config's logging."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest

from replicator import resolve
from replicator.errors import ConfigError
from replicator.plan import Target

from integration.harness import BIN


def _config(tmp_path, db, extra=""):
    cfg = tmp_path / "r.yml"
    cfg.write_text(f"{extra}dbs:\n  - path: {db}\n    replicas:\n      - url: file://{tmp_path}/one\n"
                   f"      - url: file://{tmp_path}/two\n        name: second\n")
    return cfg


def test_a_replica_by_url_takes_the_config_entry_for_that_url(tmp_path):
    db = tmp_path / "app.db"
    cfg = _config(tmp_path, db)
    replica, found = resolve.replica(f"file://{tmp_path}/two/", str(cfg), None)
    assert replica.name == "second" and found is not None and found.path == str(db)
    replica, found = resolve.replica(f"file://{tmp_path}/elsewhere", str(cfg), None)
    assert found is None and replica.path == str(tmp_path / "elsewhere")


def test_a_database_path_names_its_first_replica_or_the_named_one(tmp_path):
    db = tmp_path / "app.db"
    cfg = _config(tmp_path, db)
    assert resolve.replica(str(db), str(cfg), None)[0].path == str(tmp_path / "one")
    assert resolve.replica(str(db), str(cfg), "second")[0].path == str(tmp_path / "two")
    with pytest.raises(ConfigError, match="no replica named 'third'"):
        resolve.replica(str(db), str(cfg), "third")
    with pytest.raises(ConfigError, match="no database"):
        resolve.replica(str(tmp_path / "other.db"), str(cfg), None)


def test_a_replica_directory_needs_no_config(tmp_path):
    (tmp_path / "rep" / "generations").mkdir(parents=True)
    replica, found = resolve.replica(str(tmp_path / "rep"), None, None)
    assert found is None and replica.path == str(tmp_path / "rep")


def test_one_point_in_time_at_most():
    assert resolve.target_of(None, 7) == Target(txid=7)
    assert resolve.target_of("2026-12-04T00:00:00Z", None).time_ns == 1_796_342_400_000_000_000
    with pytest.raises(ConfigError, match="--timestamp or --txid, not both"):
        resolve.target_of("2026-12-04T00:00:00Z", 7)
    with pytest.raises(ConfigError):
        resolve.target_of("yesterday-ish", None)


def test_adhoc_replicas_are_named_by_type_and_the_database_must_exist(tmp_path):
    db = tmp_path / "app.db"
    made = resolve.adhoc_db(str(db), (f"file://{tmp_path}/a", f"file://{tmp_path}/b"), must_exist=False)
    assert [r.name for r in made.replicas] == ["file", "file1"]
    with pytest.raises(ConfigError, match="database not found"):
        resolve.adhoc_db(str(db), (f"file://{tmp_path}/a",))


def test_loading_a_config_applies_its_logging(tmp_path):
    cfg = _config(tmp_path, tmp_path / "app.db", extra="logging: {level: warn}\n")
    root = logging.getLogger("replicator")
    before = root.level
    try:
        resolve.config_at(str(cfg))
        assert not root.isEnabledFor(logging.INFO) and root.isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(before)


def test_compact_logs_as_the_config_says(tmp_path):
    """compact loaded its config without applying `logging:` (its lines ignored type: json)."""
    cfg = _config(tmp_path, tmp_path / "app.db", extra="logging: {type: json, level: info}\n")
    proc = subprocess.run([str(BIN), "compact", "--once", "-c", str(cfg)], capture_output=True, text=True,
                          timeout=120)
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert any(d["msg"].startswith("compact ") for d in lines), proc.stderr
