"""The scenario matrix: replicator state x what the application did meanwhile x when it
writes next. In every cell every committed transaction is in the replica after a clean stop,
and every restore equals the application's state at that transaction.

Each cell: the application writes; a first replicator run ships it and is stopped cleanly or
SIGKILLed (or never ran); the application writes 150 more transactions and then does the
cell's action; a second run starts and the application writes again, before it starts, right
after it has taken up its tail, or while it is starting and copying; then a clean stop and
the oracle (scenario.check_replica).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .scenario import AppProc, Replicator, check_replica

SEED = 5
BEFORE, DOWNTIME = 20, 150

# What the application does while no replicator runs (after its DOWNTIME writes, or around
# them): app commands, in order.
ACTIONS = {
    "none": [],
    "passive": ["checkpoint PASSIVE"],
    "full": ["checkpoint FULL"],
    "restart": ["checkpoint RESTART"],
    "truncate": ["checkpoint TRUNCATE"],
    "autocheckpoint": ["pragma wal_autocheckpoint=20", "write 40"],
    "journal_size_limit": ["pragma journal_size_limit=0", "checkpoint PASSIVE"],
    "close": ["close"],
    "vacuum": ["vacuum"],
    "replace": ["replace"],
}
# Cells in which the WAL still proves continuity when the second run starts: it must resume
# the generation rather than start a new one (a new one would be safe, but needless).
PROVABLE = {"none", "passive", "full", "restart", "journal_size_limit", "vacuum"}
# Cells whose WAL is new and empty when the second run starts: with no write since the first
# run, the database file alone proves the saved state (image.image_matches), and must.
UNCHANGED_FILE = {"truncate", "close"}


def _cell(tmp_path: Path, state: str, action: str, timing: str, mode: str = "keep",
          downtime: int = DOWNTIME) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    app = AppProc(db, SEED, mode)
    app.send("pragma wal_autocheckpoint=0")  # checkpoints happen only where a cell says so
    rep = Replicator(tmp_path, db, replica)
    if state != "never":
        rep.start()
        rep.wait_tailing()
        app.write(BEFORE)
        rep.wait_shipped(BEFORE + 1)  # txid 1 is the first snapshot
        rep.stop(kill=state == "killed")
    else:
        app.write(BEFORE)
    if downtime:
        app.write(downtime)
    for command in ACTIONS[action]:
        if command.startswith("write "):
            app.write(int(command.split()[1]))
        else:
            app.send(command)
    if timing == "before":
        app.write(10)
        rep.start()
    elif timing == "after_resume":
        rep.start()
        rep.wait_tailing()
        app.write(10)
    else:  # "during": the application writes while the replicator opens, resumes and copies
        rep.start()
        app.write(60)
    rep.wait_tailing()
    app.write(5)
    rep.stop()
    final = app.k
    app.quit()
    listing = check_replica(replica, tmp_path, SEED, final, rep.reported)
    provable = action in PROVABLE or (downtime == 0 and action in UNCHANGED_FILE)
    if state != "never" and provable and timing == "after_resume" and mode == "keep":
        assert len(listing.generations) == 1, f"continuity was provable: {[g.name for g in listing.generations]}"
    gens = [g for g in listing.generations if g.first_txid is not None]
    for older, newer in zip(gens, gens[1:]):
        assert newer.first_txid > older.last_txid, "txids repeat across generations"


@pytest.mark.parametrize("timing", ["before", "after_resume", "during"])
@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize("state", ["clean", "killed", "never"])
def test_matrix(tmp_path: Path, state: str, action: str, timing: str) -> None:
    _cell(tmp_path, state, action, timing)


@pytest.mark.parametrize("timing", ["before", "after_resume", "during"])
@pytest.mark.parametrize("state", ["clean", "killed"])
@pytest.mark.parametrize("mode", ["per-write", "cli"])
def test_matrix_other_applications(tmp_path: Path, mode: str, state: str, timing: str) -> None:
    """A connection per write (the last close checkpoints and deletes the WAL while no
    replicator runs), and the sqlite3 command-line tool (a process per write)."""
    if mode == "cli" and shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 command-line tool is not installed")
    _cell(tmp_path, state, "passive", timing, mode)


@pytest.mark.parametrize("action", sorted(UNCHANGED_FILE))
@pytest.mark.parametrize("state", ["clean", "killed"])
def test_a_new_wal_over_an_unchanged_file_resumes(tmp_path: Path, state: str, action: str) -> None:
    """No write while the replicator was down, then the WAL emptied (TRUNCATE) or deleted
    (the last connection closed): the WAL proves nothing, the file proves everything, so the
    generation resumes (a new one would re-upload the whole database after every such stop)."""
    _cell(tmp_path, state, action, "after_resume", downtime=0)
