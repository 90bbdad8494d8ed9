"""README's runbooks, run as written: the commands are read out of README.md (so the two
cannot drift apart), their placeholder paths replaced by the test's, and run as real CLI
processes against a real database and a running replicator (a directory replica, and S3 on
moto's server for the restore on another machine)."""

from __future__ import annotations

import json
import re
import shlex
import uuid
from pathlib import Path

import apsw

from .harness import TESTS, start_replicator, stop, wait_for
from .test_s3_e2e import run_cli

README = TESTS.parent / "README.md"


def recipe(title: str) -> list[list[str]]:
    """The `replicator ...` lines of the sh block under the README heading `title`."""
    text = README.read_text()
    m = re.search(rf"^### {re.escape(title)}\n(.*?)^```sh\n(.*?)^```", text, re.S | re.M)
    assert m, f"README has no runbook {title!r}"
    return [shlex.split(line)[1:] for line in m.group(2).splitlines() if line.startswith("replicator ")]


def substitute(args: list[str], paths: dict[str, str]) -> list[str]:
    return [paths.get(a, a) for a in args]


def cli_ok(args: list[str], env: dict[str, str] | None = None):
    proc = run_cli(*args, env=env, timeout=120)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


def make_db(path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(5000)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);"
                      "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)"))
    with conn:
        for i in range(200):
            conn.execute("INSERT INTO users(name) VALUES (?)", (f"user {i}",))
        for i in range(50):
            conn.execute("INSERT INTO notes(body) VALUES (?)", ("x" * 300,))
    return conn


def dump(path: Path) -> list[tuple]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        schema = conn.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY name").fetchall()
        rows = [conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for (kind, t, _) in schema if kind == "table"]
        return schema + rows
    finally:
        conn.close()


def write_config(path: Path, db: Path, *replicas: Path) -> Path:
    reps = "".join(f"      - url: file://{r}\n" for r in replicas)
    path.write_text(f"dbs:\n  - path: {db}\n    monitor-interval: 100ms\n    replicas:\n{reps}")
    return path


def has_snapshot(replica: Path) -> bool:
    return any(replica.glob("generations/*/snapshots/*.snap.zst"))


def test_backup_before_a_migration(tmp_path):
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    cfg = write_config(tmp_path / "replicator.yml", db, replica)
    paths = {"/etc/replicator.yml": str(cfg), "/data/app.db": str(db)}
    take, listing, undo = (substitute(c, paths) for c in recipe("Backup before a migration"))
    conn = make_db(db)
    daemon = start_replicator(["run", "-c", str(cfg)], tmp_path / "run.log")
    wait_for(lambda: has_snapshot(replica), 30, "the first snapshot")
    before = dump(db)

    assert "named pre-migration" in cli_ok(take).stdout  # served by the running daemon
    listed = cli_ok(listing).stdout
    assert re.search(r"\s[0-9,]+\s+pre-migration\s", listed), listed  # a size beside the name

    with conn:  # the migration, which goes wrong
        conn.execute("ALTER TABLE users ADD COLUMN email TEXT")
        conn.execute("DELETE FROM users WHERE id % 2 = 0")
        conn.execute("DROP TABLE notes")
    conn.close()  # stop the application and the replicator
    assert stop(daemon) == 0
    assert dump(db) != before

    done = cli_ok(undo)
    assert "restored" in done.stdout
    assert dump(db) == before
    # Started again, the replicator follows the restored file (a new generation).
    log2 = tmp_path / "run2.log"
    daemon = start_replicator(["run", "-c", str(cfg)], log2)
    wait_for(lambda: "replicating " in log2.read_text(), 30, "the replicator to start again")
    conn = apsw.Connection(str(db))
    with conn:
        conn.execute("INSERT INTO users(name) VALUES ('after the restore')")
    conn.close()
    again = cli_ok(["verify", "-c", str(cfg), "--against", str(db), str(db), "--timeout", "60"])
    assert "same as the live database" in again.stdout and "201 rows  live 201" in again.stdout
    assert stop(daemon) == 0


def test_monthly_restore_drill(tmp_path):
    db, r1, r2 = tmp_path / "app.db", tmp_path / "r1", tmp_path / "r2"
    cfg = write_config(tmp_path / "replicator.yml", db, r1, r2)
    paths = {"/etc/replicator.yml": str(cfg), "/data/app.db": str(db)}
    drill, against = (substitute(c, paths) for c in recipe("Monthly restore drill"))
    conn = make_db(db)
    daemon = start_replicator(["run", "-c", str(cfg)], tmp_path / "run.log")
    wait_for(lambda: has_snapshot(r1) and has_snapshot(r2), 30, "both replicas' snapshots")

    out = cli_ok(drill).stdout
    assert out.count("ok: file://") == 2 and "users" in out and "200 rows" in out, out
    record_path = Path(f"{db}-replicator") / "verify.json"
    rec = json.loads(record_path.read_text())
    assert set(rec) == {"time_ms", "ok", "txid", "replica", "error"}
    assert rec["ok"] is True and rec["error"] is None and rec["replica"] == "file,file1" and rec["txid"] >= 1

    with conn:
        conn.execute("INSERT INTO users(name) VALUES ('late')")
    compared = cli_ok(against).stdout
    assert "same as the live database" in compared and "201 rows  live 201" in compared, compared
    conn.close()
    assert stop(daemon) == 0

    # A broken second copy fails the drill, and the record says which and why.
    for seg in r2.glob("generations/*/snapshots/*.snap.zst"):
        seg.unlink()
    failed = run_cli(*drill, timeout=120)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "FAILED" in failed.stdout and failed.stderr.strip().startswith("error: verify failed for ")
    rec = json.loads(record_path.read_text())
    assert rec["ok"] is False and rec["replica"] == "file1" and "nothing to restore" in rec["error"]


def test_restore_to_another_machine(tmp_path, moto_server):
    bucket = f"runbook-{uuid.uuid4().hex[:12]}"
    moto_server.client().create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/app"
    db = tmp_path / "app.db"
    conn = make_db(db)
    daemon = start_replicator(["replicate", str(db), url], tmp_path / "rep.log", env=moto_server.env)
    with conn:
        conn.execute("INSERT INTO users(name) VALUES ('last')")
    conn.close()
    wait_for(lambda: run_cli("verify", "--against", str(db), url, "--timeout", "1",
                             env=moto_server.env).returncode == 0, 60, "the replica to reach the database")
    assert stop(daemon) == 0
    expected = dump(db)

    other = tmp_path / "other-machine"
    other.mkdir()
    out = other / "app.db"
    paths = {"s3://mybucket/app": url, "/srv/app.db": str(out)}
    plan, restore, verify = (substitute(c, paths) for c in recipe("Restore to another machine"))
    planned = cli_ok(plan, env=moto_server.env).stdout
    assert "lands on  txid" in planned and "nothing written" in planned
    assert list(other.iterdir()) == []
    as_json = json.loads(cli_ok([*plan, "--json"], env=moto_server.env).stdout)
    assert as_json["bytes"] > 0 and as_json["snapshot"]["key"].endswith(".snap.zst")
    done = cli_ok(restore, env=moto_server.env).stdout
    assert f"to txid {as_json['txid']} " in done  # lands where the plan said
    assert dump(out) == expected
    checked = cli_ok(verify, env=moto_server.env).stdout
    assert checked.startswith(f"ok: {url} restores to txid {as_json['txid']} ") and "201 rows" in checked
