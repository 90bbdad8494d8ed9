"""How results print: the listings (generations, snapshots, segments) and verify's result,
as text for people and as documents for --json. Pure functions of library results, so the
CLI only chooses which and echoes."""

from __future__ import annotations

from typing import Any

from . import layout
from .durations import format_timestamp


def _ms(ms: int | None) -> str:
    return format_timestamp(ms * 1_000_000) if ms is not None else "-"


def _ms_or_none(ms: int | None) -> str | None:
    return format_timestamp(ms * 1_000_000) if ms is not None else None


def listing_doc(listing: layout.Listing, kind: str) -> list[dict[str, Any]]:
    """The rows of format_listing as JSON objects (times RFC 3339, sizes in bytes)."""
    if kind == "generations":
        return [{"generation": g.name, "snapshots": len(g.snapshots), "segments": len(g.segments),
                 "first_txid": g.first_txid, "last_txid": g.last_txid, "start": _ms_or_none(g.start_ms),
                 "end": _ms_or_none(g.end_ms), "bytes": sum(s.size for s in g.snapshots + g.segments)}  # type: ignore[operator]
                for g in listing.generations]
    if kind == "snapshots":
        return [{"generation": s.generation, "txid": s.txid, "time": _ms_or_none(s.time_ms), "bytes": s.size,
                 "name": s.name, "kept_until": _ms_or_none(s.keep_until_ms), "key": s.key}
                for g in listing.generations for s in g.snapshots]
    return [{"generation": s.generation, "first_txid": s.first_txid, "last_txid": s.last_txid,
             "start": _ms_or_none(s.t0_ms), "end": _ms_or_none(s.t1_ms), "bytes": s.size, "key": s.key}
            for g in listing.generations for s in g.segments]


def format_listing(listing: layout.Listing, kind: str) -> str:
    rows: list[tuple[str, ...]]
    if kind == "generations":
        header = ("generation", "snapshots", "segments", "txids", "start", "end", "bytes")
        rows = [(g.name, str(len(g.snapshots)), str(len(g.segments)), f"{g.first_txid or '-'}-{g.last_txid or '-'}",
                 _ms(g.start_ms), _ms(g.end_ms), f"{sum(s.size for s in g.snapshots + g.segments):,}")  # type: ignore[operator]
                for g in listing.generations]
    elif kind == "snapshots":
        header = ("generation", "txid", "time", "bytes", "name", "kept until")
        rows = [(s.generation, str(s.txid), _ms(s.time_ms), f"{s.size:,}", s.name or "",
                 _ms(s.keep_until_ms) if s.keep_until_ms else ("(until deleted)" if s.name else ""))
                for g in listing.generations for s in g.snapshots]
    else:
        header = ("generation", "txids", "start", "end", "bytes")
        rows = [(s.generation, f"{s.first_txid}-{s.last_txid}", _ms(s.t0_ms), _ms(s.t1_ms), f"{s.size:,}")
                for g in listing.generations for s in g.segments]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    if not rows:
        lines.append(f"(no {kind})")
    return "\n".join(lines)


def result_doc(result: Any) -> dict[str, Any]:
    return {"replica": result.replica, "ok": result.ok, "txid": result.txid,
            "time": format_timestamp(result.time_ns), "generation": result.generation,
            "checksum": f"{result.checksum:016x}", "integrity_check": "ok", "tables": result.counts,
            "live_tables": result.live_counts, "differences": list(result.differences),
            "bytes": result.bytes, "seconds": round(result.seconds, 3)}


def format_result(result: Any) -> str:
    head = "ok" if result.ok else "DIFFERS"
    lines = [f"{head}: {result.replica} restores to txid {result.txid} ({format_timestamp(result.time_ns)}) "
             f"in {result.seconds:.2f}s; checksum {result.checksum:016x} and integrity_check ok"]
    width = max((len(t) for t in result.counts), default=5)
    for table, n in result.counts.items():
        live = ""
        if result.live_counts is not None:
            theirs = result.live_counts.get(table)
            live = f"  live {theirs:,}" if theirs is not None else "  live (no such table)"
        lines.append(f"  {table.ljust(width)}  {n:>12,} rows{live}")
    if result.live_counts is not None:
        for table in sorted(set(result.live_counts) - set(result.counts)):
            lines.append(f"  {table.ljust(width)}  {'(no such table)':>17}  live {result.live_counts[table]:,}")
        if result.ok:
            lines.append("  same as the live database at that transaction (checksum and row counts)")
    lines += [f"  difference: {d}" for d in result.differences]
    return "\n".join(lines)
