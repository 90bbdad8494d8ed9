"""`replicator demo`: the embedded default. A demo database with a writer beside it,
replicated to a local directory; on Ctrl-C it stops, restores the replica and proves the
copy equals the live database.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import apsw
import click

from .config import Config, DbConfig, ReplicaConfig
from .stopping import stop_on_signals


def content_hash(path: str | Path, immutable: bool = False) -> str:
    """Hash of every table's rows in a stable order: equal content, equal hash.

    immutable=True for a file nothing writes (a restore): SQLite then leaves no -wal/-shm.
    """
    mode = "immutable=1" if immutable else "mode=ro"
    conn = apsw.Connection(f"file:{path}?{mode}", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        h = hashlib.sha256()
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        for t in tables:
            h.update(t.encode())
            for row in conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid'):
                h.update(repr(row).encode())
        return h.hexdigest()
    finally:
        conn.close()


def run_demo(directory: Path, rate: float, duration: float) -> None:
    from .daemon import Daemon
    from .restore import restore
    from .storage import open_storage

    directory.mkdir(parents=True, exist_ok=True)
    db = (directory / "app.db").absolute()
    replica_dir = (directory / "replica").absolute()
    init = apsw.Connection(str(db))
    init.execute("PRAGMA journal_mode=wal").fetchall()
    init.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, at TEXT, body TEXT)")
    init.close()
    replica = ReplicaConfig(name="file", url=f"file://{replica_dir}", type="file", path=str(replica_dir))
    config = Config(dbs=(DbConfig(path=str(db), replicas=(replica,)),))
    writer = subprocess.Popen([sys.executable, "-m", "replicator.demo_writer", str(db), str(rate)],
                              start_new_session=True)
    with stop_on_signals() as stop:
        daemon = Daemon(config, supervised=False)
        try:
            daemon.start()
            click.echo(f"replicating {db} -> {replica_dir} (a demo writer adds {rate:g} notes/s); Ctrl-C stops")
            if duration > 0:
                timer = threading.Timer(duration, stop.set)
                timer.daemon = True
                timer.start()
            daemon.wait(stop)
        finally:
            writer.terminate()
            writer.wait()
        click.echo("stopping: shipping the last transactions...")
        ok = daemon.shutdown()
    restored = directory / "restored.db"
    restored.unlink(missing_ok=True)
    started = time.monotonic()
    result = restore(open_storage(replica), restored)
    same = content_hash(db) == content_hash(restored, immutable=True)
    click.echo(f"restored {restored} to txid {result.txid} in {time.monotonic() - started:.2f}s: "
               f"{'identical to' if same else 'DIFFERENT FROM'} {db}")
    click.echo(f"try: replicator generations {replica_dir}   |   replicator restore -o copy.db "
               f"--timestamp <time> file://{replica_dir}")
    if not (ok and same):
        sys.exit(1)
