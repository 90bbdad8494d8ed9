"""Command line: parse, call the library, format. Errors map to exit codes in one place."""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from . import __version__, config as config_mod, layout, logs, progress, resolve
from .config import Config, DbConfig
from .durations import format_timestamp, parse_duration
from .errors import ConfigError, NothingToRestore, OutputExists, ReplicatorError
from .formats import format_listing, format_result, listing_doc, result_doc
from .plan import Target
from .stopping import stop_on_signals
from .storage import Storage, open_storage

log = logging.getLogger("replicator")


def _setup_logging(verbose: bool, config: Config | None = None) -> None:
    """Defaults first (from -v); again with the config's `logging:` once a command loads one."""
    if config is None:
        logs.setup(verbose=verbose)
    else:
        logs.setup(config.logging, secrets=config.secrets)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One line on stderr and the error's exit code; tracebacks only for bugs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ReplicatorError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Continuous replication and point-in-time recovery for SQLite."""
    _setup_logging(verbose)


def main() -> None:
    try:
        cli(prog_name="replicator")
    finally:
        # The interpreter's exit would garbage-collect every object still alive (botocore's
        # parsed models above all): 0.2 s of a 1 s restore, measured, for memory the process
        # is about to give back whole. Files and sockets are closed by then or by refcount.
        gc.freeze()


# -- helpers --------------------------------------------------------------------------


def _age_identity_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--age-identity", "age_identities", multiple=True, metavar="FILE",
                        help="An age identity file to decrypt an encrypted replica (repeatable).")(fn)


def _run_daemon(config: Config, supervised: bool, config_path: str | None = None,
                exec_command: str | None = None, restore_missing: bool = False) -> None:
    """The daemon in the foreground until a signal (or --exec's child) stops it. With a
    config file, SIGHUP reloads it; under systemd, readiness and the watchdog go to it."""
    from . import metrics
    from .daemon import Daemon, check_paths
    from .notify import Notifier
    from .stopping import daemon_signals

    _setup_logging(False, config)
    check_paths(config)
    def reload_config() -> Config:
        # A reload may change `logging:` (and the secrets to redact): applied with the load.
        return resolve.config_at(str(config_path))

    load = reload_config if config_path else None
    daemon: Daemon | None = None  # read at each scrape: a reload replaces its replicators
    reg = metrics.registry("run", metrics.ReplicatorCollector(lambda: daemon.replicators if daemon else []))
    with metrics.serving(config.addr, reg), daemon_signals(reload=(signal.SIGHUP,) if load else ()) as signals:
        daemon = Daemon(config, supervised=supervised, notifier=Notifier.from_environ(os.environ),
                        restore_missing=restore_missing)
        daemon.start()
        try:
            child_code = daemon.serve(signals, load, exec_command or config.exec)
        finally:
            log.info("stopping: shipping everything committed so far")
            ok = daemon.shutdown()
    if child_code:
        if not ok:
            log.error("stopped with data not yet on every replica (it stays in the spool)")
        sys.exit(child_code)
    if not ok:
        raise ReplicatorError("stopped with data not yet on every replica (it stays in the spool)")
    log.info("stopped cleanly")


# -- commands -------------------------------------------------------------------------

_RESTORE_HELP = "Restore a missing database from its first replica before replicating it."


@cli.command()
@click.option("-c", "--config", "config_path", default=config_mod.DEFAULT_CONFIG_PATH, show_default=True)
@click.option("--exec", "exec_command", metavar="CMD",
              help="Run CMD as a child; when it exits, stop after a final sync, with its exit code.")
@click.option("--restore-if-db-not-exists", "restore_missing", is_flag=True, help=_RESTORE_HELP)
@handle_errors
def run(config_path: str, exec_command: str | None, restore_missing: bool) -> None:
    """Replicate every database in the config until SIGTERM/SIGINT; SIGHUP reloads it."""
    _run_daemon(resolve.config_at(config_path), supervised=True, config_path=config_path,
                exec_command=exec_command, restore_missing=restore_missing)


@cli.command()
@click.argument("db")
@click.argument("urls", nargs=-1, required=True)
@click.option("--restore-if-db-not-exists", "restore_missing", is_flag=True, help=_RESTORE_HELP)
@handle_errors
def replicate(db: str, urls: tuple[str, ...], restore_missing: bool) -> None:
    """Replicate DB to each replica URL (no config file needed)."""
    if restore_missing:
        from .daemon import restore_if_missing

        restore_if_missing(resolve.adhoc_db(db, urls, must_exist=False))
    _run_daemon(Config(dbs=(resolve.adhoc_db(db, urls),)), supervised=False)


