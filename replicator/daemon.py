"""`run` and `replicate`: every database of a config, each to each of its replicas, until
told to stop. Each database is supervised on its own (replication.py): one that fails is
retried with backoff and never stops the others.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from .config import Config
from .replication import DbReplicator


class Daemon:
    def __init__(self, config: Config, clock_ns: Callable[[], int] = time.time_ns, supervised: bool = True):
        """supervised=False opens every database before start() returns and raises what
        stops one (`replicate`: the user is right there); True opens them on their own
        threads and keeps retrying (`run`: a service must not exit because one database is
        missing or locked for a while)."""
        self.config = config
        self.supervised = supervised
        self.replicators = [DbReplicator(db, clock_ns=clock_ns) for db in config.dbs]

    def start(self) -> None:
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

    def wait(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):  # in slices: a blocked untimed wait is how signals get lost
            pass

    def shutdown(self) -> bool:
        for r in self.replicators:
            r.stop()
        return all([r.join() for r in self.replicators])
