"""The user-facing error hierarchy: every failure a user can cause or fix is one of these.

The CLI maps them to a one-line message plus an optional hint and a non-zero exit code;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ReplicatorError(Exception):
    """An error with a message fit for a user and an optional hint on what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(ReplicatorError):
    """The configuration file or a command-line option is invalid."""

    exit_code = 2


class RestoreError(ReplicatorError):
    """A restore cannot be planned or carried out."""


class NothingToRestore(RestoreError):
    """The replica holds nothing restorable (used by --if-replica-exists)."""


class OutputExists(RestoreError):
    """The restore target exists and --force was not given."""


class CorruptObject(ReplicatorError):
    """A replica object fails its format or checksum checks."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"corrupt object {key}: {reason}")
        self.key = key


class SourceError(ReplicatorError):
    """The live database cannot be tailed (not SQLite, not WAL-capable, locked...)."""


class LeaseHeld(ReplicatorError):
    """Another replicator holds the replica's single-writer lease."""


class SpoolError(ReplicatorError):
    """The local spool cannot be written or synced (disk full, I/O error): replication
    pauses checkpoints (the WAL keeps every uncopied frame) and retries until it can."""