def _progress_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--progress/--no-progress", "show_progress", default=None,
                        help="Progress bar on stderr (default: only on a terminal).")(fn)


def _json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON).")(fn)


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


@cli.command()
@click.argument("target")
@click.option("-o", "--output", help="Where to write the database (default: the database path).")
@click.option("--timestamp", help="Restore the state at this time (RFC 3339).")
@click.option("--txid", type=int, help="Restore the state right after this transaction.")
@click.option("--snapshot", "snapshot_name", metavar="NAME",
              help="Restore exactly the state of the snapshot named NAME (snapshot --name).")
@click.option("--if-db-not-exists", is_flag=True, help="Do nothing (exit 0) if the output exists.")
@click.option("--if-replica-exists", is_flag=True, help="Do nothing (exit 0) if the replica is empty.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--dry-run", is_flag=True, help="Print the plan (objects, bytes, where it lands); write nothing.")
@click.option("--parallelism", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--replica", "replica_name", help="Which of the database's replicas (by name).")
@click.option("-c", "--config", "config_path", help="Config file (to look up a database's replicas).")
@_json_option
@_progress_option
@_age_identity_option
@handle_errors
def restore(target: str, output: str | None, timestamp: str | None, txid: int | None, snapshot_name: str | None,
            if_db_not_exists: bool, if_replica_exists: bool, force: bool, dry_run: bool, parallelism: int,
            replica_name: str | None, config_path: str | None, as_json: bool, show_progress: bool | None,
            age_identities: tuple[str, ...] = ()) -> None:
    """Restore TARGET (a database path or a replica URL) as of a point in time."""
    from .restore import preview, restore as do_restore

    point = resolve.target_of(timestamp, txid, snapshot_name)
    replica, db = resolve.replica(target, config_path, replica_name)
    replica = resolve.with_identities(replica, age_identities)
    if output is None and db is not None:
        output = db.path
    if output is None and not dry_run:
        raise ConfigError("restoring from a replica URL needs -o OUTPUT")
    if dry_run:
        try:
            seen = preview(open_storage(replica), point)
        except NothingToRestore as err:
            raise ReplicatorError(f"{replica.url}: {err}") from None
        _print_preview(replica.url, output, seen, as_json)
        return
    assert output is not None
    if os.path.exists(output):
        if if_db_not_exists:
            click.echo(f"{output} exists; nothing restored")
            return
        if not force:
            raise OutputExists(f"output file {output} already exists", "use --force to overwrite it")
    storage = open_storage(replica)
    try:
        with progress.bar("restore", progress.wanted(show_progress)) as report:
            result = do_restore(storage, output, point, force=force, parallelism=parallelism, progress=report)
    except NothingToRestore as err:
        if if_replica_exists:
            click.echo(f"{replica.url}: nothing to restore")
            return
        raise ReplicatorError(f"{replica.url}: {err}") from None
    if as_json:
        _echo_json({"output": result.output, "replica": replica.url, "generation": result.generation,
                    "txid": result.txid, "time": format_timestamp(result.time_ns),
                    "bytes": result.db_size_pages * result.page_size, "segments": result.segments,
                    "snapshot": result.snapshot_key, "checksum": f"{result.db_checksum:016x}",
                    "seconds": round(result.seconds, 3)})
        return
    click.echo(f"restored {result.output} to txid {result.txid} ({format_timestamp(result.time_ns)}, "
               f"generation {result.generation}, {result.db_size_pages * result.page_size:,} bytes, "
               f"{result.segments} segments, {result.seconds:.2f}s); checksum and integrity_check ok")


def _print_preview(url: str, output: str | None, seen: Any, as_json: bool) -> None:
    plan = seen.plan
    if as_json:
        _echo_json({"replica": url, "output": output, "generation": plan.generation,
                    "snapshot": {"key": plan.snapshot.key, "txid": plan.snapshot.txid,
                                 "name": plan.snapshot.name, "bytes": plan.snapshot.size},
                    "segments": [{"key": s.key, "txids": [s.first_txid, s.last_txid], "bytes": s.size}
                                 for s in plan.segments],
                    "bytes": plan.download_bytes, "txid": seen.txid, "time": format_timestamp(seen.time_ns)})
        return
    name = f" named {plan.snapshot.name}" if plan.snapshot.name else ""
    click.echo(f"would restore {url} to {output or '(no output given)'}")
    click.echo(f"  snapshot  {plan.snapshot.key} (txid {plan.snapshot.txid}{name}, {plan.snapshot.size:,} bytes)")
    if plan.segments:
        first, last = plan.segments[0], plan.segments[-1]
        click.echo(f"  segments  {len(plan.segments)} (txids {first.first_txid}-{last.last_txid}, "
                   f"{sum(s.size for s in plan.segments):,} bytes)")
    else:
        click.echo("  segments  none")
    click.echo(f"  download  {plan.download_bytes:,} bytes")
    click.echo(f"  lands on  txid {seen.txid} ({format_timestamp(seen.time_ns)}), generation {plan.generation}")
    click.echo("nothing written (--dry-run)")


@cli.command()
@click.argument("target", required=False)
@click.option("--timestamp", help="Verify the state at this time (RFC 3339).")
@click.option("--txid", type=int)
@click.option("--against", "against", metavar="DB",
              help="Compare with the live database DB at the same transaction (waits for it to be shipped).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="With --against: seconds to wait for the replica to hold the live state.")
@click.option("--replica", "replica_name")
@click.option("-c", "--config", "config_path",
              help="Without TARGET: verify every replica of every database of this config.")
@_json_option
@_progress_option
@_age_identity_option
@handle_errors
def verify(target: str | None, timestamp: str | None, txid: int | None, against: str | None, timeout: float,
           replica_name: str | None, config_path: str | None, as_json: bool, show_progress: bool | None,
           age_identities: tuple[str, ...] = ()) -> None:
    """Restore to a temporary file and prove it: checksum, integrity_check, rows per table.

    Without TARGET, every replica of every database in the config (-c) is verified, and each
    database's result is written to its spool directory as verify.json (status and metrics
    read it); the exit code is non-zero if any fails.
    """
    from .verify import verify as do_verify

    point = resolve.target_of(timestamp, txid)
    if against is not None and point != Target():
        raise ConfigError("--against verifies at the live database's transaction: drop --timestamp/--txid")
    if target is None:
        if config_path is None:
            raise ConfigError("verify needs TARGET (a database or replica URL) or -c CONFIG")
        if against is not None:
            raise ConfigError("--against goes with TARGET (with -c, every database is its own)")
        _verify_config(resolve.config_at(config_path), point, replica_name, as_json, show_progress)
        return
    replica = resolve.with_identities(resolve.replica(target, config_path, replica_name)[0], age_identities)
    with progress.bar("verify", progress.wanted(show_progress)) as report:
        result = do_verify(open_storage(replica), replica.url, point,
                           against=str(Path(against).absolute()) if against else None,
                           timeout_s=timeout, progress=report)
    if as_json:
        _echo_json(result_doc(result))
    else:
        click.echo(format_result(result))
    if not result.ok:
        raise ReplicatorError(f"{replica.url} differs from {against} at txid {result.txid}")


def _verify_config(cfg: Config, point: Target, replica_name: str | None, as_json: bool,
                   show_progress: bool | None) -> None:
    """Every replica of every database (a drill that checked only the first would miss a
    broken second copy); one verify.json per database: ok only if every replica is."""
    from .verify import record, verify as do_verify, write_record

    if replica_name is not None and not any(r.name == replica_name for d in cfg.dbs for r in d.replicas):
        raise ConfigError(f"no replica named {replica_name!r} in {cfg.source}")
    docs, failed = [], []
    for db in cfg.dbs:
        replicas = [r for r in db.replicas if replica_name in (None, r.name)]
        if not replicas:
            continue
        outcomes: list[tuple[str, int | None, str | None]] = []
        for r in replicas:
            try:
                with progress.bar(f"verify {r.name}", progress.wanted(show_progress)) as report:
                    result = do_verify(open_storage(r), r.url, point, progress=report)
            except ReplicatorError as err:
                outcomes.append((r.name, None, str(err)))
                docs.append({"db": db.path, "replica": r.url, "ok": False, "error": str(err)})
                if not as_json:
                    click.echo(f"FAILED: {db.path} -> {r.url}: {err}")
                continue
            outcomes.append((r.name, result.txid, None))
            docs.append({"db": db.path, **result_doc(result)})
            if not as_json:
                click.echo(format_result(result))
        bad = [o for o in outcomes if o[2] is not None]
        if bad:
            failed.append(db.path)
            rec = record(False, bad[0][0], bad[0][1], bad[0][2])
        else:
            rec = record(True, ",".join(o[0] for o in outcomes), min((o[1] for o in outcomes if o[1] is not None),
                                                                    default=None), None)
        write_record(db.path, rec)
    if as_json:
        _echo_json(docs)
    if failed:
        raise ReplicatorError(f"verify failed for {', '.join(failed)}")


@cli.command()
@click.argument("db")
@click.argument("urls", nargs=-1)
@click.option("--name", help="A label kept in the snapshot's name, e.g. before-migration; retention keeps it.")
@click.option("--keep-for", help="With --name: retention keeps it this long (e.g. 90d, 720h), then retires it.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait.")
@click.option("--wait", "wait_listed", is_flag=True,
              help="Return only once every replica lists the snapshot (not only the spool).")
@click.option("-c", "--config", "config_path")
@_progress_option
@handle_errors
def snapshot(db: str, urls: tuple[str, ...], name: str | None, keep_for: str | None, timeout: float,
             wait_listed: bool, config_path: str | None, show_progress: bool | None) -> None:
    """Take a snapshot of DB now (through the running daemon, or by itself if none runs).

    The replicas come from the config, or from URLS given after DB.
    """
    from .daemon_ops import take_snapshot, wait_on_replicas

    if name is not None and not layout.SNAPSHOT_NAME.match(name):
        raise ConfigError(f"invalid snapshot name {name!r} (letters, digits, . _ - ; up to 64)")
    keep_for_s = None
    if keep_for is not None:
        if name is None:
            raise ConfigError("--keep-for goes with --name (unnamed snapshots follow the retention window)")
        try:
            keep_for_s = parse_duration(keep_for)
        except ValueError:
            raise ConfigError(f"--keep-for: not a duration: {keep_for!r} (e.g. 90d, 720h)") from None
    if urls:
        dbcfg: DbConfig | None = resolve.adhoc_db(db, urls)
    else:
        dbcfg = resolve.find_db(resolve.load_config(config_path, required=False), db)
    if dbcfg is None:
        raise ConfigError(f"no replicas configured for {db}", "pass -c CONFIG or replica URLs after DB")
    started = time.monotonic()
    with progress.spinner(f"snapshot of {dbcfg.path}", progress.wanted(show_progress)):
        txid = take_snapshot(dbcfg, name, timeout, keep_for_s)
        if wait_listed:
            wait_on_replicas(dbcfg, txid, name, max(0.0, timeout - (time.monotonic() - started)))
    click.echo(f"snapshot of {dbcfg.path} at txid {txid}" + (f" named {name}" if name else ""))


def _listing_command(kind: str):
    @click.argument("target")
    @click.option("--replica", "replica_name")
    @click.option("-c", "--config", "config_path")
    @_json_option
    @_age_identity_option
    @handle_errors
    def command(target: str, replica_name: str | None, config_path: str | None, as_json: bool,
                age_identities: tuple[str, ...] = ()) -> None:
        replica = resolve.with_identities(resolve.replica(target, config_path, replica_name)[0], age_identities)
        storage: Storage = open_storage(replica)
        listing = layout.parse_listing(storage.list(layout.GENERATIONS))
        if as_json:
            _echo_json(listing_doc(listing, kind))
        else:
            click.echo(format_listing(listing, kind))

    command.__doc__ = f"List the {kind} a replica holds (TARGET: database path or replica URL)."
    return command


for _kind in ("generations", "segments"):
    cli.command(name=_kind)(_listing_command(_kind))


@cli.command()
@click.argument("target")
@click.option("--delete", "delete_name", metavar="NAME",
              help="Take the name NAME off its snapshots: retention then retires them like any other.")
@click.option("--replica", "replica_name")
@click.option("-c", "--config", "config_path")
@_json_option
@_age_identity_option
@handle_errors
def snapshots(target: str, delete_name: str | None, replica_name: str | None, config_path: str | None,
              as_json: bool, age_identities: tuple[str, ...] = ()) -> None:
    """List the snapshots a replica holds (TARGET: database path or replica URL)."""
    replica = resolve.with_identities(resolve.replica(target, config_path, replica_name)[0], age_identities)
    storage: Storage = open_storage(replica)
    if delete_name is not None:
        from .compactor import forget_name

        gone = forget_name(storage, delete_name)
        if not gone:
            raise ReplicatorError(f"{replica.url}: no snapshot named {delete_name!r}")
        click.echo(f"took the name {delete_name!r} off {len(gone)} snapshot(s); retention now treats them "
                   "like any other")
        return
    listing = layout.parse_listing(storage.list(layout.GENERATIONS))
    if as_json:
        _echo_json(listing_doc(listing, "snapshots"))
    else:
        click.echo(format_listing(listing, "snapshots"))


@cli.command()
@click.option("-c", "--config", "config_path", default=config_mod.DEFAULT_CONFIG_PATH, show_default=True)
@click.option("--once", is_flag=True, help="One pass over every replica, then exit (cron, a systemd timer).")
@click.option("--dry-run", is_flag=True, help="Print what a pass would delete, merge and build; change nothing.")
@click.option("--addr", "addr_text", metavar="HOST:PORT",
              help="Serve metrics here (default: the config's addr: with the next port, beside `run`'s).")
@handle_errors
def compact(config_path: str, once: bool, dry_run: bool, addr_text: str | None) -> None:
    """The retention compactor: enforce each replica's retention, merge small segments, and
    build snapshots on the replica side (a pass every retention-check-interval). Long-lived,
    it serves metrics on the port after addr:'s (not with --once or --dry-run)."""
    from . import metrics
    from .compactor import Compactor, Scheduler
    from .retention import Policy

    config = resolve.config_at(config_path)
    addr = metrics.compactor_addr(config.addr)
    if addr_text is not None:
        try:
            addr = config_mod.parse_addr(addr_text)
        except ValueError as err:
            raise ConfigError(f"--addr: {err}") from None
    jobs = []
    for db in config.dbs:
        for r in db.replicas:
            policy = Policy(r.retention_s if r.retention_enabled else None, db.snapshot_history_ratio,
                            keep=r.keep)
            jobs.append((Compactor(open_storage(r), policy, db=db.path, name=r.name), r.retention_check_interval_s))
    reg = metrics.registry("compact", metrics.CompactorCollector(lambda: [c for c, _ in jobs]))
    with metrics.serving(None if once or dry_run else addr, reg), stop_on_signals() as stop:
        ok = Scheduler(jobs).run(stop, once=once, dry_run=dry_run, emit=click.echo)
    if not ok:
        raise ReplicatorError("a compaction pass failed (see the log above)")


@cli.command()
@click.argument("dbs", nargs=-1)
@click.option("-c", "--config", "config_path", help="Config file (default: /etc/replicator.yml when no DB is named).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: a list, an entry per database.")
@handle_errors
def status(dbs: tuple[str, ...], config_path: str | None, as_json: bool) -> None:
    """Per database and replica: position, lag, last upload, last snapshot, backlog and last
    error; from the running replicator, or from the spool and the replicas when none runs."""
    from .daemon_ops import status as db_status
    from .status_format import format_status

    report = [db_status(db) for db in resolve.dbs_of(dbs, config_path)]
    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_status(report))


@cli.command()
@click.argument("dbs", nargs=-1)
@click.option("-c", "--config", "config_path", help="Config file (default: /etc/replicator.yml when no DB is named).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Return once every replica holds what was committed (else once it is spooled).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
@handle_errors
def sync(dbs: tuple[str, ...], config_path: str | None, wait: bool, timeout: float) -> None:
    """Ship everything committed so far (before a deploy or a migration)."""
    from .daemon_ops import sync as db_sync

    lagging = []
    for db in resolve.dbs_of(dbs, config_path):
        answer = db_sync(db, wait, timeout)
        held = [name for name, ok in answer["replicas"].items() if ok]
        behind = [name for name, ok in answer["replicas"].items() if not ok]
        click.echo(f"{db.path}: txid {answer['txid']} on {len(held)}/{len(answer['replicas'])} replica(s)"
                   + (f"; behind: {', '.join(behind)}" if behind else ""))
        for name, err in answer.get("errors", {}).items():
            click.echo(f"  {name}: {err}")
        if behind and wait:
            lagging.append(db.path)
    if lagging:
        raise ReplicatorError(f"not every replica holds what was committed within {timeout:g}s: "
                              f"{', '.join(lagging)}")


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(f"replicator {__version__}")


@cli.command()
@click.option("--dir", "directory", default="demo", show_default=True, help="Where the demo lives.")
@click.option("--rate", type=float, default=50.0, show_default=True, help="Demo writes per second.")
@click.option("--duration", type=float, default=0.0, help="Stop by itself after this many seconds.")
@handle_errors
def demo(directory: str, rate: float, duration: float) -> None:
    """Replicate a demo database (with a demo writer) to a local replica; Ctrl-C stops."""
    from .demo import run_demo

    run_demo(Path(directory), rate, duration)


if __name__ == "__main__":
    main()
