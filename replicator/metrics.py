"""Prometheus metrics on the config's `addr:` (docs/design.md 9).

Collectors read `status()` at scrape time: the metrics cost nothing between scrapes and can
never disagree with `replicator status`. Names follow the ecosystem's conventions
(`replicator_` prefix, base units in `_seconds`/`_bytes`, counters `_total`); labels are
`db` (the database path) and `replica` (the replica's name), never URLs or credentials.
A sample whose value is unknown (no upload yet, no verify result) is left out, not zero.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
from typing import Callable, Iterable, Iterator, Protocol

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.exposition import start_http_server

from . import __version__
from .config import ListenAddr
from .errors import ConfigError, ReplicatorError
from .spool import spool_dir
from .status import ERROR_KINDS, CompactorStatus, DbStatus
from .verify import RECORD_NAME as VERIFY_FILE  # `verify -c` leaves its last result in each spool

log = logging.getLogger(__name__)

VERBS = ("put", "get", "head", "list", "delete")  # storage/retry.py's request counts
DB, REPLICA = ["db"], ["db", "replica"]


class _HasStatus(Protocol):
    def status(self) -> DbStatus: ...


class _HasCompactorStatus(Protocol):
    def status(self) -> CompactorStatus: ...


class _Families:
    """Metric families by name, created on first use, so each is declared in one line."""

    def __init__(self) -> None:
        self.by_name: dict[str, Metric] = {}

    def gauge(self, name: str, doc: str, labels: list[str], values: list[str], value: float | None) -> None:
        if value is not None:
            self._get(GaugeMetricFamily, name, doc, labels).add_metric(values, value)

    def counter(self, name: str, doc: str, labels: list[str], values: list[str], value: float) -> None:
        self._get(CounterMetricFamily, name, doc, labels).add_metric(values, value)

    def summary(self, name: str, doc: str, labels: list[str], values: list[str], count: int,
                total: float) -> None:
        self._get(SummaryMetricFamily, name, doc, labels).add_metric(values, count, total)

    def _get(self, kind, name: str, doc: str, labels: list[str]) -> Metric:
        if name not in self.by_name:
            self.by_name[name] = kind(name, doc, labels=labels)
        return self.by_name[name]


def _requests(f: _Families, labels: list[str], counts: dict[str, int]) -> None:
    for verb in sorted(set(VERBS) | set(counts)):
        f.counter("replicator_storage_requests_total", "Object-store requests by verb (each attempt counts).",
                  [*REPLICA, "verb"], [*labels, verb], counts.get(verb, 0))


class BuildInfoCollector:
    def __init__(self, command: str):
        self.command = command

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("replicator_build_info", "The running replicator's version (always 1).",
                              labels=["version", "python", "command"])
        g.add_metric([__version__, platform.python_version(), self.command], 1)
        yield g


class ReplicatorCollector:
    """`replicator run`: every database and replica, from DbReplicator.status()."""

    def __init__(self, replicators: Callable[[], Iterable[_HasStatus]]):
        self.replicators = replicators  # a callable: the set of databases may change (reload)

    def collect(self) -> Iterator[Metric]:
        f = _Families()
        for rep in list(self.replicators()):
            try:
                st = rep.status()
            except Exception:  # noqa: BLE001 - one database's bug must not fail the scrape
                log.exception("metrics: cannot read the status of a database (a bug)")
                continue
            self._db(f, st)
            _verify(f, st.path)
        yield from f.by_name.values()

    @staticmethod
    def _db(f: _Families, st: DbStatus) -> None:
        d = [st.path]
        f.gauge("replicator_db_replicating", "1 while the tail is taken up and the last step succeeded.",
                DB, d, 1 if st.replicating else 0)
        f.gauge("replicator_current_txid", "The newest transaction seen committed in the WAL.", DB, d, st.txid)
        f.gauge("replicator_commit_timestamp_seconds", "When that transaction was seen committed.", DB, d,
                st.commit_time)
        f.gauge("replicator_wal_bytes", "Size of the database's -wal file.", DB, d, st.wal_bytes)
        f.gauge("replicator_spool_backlog_bytes", "Spooled objects some replica still lacks.", DB, d,
                st.spool_backlog_bytes)
        f.gauge("replicator_spool_backlog_objects", "Spooled objects some replica still lacks.", DB, d,
                st.spool_backlog_objects)
        f.counter("replicator_checkpoints_total", "Checkpoint cycles completed.", DB, d, st.checkpoints)
        f.summary("replicator_checkpoint_duration_seconds", "Duration of completed checkpoint cycles.", DB, d,
                  st.checkpoints, st.checkpoint_seconds_total)
        f.gauge("replicator_last_checkpoint_duration_seconds", "Duration of the last checkpoint cycle.", DB, d,
                st.last_checkpoint_seconds)
        f.counter("replicator_snapshots_total", "Snapshots taken by this process.", DB, d, st.snapshots)
        f.gauge("replicator_last_snapshot_timestamp_seconds", "When the newest snapshot was taken.", DB, d,
                st.last_snapshot_time)
        for r in st.replicas:
            x = [st.path, r.name]
            f.gauge("replicator_replicated_txid", "The newest transaction the replica acknowledged.", REPLICA, x,
                    r.replicated_txid)
            f.gauge("replicator_replicated_commit_timestamp_seconds",
                    "When the newest transaction the replica acknowledged was committed.", REPLICA, x,
                    r.replicated_commit_time)
            f.gauge("replicator_replication_lag_seconds",
                    "Age of the oldest commit the replica lacks (0 when caught up).", REPLICA, x, r.lag_seconds)
            f.gauge("replicator_last_upload_timestamp_seconds", "When the replica last stored an object.",
                    REPLICA, x, r.last_upload_time)
            f.gauge("replicator_replica_backlog_bytes", "Spooled objects this replica lacks.", REPLICA, x,
                    r.backlog_bytes)
            f.gauge("replicator_replica_backlog_objects", "Spooled objects this replica lacks.", REPLICA, x,
                    r.backlog_objects)
            f.counter("replicator_shipped_bytes_total", "Bytes stored on the replica.", REPLICA, x, r.shipped_bytes)
            f.counter("replicator_shipped_objects_total", "Objects stored on the replica.", REPLICA, x,
                      r.shipped_objects)
            for kind in sorted(set(ERROR_KINDS) | set(r.upload_errors)):
                f.counter("replicator_upload_errors_total", "Failed upload rounds by kind.", [*REPLICA, "kind"],
                          [*x, kind], r.upload_errors.get(kind, 0))
            f.gauge("replicator_replica_consecutive_failures", "Failed rounds since the last good one.",
                    REPLICA, x, r.consecutive_failures)
            _requests(f, x, r.requests)


def _verify(f: _Families, db_path: str) -> None:
    """The last `replicator verify -c` result for this database, read at scrape time."""
    path = spool_dir(db_path) / VERIFY_FILE
    try:
        data = json.loads(path.read_text())
        time_s, ok, replica = data["time_ms"] / 1000, bool(data["ok"]), str(data.get("replica") or "")
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("metrics: ignoring %s: %s", path, err)
        return
    x = [db_path, replica]
    f.gauge("replicator_verify_last_run_timestamp_seconds", "When the last verify ran.", REPLICA, x, time_s)
    f.gauge("replicator_verify_last_ok", "1 if the last verify restored and proved the database.", REPLICA, x,
            1 if ok else 0)
    f.gauge("replicator_verify_last_success_timestamp_seconds", "When a verify last succeeded.", REPLICA, x,
            time_s if ok else None)


class CompactorCollector:
    """`replicator compact`: every replica's compactor, from Compactor.status()."""

    def __init__(self, compactors: Callable[[], Iterable[_HasCompactorStatus]]):
        self.compactors = compactors

    def collect(self) -> Iterator[Metric]:
        f = _Families()
        for comp in list(self.compactors()):
            st = comp.status()
            x = [st.db, st.replica]
            for name, doc, value in (
                ("passes", "Compaction passes run (dry runs excluded).", st.passes),
                ("failed_passes", "Compaction passes that failed.", st.failed_passes),
                ("deleted_objects", "Objects deleted by retention and merges.", st.deleted_objects),
                ("deleted_bytes", "Bytes of objects deleted by retention.", st.deleted_bytes),
                ("merged_segments", "Segments concatenated into merged objects.", st.merged_segments),
                ("merged_objects", "Merged objects written.", st.merged_objects),
                ("snapshots_built", "Replica-side snapshots built.", st.snapshots_built),
                ("snapshot_bytes", "Bytes of replica-side snapshots built.", st.snapshot_bytes),
            ):
                f.counter(f"replicator_compactor_{name}_total", doc, REPLICA, x, value)
            f.summary("replicator_compactor_pass_duration_seconds", "Duration of compaction passes.", REPLICA, x,
                      st.passes, st.pass_seconds_total)
            f.gauge("replicator_compactor_last_pass_duration_seconds", "Duration of the last pass.", REPLICA, x,
                    st.last_pass_seconds)
            f.gauge("replicator_compactor_last_pass_ok", "1 if the last pass succeeded.", REPLICA, x,
                    None if not st.passes else (1 if st.last_error is None else 0))
            f.gauge("replicator_compactor_last_success_timestamp_seconds", "When a pass last succeeded.",
                    REPLICA, x, st.last_success_time)
            _requests(f, x, st.requests)
        yield from f.by_name.values()


