"""`replicator status` for people: a few lines per database, the same facts as --json."""

from __future__ import annotations

from typing import Any

from .durations import format_timestamp


def _when(ms: int | None) -> str:
    return format_timestamp(ms * 1_000_000) if ms else "never"


def _size(n: int | None) -> str:
    n = n or 0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_status(report: list[dict[str, Any]]) -> str:
    lines = []
    for db in report:
        state = "replicating" if db.get("running") else "not running"
        lines.append(f"{db['path']}: {state}, generation {db.get('generation') or '-'}, txid {db.get('txid') or '-'}"
                     + (f", backlog {_size(db.get('backlog_bytes'))}" if "backlog_bytes" in db else "")
                     + (f", last snapshot {_when(db.get('last_snapshot_ms'))}" if db.get("last_snapshot_ms") else ""))
        if db.get("error"):
            lines.append(f"  error: {db['error']}")
        for r in db.get("replicas", []):
            behind = ""
            if db.get("txid") and r.get("txid") and r.get("generation") == db.get("generation"):
                behind = f", {db['txid'] - r['txid']} txid(s) behind" if r["txid"] < db["txid"] else ", caught up"
            if r.get("lag_seconds") is not None:
                behind += f", lag {r['lag_seconds']:.3f}s"
            lines.append(f"  {r['name']} {r['url']}: txid {r.get('txid') or '-'}{behind}, "
                         f"last upload {_when(r.get('last_upload_ms'))}"
                         + (f", error: {r['error']}" if r.get("error") else ""))
    return "\n".join(lines) if lines else "(no databases)"
