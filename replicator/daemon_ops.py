"""`snapshot`, `sync` and `status`: asked of the running replicator over its control socket
(control.py), or done by this process alone when none runs.

The daemon owns the database's tail (one process holds the read transaction and assigns
txids), so while it runs every such command goes through it; without one, the command opens
the database itself, does the work and lets go, as a short-lived replicator would.
"""

from __future__ import annotations

from typing import Any

from . import control, layout
from .config import DbConfig
from .errors import ConfigError, ReplicatorError
from .replication import DbReplicator
from .spool import Spool
from .status import redact
from .storage import StorageError, open_storage

ANSWER_MARGIN_S = 5.0  # the socket waits this much past the work's own timeout
LISTED_POLL_S = 0.05  # between listings while a snapshot the daemon spooled is uploaded


def wait_on_replicas(db: DbConfig, txid: int, name: str | None, timeout_s: float) -> None:
    """Return once every replica lists the snapshot (`snapshot --wait`): a running daemon
    answers when it is in the spool, and before a migration "taken" must mean "on the
    replicas"."""
    import time

    deadline = time.monotonic() + timeout_s
    for replica in db.replicas:
        storage = open_storage(replica)
        while True:
            try:
                listing = layout.parse_listing(storage.list(layout.GENERATIONS))
            except StorageError:
                listing = layout.Listing([])  # a replica that is down now may be up by the deadline
            if any(s.txid == txid and s.name == name for g in listing.generations for s in g.snapshots):
                break
            if time.monotonic() >= deadline:
                raise ReplicatorError(f"snapshot at txid {txid} taken but not on {replica.url} within "
                                      f"{timeout_s:g}s (it stays in the spool and ships when it can)")
            time.sleep(LISTED_POLL_S)


def take_snapshot(db: DbConfig, name: str | None, timeout_s: float, keep_for_s: float | None = None) -> int:
    spool = Spool(db.path)
    answer = _ask(spool, {"op": "snapshot", "name": name, "keep_for_s": keep_for_s, "timeout_s": timeout_s},
                  timeout_s)
    if answer is not None:
        return int(answer["txid"])
    rep = _alone(db)
    try:
        txid = rep.snapshot_now(name, keep_for_s)
    finally:
        rep.stop()
        if not rep.join():
            raise ReplicatorError("snapshot taken but not yet on every replica (kept in the spool)")
    return txid


def sync(db: DbConfig, wait: bool, timeout_s: float) -> dict[str, Any]:
    """Everything committed so far, shipped; with `wait`, returns once every replica holds
    it (the answer says which replicas do)."""
    spool = Spool(db.path)
    answer = _ask(spool, {"op": "sync", "wait": wait, "timeout_s": timeout_s}, timeout_s)
    if answer is not None:
        return answer
    rep = _alone(db)
    try:
        generation, txid = rep.sync_point()
    finally:
        rep.stop()
        rep.join(timeout_s if wait else 0.0)  # drains every replica, or gives up
    held = {s.cfg.name: s.holds(generation, txid) for s in rep.shippers}
    return {"generation": generation, "txid": txid, "replicas": held,
            "errors": {s.cfg.name: s.last_error for s in rep.shippers if s.last_error and not held[s.cfg.name]}}


def status(db: DbConfig, timeout_s: float = 10.0) -> dict[str, Any]:
    """The running replicator's view, or, when none runs, what the spool and the replicas
    hold (`running` tells which)."""
    spool = Spool(db.path)
    answer = _ask(spool, {"op": "status"}, timeout_s)
    if answer is not None:
        return {"running": True, **answer}
    state = spool.peek_state()
    replicas = []
    for r in db.replicas:
        entry: dict[str, Any] = {"name": r.name, "url": r.url, "generation": None, "replicated_txid": 0,
                                 "last_upload_time": None, "last_error": None}
        try:
            storage = open_storage(r)
            try:
                listing = layout.parse_listing(storage.list(layout.GENERATIONS))
            finally:
                storage.close()
        except StorageError as err:
            entry["last_error"] = redact(str(err))
        else:
            gen = listing.generations[-1] if listing.generations else None
            if gen is not None:
                end_ms = gen.end_ms
                entry.update(generation=gen.name, replicated_txid=gen.last_txid or 0,
                             last_upload_time=end_ms / 1000 if end_ms else None,
                             last_snapshot_time=max((s.time_ms for s in gen.snapshots), default=0) / 1000 or None)
        replicas.append(entry)
    backlog = list(spool.objects.list(layout.GENERATIONS)) if spool.dir.exists() else []
    return {"running": False, "path": db.path, "generation": state.generation if state else None,
            "txid": state.pos.txid if state else 0, "replicating": False,
            "spool_backlog_bytes": sum(o.size for o in backlog), "spool_backlog_objects": len(backlog),
            "last_error": None, "replicas": replicas}


def _ask(spool: Spool, request: dict[str, Any], timeout_s: float) -> Any | None:
    """The daemon's answer; None when no replicator runs for this database. A daemon that
    holds the spool but serves no socket (still starting) is an error, not a reason to
    open the database beside it."""
    answer = control.ask(spool.dir, request, timeout_s + ANSWER_MARGIN_S)
    if answer is None and spool.locked_elsewhere():
        raise ReplicatorError(f"{spool.db_path} is being replicated by a process that does not answer "
                              f"on {spool.dir / control.SOCKET_NAME}", "retry in a moment")
    return answer


def _alone(db: DbConfig) -> DbReplicator:
    if not db.replicas:
        raise ConfigError(f"no replicas configured for {db.path} and no replicator runs for it",
                          "pass -c CONFIG, or start `replicator run`")
    rep = DbReplicator(db)
    rep.open()
    return rep
