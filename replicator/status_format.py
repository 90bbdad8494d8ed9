"""`replicator status` for people: a few lines per database, the same facts as --json (the
names of status.py's DbStatus and ReplicaStatus, docs/design.md 9c)."""

from __future__ import annotations

from typing import Any

from .durations import format_timestamp


def _when(seconds: float | None) -> str:
    return format_timestamp(int(seconds * 1e9)) if seconds else "never"


def _size(n: int | None) -> str:
    v = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v} B"


def format_status(report: list[dict[str, Any]]) -> str:
    lines = []
    for db in report:
        state = ("replicating" if db.get("replicating") else "starting or retrying") if db.get("running") \
            else "not running"
        line = (f"{db['path']}: {state}, generation {db.get('generation') or '-'}, txid {db.get('txid') or '-'}, "
                f"backlog {_size(db.get('spool_backlog_bytes'))}")
        if db.get("running"):
            line += f", WAL {_size(db.get('wal_bytes'))}, last snapshot {_when(db.get('last_snapshot_time'))}"
        lines.append(line)
        if db.get("last_error"):
            lines.append(f"  error: {db['last_error']}")
        for r in db.get("replicas", []):
            txid, mine = r.get("replicated_txid") or 0, db.get("txid") or 0
            behind = ""
            if txid and mine and r.get("generation") == db.get("generation"):
                behind = f", {mine - txid} txid(s) behind" if txid < mine else ", caught up"
            if r.get("lag_seconds") is not None:
                behind += f", lag {r['lag_seconds']:.3f}s"
            if r.get("backlog_bytes"):
                behind += f", backlog {_size(r['backlog_bytes'])}"
            lines.append(f"  {r['name']} {r['url']}: txid {txid or '-'}{behind}, "
                         f"last upload {_when(r.get('last_upload_time'))}"
                         + (f", error: {r['last_error']}" if r.get("last_error") else ""))
    return "\n".join(lines) if lines else "(no databases)"