def registry(command: str, *collectors) -> CollectorRegistry:
    """A registry of its own (not the library's global one): the process, GC and platform
    collectors, the build info, and ours."""
    reg = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=reg)
    GCCollector(registry=reg)
    PlatformCollector(registry=reg)
    reg.register(BuildInfoCollector(command))
    for c in collectors:
        reg.register(c)
    return reg


def compactor_addr(addr: ListenAddr | None) -> ListenAddr | None:
    """`replicator compact` beside `replicator run` on one host, from one config: the port
    after addr:'s (0 stays 0: any free port), so the two never fight over one."""
    if addr is None or addr.port == 0:
        return addr
    if addr.port == 65535:
        raise ConfigError(f"addr {addr}: compact serves on the next port and there is none",
                              "give compact --addr HOST:PORT")
    return ListenAddr(addr.host, addr.port + 1)


@contextlib.contextmanager
def serving(addr: ListenAddr | None, reg: CollectorRegistry) -> Iterator[int | None]:
    """Serve `reg` on `addr` (HTTP, GET /metrics) while the block runs; yields the port."""
    if addr is None:
        yield None
        return
    host = addr.host or "0.0.0.0"  # ":9090": every interface, as Litestream's Go listener
    try:
        server, thread = start_http_server(addr.port, host, registry=reg)
    except OSError as err:
        why = err.strerror or str(err)
        raise ReplicatorError(f"cannot serve metrics on addr {addr}: {why}",
                              "is another process (replicator run, compact) using the port?"
                              if "in use" in why else None) from None
    port = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    log.info("serving metrics on http://%s:%d/metrics", shown, port)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
