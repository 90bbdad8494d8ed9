"""`replicator snapshot`: through the running daemon if there is one, else by itself.

The daemon owns the database's tail (one process may hold the read transaction and assign
txids), so a running daemon is asked through a request file in the spool and the command
waits for its answer.
"""

from __future__ import annotations

import json
import time
import uuid

from .config import DbConfig
from .replication import DbReplicator
from .errors import ReplicatorError
from .spool import Spool

POLL_S = 0.05


def take_snapshot(db: DbConfig, name: str | None, timeout_s: float, keep_for_s: float | None = None) -> int:
    spool = Spool(db.path)
    if spool.try_lock():
        spool.unlock()
        rep = DbReplicator(db)
        rep.open()
        try:
            txid = rep.snapshot_now(name, keep_for_s)
        finally:
            rep.stop()
            if not rep.join():
                raise ReplicatorError("snapshot taken but not yet on every replica (kept in the spool)")
        return txid
    req = spool.requests_dir / f"{time.time_ns()}-{uuid.uuid4().hex[:6]}.req"
    tmp = req.with_suffix(".tmp")
    tmp.write_text(json.dumps({"name": name, "keep_for_s": keep_for_s}))
    tmp.rename(req)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, failed = req.with_suffix(".done"), req.with_suffix(".failed")
        if done.exists():
            txid = int(done.read_text())
            done.unlink()
            return txid
        if failed.exists():
            msg = failed.read_text()
            failed.unlink()
            raise ReplicatorError(f"snapshot failed: {msg}")
        time.sleep(POLL_S)
    req.unlink(missing_ok=True)
    raise ReplicatorError(f"the running replicator did not take the snapshot within {timeout_s:g}s")
