"""`run` and `replicate`: every database of a config, each to each of its replicas, until
told to stop. Each database is supervised on its own (replication.py): one that fails is
retried with backoff and never stops the others.

The main thread's loop (serve) also speaks to the service manager (notify.py): READY=1 once
every database is replicating, STATUS= as that changes, a watchdog ping only while every
worker makes progress; SIGHUP reloads the config; `--exec` runs the application beside it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

from .config import Config, DbConfig
from .errors import ConfigError, NothingToRestore, ReplicatorError
from .notify import Notifier
from .replication import DbReplicator
from .stopping import Signals

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 1.0  # the main loop's slice: how stale STATUS= may get
# run --exec: after the application exits, how long to wait for a database still being
# opened (its tail not yet taken up), so that what the application committed is copied.
SETTLE_TIMEOUT_S = 30.0


def check_paths(config: Config) -> None:
    """A database's directory must exist (the file itself may come later: run waits for it)."""
    for i, db in enumerate(config.dbs):
        if not Path(db.path).parent.is_dir():
            raise ConfigError(f"{config.source or 'config'}: dbs[{i}].path: directory {Path(db.path).parent} "
                              "does not exist")


def restore_if_missing(db: DbConfig) -> None:
    """Boot-time restore (--restore-if-db-not-exists): a missing database comes back from
    its first replica before replication starts; a replica with nothing in it is no error."""
    from .plan import Target
    from .restore import restore
    from .storage import open_storage

    if os.path.exists(db.path):
        return
    replica = db.replicas[0]
    try:
        result = restore(open_storage(replica), db.path, Target())
    except NothingToRestore:
        log.info("%s does not exist and %s has nothing to restore; replicating it once it is created",
                 db.path, replica.url)
        return
    except ReplicatorError as err:
        raise ReplicatorError(f"cannot restore {db.path} from {replica.url}: {err}") from None
    log.info("restored %s from %s to txid %d (generation %s)", db.path, replica.url, result.txid,
             result.generation)


