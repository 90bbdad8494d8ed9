"""The command line: every bad input is one `error: ...` line and a non-zero exit, never a
traceback; listing and restore commands against a replica written by the real replicator."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import apsw
import pytest
from click.testing import CliRunner, Result

from replicator import __version__
from replicator import config as config_mod
from replicator.cli import cli
from replicator.config import DbConfig, ReplicaConfig
from replicator.replication import DbReplicator

EXE = Path(sys.executable).parent / "replicator"


@pytest.fixture(autouse=True)
def no_system_config(tmp_path, monkeypatch):
    """Commands look for /etc/replicator.yml when given no -c: keep the host's out of it."""
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.yml"))


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result: Result, code: int | None = None) -> str:
    """The single `error:` line of a failed command (and nothing that looks like a crash)."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def run_exe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([str(EXE), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def exe_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


# -- configuration errors ---------------------------------------------------------------


def test_unknown_config_key(tmp_path):
    cfg = write_config(tmp_path / "c.yml", f"dbs:\n- path: {tmp_path}/a.db\n  replicas:\n"
                                           f"  - url: file://{tmp_path}/r\n    bogus: 1\n")
    line = error_line(invoke("run", "-c", cfg), code=2)
    assert line == f"error: {cfg}: dbs[0].replicas[0].bogus: unknown key"
    # The same file is rejected the same way wherever a command reads it.
    assert error_line(invoke("restore", tmp_path / "a.db", "-c", cfg)) == line


def test_bad_duration(tmp_path):
    cfg = write_config(tmp_path / "c.yml", f"dbs:\n- path: {tmp_path}/a.db\n  replicas:\n"
                                           f"  - url: file://{tmp_path}/r1\n"
                                           f"  - url: file://{tmp_path}/r2\n    retention: 7 days\n")
    line = error_line(invoke("run", "-c", cfg), code=2)
    assert "dbs[0].replicas[1].retention: not a duration" in line and "7 days" in line


def test_yaml_syntax_error(tmp_path):
    cfg = write_config(tmp_path / "c.yml", "dbs:\n- path: /a.db\n  bad indent: x\n    y: z\n")
    line = error_line(invoke("run", "-c", cfg), code=2)
    assert line.startswith(f"error: {cfg}: YAML syntax error at line 4")


def test_missing_config_file():
    line = error_line(invoke("run", "-c", "/nonexistent.yml"), code=2)
    assert "config file not found: /nonexistent.yml" in line


# -- restore: bad inputs ----------------------------------------------------------------


def test_restore_from_an_empty_replica(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out.db"
    url = f"file://{tmp_path}/empty"
    line = error_line(invoke("restore", url, "-o", out))
    assert url in line and "nothing to restore" in line
    assert not out.exists()
    result = invoke("restore", url, "-o", out, "--if-replica-exists")
    assert result.exit_code == 0, result.output
    assert "nothing to restore" in result.stdout
    assert not out.exists()
    assert os.listdir(tmp_path) == ["empty"]


def test_restore_from_a_replica_that_does_not_exist(tmp_path):
    out = tmp_path / "out.db"
    error_line(invoke("restore", f"file://{tmp_path}/nowhere", "-o", out))
    assert invoke("restore", f"file://{tmp_path}/nowhere", "-o", out, "--if-replica-exists").exit_code == 0
    assert not out.exists()


@pytest.mark.parametrize("stamp", ["yesterday", "2026-13-01T00:00:00Z", "10:00"])
def test_unparseable_timestamp(tmp_path, stamp):
    line = error_line(invoke("restore", f"file://{tmp_path}", "-o", tmp_path / "o.db", "--timestamp", stamp), code=2)
    assert "timestamp" in line and stamp in line


def test_timestamp_and_txid_together(tmp_path):
    line = error_line(invoke("restore", f"file://{tmp_path}", "-o", tmp_path / "o.db",
                             "--timestamp", "2026-11-20T10:00:00Z", "--txid", "3"), code=2)
    assert "not both" in line


def test_restore_never_overwrites_an_existing_output(tmp_path):
    out = tmp_path / "precious.db"
    out.write_bytes(b"keep me")
    line = error_line(invoke("restore", f"file://{tmp_path}/r", "-o", out))
    assert "already exists" in line and "--force" in line
    assert out.read_bytes() == b"keep me"
    result = invoke("restore", f"file://{tmp_path}/r", "-o", out, "--if-db-not-exists")
    assert result.exit_code == 0 and "nothing restored" in result.stdout
    assert out.read_bytes() == b"keep me"


def test_restore_of_a_path_that_is_not_configured(tmp_path):
    other = tmp_path / "other.db"
    line = error_line(invoke("restore", other), code=2)
    assert f"{other} is not a replica directory and no config names it" in line and "-c CONFIG" in line
    cfg = write_config(tmp_path / "c.yml", f"dbs:\n- path: {tmp_path}/a.db\n  replicas: [{{url: file://{tmp_path}/r}}]\n")
    line = error_line(invoke("restore", other, "-c", cfg), code=2)
    assert f"no database {other} in {cfg}" in line
    line = error_line(invoke("restore", tmp_path / "a.db", "-c", cfg, "--replica", "nope"), code=2)
    assert "no replica named 'nope'" in line and "names: file" in line


def test_restore_from_a_url_needs_an_output(tmp_path):
    assert "needs -o OUTPUT" in error_line(invoke("restore", f"file://{tmp_path}"), code=2)


def test_replicate_a_missing_database(tmp_path):
    line = error_line(invoke("replicate", tmp_path / "nope.db", f"file://{tmp_path}/r"), code=2)
    assert "database not found" in line


def test_invalid_snapshot_name(tmp_path):
    assert "invalid snapshot name" in error_line(invoke("snapshot", tmp_path / "a.db", "--name", "a/b"), code=2)


def test_version():
    result = invoke("version")
    assert result.exit_code == 0
    assert result.stdout == f"replicator {__version__}\n"


# -- real processes ---------------------------------------------------------------------


def test_exe_version(tmp_path):
    proc = run_exe("version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == f"replicator {__version__}\n"


def test_exe_missing_config(tmp_path):
    proc = run_exe("run", "-c", "/nonexistent.yml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "config file not found: /nonexistent.yml" in exe_error_line(proc)


def test_exe_bad_timestamp(tmp_path):
    proc = run_exe("restore", f"file://{tmp_path}", "-o", tmp_path / "o.db", "--timestamp", "yesterday", cwd=tmp_path)
    assert proc.returncode == 2
    assert "not an RFC 3339 timestamp: 'yesterday'" in exe_error_line(proc)


def test_exe_replicate_a_file_that_is_not_sqlite(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a database\n" * 10)
    proc = run_exe("replicate", text, f"file://{tmp_path}/replica", cwd=tmp_path)
    assert "not a SQLite database" in exe_error_line(proc)
    assert text.read_text() == "hello, I am not a database\n" * 10
    assert not (tmp_path / "replica" / "generations").exists()


def test_exe_rejected_file_leaves_nothing_behind(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a database\n")
    proc = run_exe("replicate", text, f"file://{tmp_path}/replica", cwd=tmp_path)
    assert "not a SQLite database" in exe_error_line(proc)
    assert not (tmp_path / "notes.txt-replicator").exists()
    assert not (tmp_path / "replica" / "lease.json").exists()


# -- against a replica the replicator wrote ---------------------------------------------


@dataclasses.dataclass
class Populated:
    db: Path
    replica: Path
    generation: str
    rows: list[tuple]

    @property
    def url(self) -> str:
        return f"file://{self.replica}"


@pytest.fixture(scope="module")
def populated(tmp_path_factory) -> Populated:
    d = tmp_path_factory.mktemp("populated")
    db, replica = d / "app.db", d / "replica"
    conn = apsw.Connection(str(db))
    list(conn.execute("pragma journal_mode=wal; create table t(x)"))
    rep = DbReplicator(DbConfig(path=str(db), replicas=(
        ReplicaConfig(name="file", url=f"file://{replica}", type="file", path=str(replica)),)))
    try:
        rep.open()
        for i in range(3):
            with conn:
                conn.execute("insert into t values (?)", (f"row {i} " * 50,))
            rep.step()
    finally:
        rep.stop()
        assert rep.join()
    rows = conn.execute("select rowid, x from t order by rowid").fetchall()
    conn.close()
    return Populated(db, replica, rep.generation, rows)


def read_rows(path: Path) -> list[tuple]:
    conn = apsw.Connection(str(path))
    try:
        return conn.execute("select rowid, x from t order by rowid").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("kind", ["generations", "snapshots", "segments"])
def test_listing_commands(populated, kind):
    for target in (populated.replica, populated.url):
        result = invoke(kind, target)
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].startswith("generation ")
        assert populated.generation in result.stdout
        body = lines[1:]
        # Three commits: the shipper merges whatever is pending together into one object.
        if kind == "generations":
            cols = body[0].split()
            assert len(body) == 1 and cols[1] == "1" and 1 <= int(cols[2]) <= 3 and cols[3] == "1-4"
        elif kind == "snapshots":
            assert len(body) == 1
        else:
            assert 1 <= len(body) <= 3 and body[0].split()[1].startswith("2-")
            assert body[-1].split()[1].endswith("-4")


def test_listing_an_empty_replica(tmp_path):
    result = invoke("segments", f"file://{tmp_path}")
    assert result.exit_code == 0 and "(no segments)" in result.stdout


def test_restore_latest_and_by_txid(populated, tmp_path):
    out = tmp_path / "latest.db"
    result = invoke("restore", populated.url, "-o", out)
    assert result.exit_code == 0, result.output
    assert populated.generation in result.stdout and "integrity_check ok" in result.stdout
    assert read_rows(out) == populated.rows
    out2 = tmp_path / "first-two.db"
    snapshot_txid = int(invoke("snapshots", populated.url).stdout.splitlines()[1].split()[1])
    result = invoke("restore", populated.url, "-o", out2, "--txid", snapshot_txid + 2)
    assert result.exit_code == 0, result.output
    assert read_rows(out2) == populated.rows[:2]


def test_force_overwrites(populated, tmp_path):
    out = tmp_path / "o.db"
    out.write_bytes(b"old")
    result = invoke("restore", populated.url, "-o", out, "--force")
    assert result.exit_code == 0, result.output
    assert read_rows(out) == populated.rows


def test_timestamp_before_the_earliest_point(populated, tmp_path):
    out = tmp_path / "o.db"
    line = error_line(invoke("restore", populated.url, "-o", out, "--timestamp", "2000-01-01T00:00:00Z"))
    assert "before the earliest restorable point" in line and "earliest is" in line
    assert not out.exists()


def test_timestamp_in_the_future(populated, tmp_path):
    out = tmp_path / "o.db"
    line = error_line(invoke("restore", populated.url, "-o", out, "--timestamp", "2999-01-01T00:00:00Z"))
    assert "in the future" in line
    assert not out.exists()


def test_txid_not_in_the_replica(populated, tmp_path):
    line = error_line(invoke("restore", populated.url, "-o", tmp_path / "o.db", "--txid", "999999"))
    assert "txid 999999 is not in the replica" in line


def test_corrupt_segment_fails_naming_the_object(populated, tmp_path):
    replica = tmp_path / "replica"
    shutil.copytree(populated.replica, replica)
    seg = sorted(replica.glob("generations/*/segments/*.seg.zst"))[-1]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    key = seg.relative_to(replica).as_posix()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    line = error_line(invoke("restore", f"file://{replica}", "-o", out_dir / "o.db"))
    assert f"corrupt object {key}" in line
    assert os.listdir(out_dir) == []  # neither the output nor a temporary file is left


def test_restore_of_a_configured_database(populated, tmp_path):
    cfg = write_config(tmp_path / "c.yml", f"dbs:\n- path: {populated.db}\n  replicas:\n"
                                           f"  - url: {populated.url}\n")
    out = tmp_path / "o.db"
    result = invoke("restore", populated.db, "-c", cfg, "-o", out)
    assert result.exit_code == 0, result.output
    assert read_rows(out) == populated.rows
    # Without -o it would restore over the live database, which exists: refused.
    assert "already exists" in error_line(invoke("restore", populated.db, "-c", cfg))


def test_verify(populated):
    result = invoke("verify", populated.url)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {populated.url} restores to txid ")


def test_exe_compact_with_a_missing_config(tmp_path):
    proc = run_exe("compact", "--once", "-c", "/nonexistent.yml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "config file not found: /nonexistent.yml" in exe_error_line(proc)


def test_compact_dry_run_prints_the_plan_and_changes_nothing(populated, tmp_path):
    config = tmp_path / "r.yml"
    config.write_text(f"dbs:\n  - path: {populated.db}\n    replicas:\n      - url: file://{populated.replica}\n"
                      "        retention: 1s\n")
    before = sorted(p.name for p in populated.replica.rglob("*"))
    result = CliRunner().invoke(cli, ["compact", "--dry-run", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert f"file://{populated.replica}: " in result.output
    assert sorted(p.name for p in populated.replica.rglob("*")) == before


def test_snapshot_keep_for_and_deleting_a_name(tmp_path):
    """--keep-for goes into the name (retention reads it from the listing); --delete takes
    the name off (a checked unnamed copy stays, so what it restores stays restorable)."""
    from replicator.daemon_ops import take_snapshot

    db, replica = tmp_path / "app.db", tmp_path / "replica"
    conn = apsw.Connection(str(db))
    list(conn.execute("pragma journal_mode=wal; create table t(x); insert into t values (1)"))
    cfg = DbConfig(path=str(db), replicas=(ReplicaConfig(name="file", url=f"file://{replica}", type="file",
                                                         path=str(replica)),))
    txid = take_snapshot(cfg, "pre-migration", 30, keep_for_s=90 * 86400)
    listed = invoke("snapshots", f"file://{replica}")
    assert "pre-migration" in listed.output and "(until deleted)" not in listed.output
    gone = invoke("snapshots", "--delete", "pre-migration", f"file://{replica}")
    assert gone.exit_code == 0 and "took the name 'pre-migration' off 1 snapshot" in gone.output, gone.output
    assert "pre-migration" not in invoke("snapshots", f"file://{replica}").output
    out = tmp_path / "o.db"
    assert invoke("restore", "-o", out, "--txid", txid, f"file://{replica}").exit_code == 0
    again = invoke("snapshots", "--delete", "pre-migration", f"file://{replica}")
    assert again.exit_code == 1 and "no snapshot named 'pre-migration'" in again.output
    conn.close()


def test_keep_for_needs_a_name(tmp_path):
    result = invoke("snapshot", tmp_path / "app.db", f"file://{tmp_path}/r", "--keep-for", "90d")
    assert result.exit_code == 2 and "--keep-for goes with --name" in result.output


# -- runbook verbs: restore --snapshot / --dry-run, --json, progress, verify's row counts ---


@pytest.fixture(scope="module")
def named(tmp_path_factory) -> Populated:
    """A replica with a snapshot named pre-migration, then two more commits after it."""
    from replicator.daemon_ops import take_snapshot

    d = tmp_path_factory.mktemp("named")
    db, replica = d / "app.db", d / "replica"
    conn = apsw.Connection(str(db))
    list(conn.execute("pragma journal_mode=wal; create table t(x); insert into t values ('before')"))
    cfg = DbConfig(path=str(db), replicas=(ReplicaConfig(name="file", url=f"file://{replica}", type="file",
                                                         path=str(replica)),))
    take_snapshot(cfg, "pre-migration", 30)
    rows = conn.execute("select rowid, x from t order by rowid").fetchall()
    list(conn.execute("insert into t values ('after'); insert into t values ('after 2')"))
    take_snapshot(cfg, None, 30)
    conn.close()
    return Populated(db, replica, "", rows)


def test_restore_a_named_snapshot(named, tmp_path):
    out = tmp_path / "o.db"
    result = invoke("restore", "--snapshot", "pre-migration", "-o", out, named.url)
    assert result.exit_code == 0, result.output
    assert read_rows(out) == named.rows  # exactly its state, not the latest
    latest = tmp_path / "latest.db"
    assert invoke("restore", "-o", latest, named.url).exit_code == 0
    assert len(read_rows(latest)) == 3


def test_an_unknown_snapshot_name_lists_the_names(named, tmp_path):
    line = error_line(invoke("restore", "--snapshot", "pre-migraton", "-o", tmp_path / "o.db", named.url))
    assert line == "error: no snapshot named 'pre-migraton' (names: pre-migration)"
    assert not (tmp_path / "o.db").exists()
    line = error_line(invoke("restore", "--snapshot", "x", "--txid", "3", "-o", tmp_path / "o.db", named.url))
    assert "--txid or --snapshot, not both" in line


def test_dry_run_prints_the_plan_and_writes_nothing(populated, tmp_path):
    out = tmp_path / "o.db"
    text = invoke("restore", "--dry-run", "-o", out, populated.url)
    assert text.exit_code == 0, text.output
    assert "lands on  txid 4 (" in text.stdout and "snapshot  generations/" in text.stdout
    doc = json.loads(invoke("restore", "--dry-run", "--json", populated.url, "--txid", "3").stdout)
    assert doc["txid"] == 3 and doc["generation"] == populated.generation and doc["output"] is None
    assert doc["bytes"] == doc["snapshot"]["bytes"] + sum(s["bytes"] for s in doc["segments"])
    assert not out.exists() and os.listdir(tmp_path) == []
    done = invoke("restore", "--json", "-o", out, populated.url, "--txid", "3")
    assert json.loads(done.stdout)["txid"] == 3 and len(read_rows(out)) == 2


@pytest.mark.parametrize("kind", ["generations", "snapshots", "segments"])
def test_listing_commands_as_json(populated, kind):
    result = invoke(kind, "--json", populated.url)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows and all(r["generation"] == populated.generation for r in rows)
    if kind == "snapshots":
        assert rows[0]["txid"] == 1 and rows[0]["bytes"] > 0 and rows[0]["time"].endswith("Z")
    elif kind == "segments":
        assert rows[-1]["last_txid"] == 4
    else:
        assert (rows[0]["first_txid"], rows[0]["last_txid"]) == (1, 4)


def test_verify_prints_row_counts_and_json(populated):
    result = invoke("verify", populated.url)
    assert result.exit_code == 0, result.output
    assert "checksum " in result.stdout and "integrity_check ok" in result.stdout
    assert re.search(r"^  t\s+3 rows$", result.stdout, re.M), result.stdout
    doc = json.loads(invoke("verify", "--json", populated.url).stdout)
    assert doc["ok"] is True and doc["tables"] == {"t": 3} and doc["txid"] == 4 and doc["live_tables"] is None


def test_verify_needs_a_target_or_a_config():
    assert "verify needs TARGET" in error_line(invoke("verify"), code=2)


def test_progress_only_when_asked_off_a_terminal(populated, tmp_path):
    quiet = invoke("restore", "-o", tmp_path / "a.db", populated.url)
    assert quiet.exit_code == 0 and quiet.stderr == ""  # not a terminal: silence
    shown = invoke("restore", "--progress", "-o", tmp_path / "b.db", populated.url)
    assert shown.exit_code == 0, shown.output
    total = sum(p.stat().st_size for p in populated.replica.glob("generations/*/*/*.zst"))
    assert "restore" in shown.stderr and f"{total}/{total} bytes" in shown.stderr, shown.stderr


def test_the_restore_library_reports_bytes(populated, tmp_path):
    from replicator.restore import restore
    from replicator.storage import open_storage

    seen: list[tuple[int, int]] = []
    restore(open_storage(populated.url), tmp_path / "o.db", progress=lambda d, t: seen.append((d, t)))
    total = sum(p.stat().st_size for p in populated.replica.glob("generations/*/*/*.zst"))
    assert seen[-1] == (total, total) and all(t == total for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_exe_logs_json_lines_from_the_config(tmp_path):
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    conn = apsw.Connection(str(db))
    list(conn.execute("pragma journal_mode=wal; create table t(x)"))
    conn.close()
    cfg = tmp_path / "r.yml"
    cfg.write_text(f"logging: {{type: json, level: info}}\ndbs:\n  - path: {db}\n    replicas:\n"
                   f"      - url: file://{replica}\n")
    proc = subprocess.Popen([str(EXE), "run", "-c", str(cfg)], stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    first: list[dict] = []
    try:
        while len(first) < 10 and not any(d["msg"].startswith("replicating ") for d in first):
            first.append(json.loads(proc.stderr.readline()))  # the daemon's first lines come at once
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0
    assert any(d["msg"] == f"replicating {db} to file://{replica}" for d in first), first
    assert all(set(d) == {"ts", "level", "logger", "msg"} for d in first)
    assert all(json.loads(line)["level"] in ("info", "debug") for line in rest.splitlines())


def test_snapshot_from_a_config_without_a_daemon_then_restore_it(tmp_path):
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    conn = apsw.Connection(str(db))
    list(conn.execute("pragma journal_mode=wal; create table t(x); insert into t values ('kept')"))
    cfg = write_config(tmp_path / "c.yml", f"dbs:\n- path: {db}\n  replicas:\n  - url: file://{replica}\n")
    taken = invoke("snapshot", "-c", cfg, "--name", "pre-migration", db)
    assert taken.exit_code == 0 and "named pre-migration" in taken.stdout, taken.output
    list(conn.execute("drop table t"))
    conn.close()
    listed = json.loads(invoke("snapshots", "--json", "-c", cfg, db).stdout)
    named = [s for s in listed if s["name"] == "pre-migration"]  # beside the generation's first
    assert len(named) == 1 and named[0]["bytes"] > 0 and named[0]["time"].endswith("Z")
    done = invoke("restore", "-c", cfg, "--snapshot", "pre-migration", "-o", db, "--force", db)
    assert done.exit_code == 0, done.output
    assert read_rows(db) == [(1, "kept")]


def test_verify_config_with_an_unknown_replica_name(tmp_path):
    cfg = write_config(tmp_path / "c.yml", f"dbs:\n- path: {tmp_path}/a.db\n  replicas:\n"
                                           f"  - url: file://{tmp_path}/r\n")
    assert "no replica named 'nope'" in error_line(invoke("verify", "-c", cfg, "--replica", "nope"), code=2)
