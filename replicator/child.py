"""The application `run --exec CMD` runs beside replication (a container's one process).

The child gets its own process group, so a terminal's Ctrl-C or a container's SIGTERM reaches
it once, forwarded by the daemon, not twice; and it does not inherit $NOTIFY_SOCKET, which
belongs to the replicator (systemd would otherwise take its READY for ours).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import threading
from typing import Callable, Mapping

from .errors import ConfigError, ReplicatorError
from .notify import NOTIFY_ENV

log = logging.getLogger(__name__)


class Child:
    def __init__(self, command: str, environ: Mapping[str, str], on_exit: Callable[[], None]):
        """Start `command` (split like a shell would, without one); `on_exit` runs on a
        waiter thread once it has exited."""
        try:
            argv = shlex.split(command)
        except ValueError as err:
            raise ConfigError(f"exec: cannot parse {command!r}: {err}") from None
        if not argv:
            raise ConfigError("exec: empty command")
        env = {k: v for k, v in environ.items() if k not in NOTIFY_ENV}
        try:
            self.proc = subprocess.Popen(argv, env=env, process_group=0)
        except OSError as err:
            raise ReplicatorError(f"exec: cannot run {argv[0]}: {err.strerror or err}") from None
        self.command = command
        self.exited = threading.Event()
        log.info("exec: started %s (pid %d)", argv[0], self.proc.pid)

        def wait() -> None:
            self.proc.wait()
            self.exited.set()
            on_exit()

        threading.Thread(target=wait, name="exec-waiter", daemon=True).start()

    def forward(self, signum: int) -> None:
        if self.proc.poll() is None:
            log.info("exec: forwarding signal %d to pid %d", signum, self.proc.pid)
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass  # it exited just now; the waiter reports it

    @property
    def exit_code(self) -> int:
        """The child's exit status as a shell reports it (128 + N when killed by signal N)."""
        code = self.proc.returncode
        assert code is not None
        return code if code >= 0 else 128 - code