class Daemon:
    def __init__(self, config: Config, clock_ns: Callable[[], int] = time.time_ns, supervised: bool = True,
                 notifier: Notifier | None = None, restore_missing: bool = False):
        """supervised=False opens every database before start() returns and raises what
        stops one (`replicate`: the user is right there); True opens them on their own
        threads and keeps retrying (`run`: a service must not exit because one database is
        missing or locked for a while)."""
        self.config = config
        self.clock_ns = clock_ns
        self.supervised = supervised
        self.notifier = notifier or Notifier(None)
        self.restore_missing = restore_missing
        self.woke = threading.Event()  # the main loop's wake-up (serve uses the signals' one)
        self.replicators = [self._replicator(db) for db in config.dbs]
        self._watchdog_stop = threading.Event()

    def _replicator(self, db: DbConfig) -> DbReplicator:
        return DbReplicator(db, clock_ns=self.clock_ns, on_ready=lambda: self.woke.set())

    def start(self) -> None:
        if self.restore_missing:
            for db in self.config.dbs:
                restore_if_missing(db)
        started = []
        try:
            for r in self.replicators:
                r.start(supervised=self.supervised)
                started.append(r)
        except BaseException:
            for r in started:
                r.stop()
                r.join()
            raise
        if self.notifier.watchdog_s:
            threading.Thread(target=self._watchdog, args=(self.notifier.watchdog_s,), name="watchdog",
                             daemon=True).start()

    def wait(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):  # in slices: a blocked untimed wait is how signals get lost
            pass

    def serve(self, signals: Signals, load_config: Callable[[], Config] | None = None,
              exec_command: str | None = None, environ: Mapping[str, str] = os.environ) -> int | None:
        """The main thread, until a stop signal or, with `exec_command`, the child's exit
        (stop signals are then forwarded to it). Returns the child's exit code, if any."""
        from .child import Child

        self.woke = signals.woke
        child = Child(exec_command, environ, on_exit=signals.woke.set) if exec_command else None
        forwarded, ready_sent, reloaded, status = 0, False, False, ""
        while True:
            signals.woke.clear()  # before looking: what happens after it wakes the next wait
            if child is None and signals.stop.is_set():
                break
            if child is not None and signals.stops != forwarded:
                forwarded = signals.stops
                child.forward(signals.last_stop)
            if child is not None and child.exited.is_set():
                log.info("exec: %s exited with code %d; stopping replication", child.command, child.exit_code)
                self.settle(SETTLE_TIMEOUT_S)
                break
            if signals.reload.is_set():
                signals.reload.clear()
                self._reload(load_config, exec_command)
                reloaded = True
            line = self.status_line()
            # The first READY=1 once every database is replicating; after a reload at once
            # (it ends RELOADING=1; a database still opening shows in STATUS=).
            if reloaded or (not ready_sent and all(r.ready.is_set() for r in self.replicators)):
                self.notifier.ready(line)
                ready_sent, reloaded, status = True, False, line
            elif line != status:
                self.notifier.status(line)
                status = line
            signals.woke.wait(STATUS_INTERVAL_S)
        return child.exit_code if child is not None else None

    def status_line(self) -> str:
        waiting = [r.cfg.path for r in self.replicators if not r.ready.is_set()]
        failing = [r.cfg.path for r in self.replicators if r.ready.is_set() and r.error is not None]
        n = len(self.replicators)
        line = f"replicating {n - len(waiting)} of {n} databases"
        if waiting:
            line += "; waiting for " + ", ".join(waiting)
        if failing:
            line += "; failing: " + ", ".join(failing)
        return line

    def settle(self, timeout_s: float) -> None:
        """Wait (bounded) until every database that exists has its tail taken up: one the
        application created just before it exited is then copied by the final sync."""
        deadline = time.monotonic() + timeout_s
        for r in self.replicators:
            while not r.ready.is_set() and os.path.exists(r.cfg.path) and time.monotonic() < deadline:
                r.ready.wait(0.05)

    # -- reload ------------------------------------------------------------------------

    def _reload(self, load_config: Callable[[], Config] | None, exec_command: str | None) -> None:
        self.notifier.reloading()
        if load_config is None:
            log.info("SIGHUP: no config file to reload")
            return
        try:
            config = load_config()
            check_paths(config)
        except ReplicatorError as err:
            log.error("reload refused, still running the previous config: %s", err)
            return
        # Keys bound at start-up (the child, the metrics listener): said, never silently kept.
        for key, old, now in (("exec", self.config.exec, config.exec), ("addr", self.config.addr, config.addr)):
            if old != now:
                log.warning("reload: %s changed; it takes effect when replicator is restarted", key)
        self.reload(config)

    def reload(self, config: Config) -> None:
        """Apply a new config: removed databases stop (after their final copy and drain),
        changed ones (any setting of theirs differs) restart, new ones start, the rest go on."""
        new = {db.path: db for db in config.dbs}
        current = {r.cfg.path: r for r in self.replicators}
        going = [r for path, r in current.items() if new.get(path) != r.cfg]
        for r in going:
            r.stop()
        for r in going:
            if not r.join():
                log.warning("%s: stopped with data not yet on every replica (it stays in the spool)", r.cfg.path)
        replicators, added, restarted = [], 0, 0
        for db in config.dbs:
            r = current.get(db.path)
            if r is not None and r.cfg == db:
                replicators.append(r)
                continue
            added += r is None
            restarted += r is not None
            if self.restore_missing:
                try:
                    restore_if_missing(db)
                except ReplicatorError as err:
                    log.error("%s", err)
            r = self._replicator(db)
            r.start(supervised=self.supervised)
            replicators.append(r)
        self.replicators = replicators  # one assignment: the watchdog reads the list unlocked
        self.config = config
        log.info("reloaded %s: %d added, %d removed, %d restarted, %d unchanged", config.source or "the config",
                 added, len(going) - restarted, restarted, len(replicators) - added - restarted)

    # -- watchdog ----------------------------------------------------------------------

    def stalled(self, limit_s: float) -> list[str]:
        """Workers stuck at one piece of work for longer than limit_s (the watchdog rule)."""
        now = time.monotonic()
        out = []
        for r in list(self.replicators):
            if (s := r.stalled_s(now)) > limit_s:
                out.append(f"{r.cfg.path} (its worker, {s:.0f}s)")
            for sh in r.shippers:
                if (s := sh.stalled_s(now)) > limit_s:
                    out.append(f"{r.cfg.path} -> {sh.cfg.name} (its shipper, {s:.0f}s past a round's limit)")
        return out

    def _watchdog(self, period_s: float) -> None:
        """WATCHDOG=1 every half period while no worker is stalled for a period: a wedged
        daemon misses the manager's deadline and is restarted (Restart=on-failure)."""
        logged = False
        while not self._watchdog_stop.wait(period_s / 2):
            stalled = self.stalled(period_s)
            if not stalled:
                self.notifier.watchdog()
                if logged:
                    log.info("watchdog: every worker makes progress again; pinging")
                logged = False
            elif not logged:
                log.error("watchdog: not pinging the service manager: no progress in %s", "; ".join(stalled))
                logged = True

    def shutdown(self) -> bool:
        self._watchdog_stop.set()
        self.notifier.stopping("stopping: shipping everything committed so far")
        for r in self.replicators:
            r.stop()
        return all([r.join() for r in self.replicators])
