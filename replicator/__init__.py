"""replicator: continuous replication and point-in-time recovery for SQLite."""

__version__ = "0.1.0"
