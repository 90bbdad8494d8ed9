"""What replication looks like right now, for operators: `replicator status`, the control
socket's JSON and the Prometheus collector (metrics.py) all read these.

Frozen dataclasses of JSON-able values: `dataclasses.asdict` is the JSON. The field names
are an interface (docs/design.md 9c): add fields, never rename one. Times are Unix seconds
(floats, UTC; None when unknown), sizes bytes, counters count since the process started.
Nothing here may carry a credential: URLs are the display form (config.ReplicaConfig.url)
and error texts pass through `redact`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

MAX_ERROR_CHARS = 300  # one line in a table or a label-free metric; the log has the rest
ERROR_KINDS = ("transient", "throttled", "permanent", "lease", "internal")  # replica._error_kind


@dataclasses.dataclass(frozen=True)
class ReplicaStatus:
    name: str
    url: str  # display form, never credentials
    generation: str | None  # of the newest point this replica acknowledged (None: nothing yet)
    replicated_txid: int  # the newest txid it acknowledged (0: none); txids never repeat
    replicated_commit_time: float | None  # when that transaction was committed
    last_upload_time: float | None  # the last object it stored (this run)
    lag_seconds: float  # age of the oldest commit it lacks; 0 when caught up (design 9)
    backlog_bytes: int  # spooled objects it does not have yet
    backlog_objects: int
    shipped_bytes: int
    shipped_objects: int
    upload_errors: dict[str, int]  # failed rounds by kind (ERROR_KINDS), every kind present
    consecutive_failures: int  # failed rounds since the last good one
    last_error: str | None  # redacted, one line; None while healthy
    last_error_kind: str | None
    requests: dict[str, int]  # object-store requests by verb (put, get, head, list, delete)


@dataclasses.dataclass(frozen=True)
class DbStatus:
    path: str
    generation: str | None  # None until the tail is taken up
    txid: int  # the newest transaction seen in the WAL (0: not taken up yet)
    commit_time: float | None  # when it was seen committed
    replicating: bool  # the tail is taken up and the last step succeeded
    wal_bytes: int  # size of the -wal file
    spool_backlog_bytes: int  # spooled objects some replica still lacks (all of the spool)
    spool_backlog_objects: int
    checkpoints: int  # checkpoint cycles completed
    checkpoint_seconds_total: float  # their summed duration
    last_checkpoint_seconds: float | None
    snapshots: int  # snapshots taken this run
    last_snapshot_time: float | None
    last_error: str | None  # redacted, one line
    replicas: tuple[ReplicaStatus, ...]


@dataclasses.dataclass(frozen=True)
class CompactorStatus:
    """One replica's compactor (`replicator compact`), counted over passes (dry runs excluded)."""

    db: str
    replica: str  # the replica's name
    url: str
    passes: int
    failed_passes: int
    deleted_objects: int
    deleted_bytes: int
    merged_segments: int  # input segments concatenated into merged objects
    merged_objects: int  # merged objects written
    snapshots_built: int
    snapshot_bytes: int
    pass_seconds_total: float
    last_pass_seconds: float | None
    last_success_time: float | None
    last_error: str | None
    requests: dict[str, int]


_URL_USERINFO = re.compile(r"(\w+://)[^/\s@]+@")
_SIGNED_PARAM = re.compile(r"(?i)(x-amz-(?:signature|credential|security-token)=)[^&\s\"']+")
_AUTH_HEADER = re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\n]+")
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")


def redact(text: str | None, secrets: Iterable[str | None] = ()) -> str | None:
    """An error text as it may be shown: one line, bounded, with no credential in it (the
    given secrets, URL user:password@ parts, signed-URL parameters, Authorization values,
    AWS access key ids)."""
    if text is None:
        return None
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _URL_USERINFO.sub(r"\1***@", text)
    text = _SIGNED_PARAM.sub(r"\1***", text)
    text = _AUTH_HEADER.sub(r"\1***", text)
    text = _AWS_KEY_ID.sub("***", text)
    text = " ".join(text.split())
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS - 3] + "..."
    return text


def ns_to_s(ns: int | None) -> float | None:
    return ns / 1e9 if ns else None
