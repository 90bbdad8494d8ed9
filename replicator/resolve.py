"""What a command's arguments name: the config, a database in it, a replica (a URL, a
replica directory, or a database path looked up in the config), the age identities to open
it with, and the point in time. The CLI stays parsing and printing; this is the one place
these rules live, so every command reads an argument the same way."""

from __future__ import annotations

import os
from pathlib import Path

from . import config, layout, logs
from .config import Config, DbConfig, ReplicaConfig
from .durations import parse_timestamp
from .errors import ConfigError
from .plan import Target


def config_at(path: str) -> Config:
    """The config at `path`, its `logging:` applied at once: its secrets are redacted from
    every line after this one, whatever the command (and on each SIGHUP reload)."""
    cfg = config.load(path)
    logs.setup(cfg.logging, secrets=cfg.secrets)
    return cfg


def load_config(path: str | None, required: bool) -> Config | None:
    """config_at(path), path defaulting to /etc/replicator.yml; None when that default is
    absent and a config is not required (a replica URL alone names what to read)."""
    if path is None:
        if not required and not os.path.exists(config.DEFAULT_CONFIG_PATH):
            return None
        path = config.DEFAULT_CONFIG_PATH
    return config_at(path)


def find_db(cfg: Config | None, db: str) -> DbConfig | None:
    if cfg is None:
        return None
    want = str(Path(db).absolute())
    return next((d for d in cfg.dbs if d.path == want), None)


def replica(target: str, config_path: str | None, replica_name: str | None) -> tuple[ReplicaConfig, DbConfig | None]:
    """A replica URL, a replica directory, or a database path looked up in the config."""
    if "://" in target:
        cfg = load_config(config_path, required=False)
        for d in cfg.dbs if cfg else ():
            for r in d.replicas:  # reuse the config's endpoint/credentials for the same URL
                if r.url.rstrip("/") == target.rstrip("/"):
                    return r, d
        return config.replica_from_url(target), None
    p = Path(target)
    if p.is_dir() and ((p / layout.REPLICA_META).exists() or (p / "generations").is_dir()):
        return config.replica_from_url(str(p.absolute())), None
    cfg = load_config(config_path, required=False)
    db = find_db(cfg, target)
    if db is None:
        if cfg is None:
            raise ConfigError(f"{target} is not a replica directory and no config names it as a database",
                              "pass -c CONFIG, or a replica URL such as file:///backups/app or s3://bucket/app")
        raise ConfigError(f"no database {target} in {cfg.source}",
                          "pass a replica URL such as file:///backups/app or s3://bucket/app")
    if replica_name is None:
        return db.replicas[0], db
    for r in db.replicas:
        if r.name == replica_name:
            return r, db
    raise ConfigError(f"{target} has no replica named {replica_name!r}",
                      "names: " + ", ".join(r.name for r in db.replicas))


def with_identities(replica: ReplicaConfig, files: tuple[str, ...]) -> ReplicaConfig:
    """The replica with --age-identity files as its age identities (recipients kept)."""
    if not files:
        return replica
    texts = tuple(config.read_age_identity_file(f) for f in files)
    recipients = replica.age.recipients if replica.age else ()
    return config.dataclasses.replace(replica, age=config.AgeConfig(identities=texts, recipients=recipients))


def adhoc_db(db: str, urls: tuple[str, ...], must_exist: bool = True) -> DbConfig:
    replicas = []
    for i, url in enumerate(urls):
        r = config.replica_from_url(url)
        replicas.append(config.dataclasses.replace(r, name=f"{r.type}{i}" if i else r.type))
    path = str(Path(db).absolute())
    if must_exist and not os.path.exists(path):
        raise ConfigError(f"database not found: {path}")
    return DbConfig(path=path, replicas=tuple(replicas))


def target_of(timestamp: str | None, txid: int | None, snapshot_name: str | None = None) -> Target:
    given = [opt for opt, v in (("--timestamp", timestamp), ("--txid", txid), ("--snapshot", snapshot_name))
             if v is not None]
    if len(given) > 1:
        raise ConfigError(f"give {' or '.join(given)}, not both" if len(given) == 2 else "give one of "
                          "--timestamp, --txid and --snapshot")
    try:
        time_ns = parse_timestamp(timestamp) if timestamp else None
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return Target(txid, time_ns, snapshot_name)


def dbs_of(dbs: tuple[str, ...], config_path: str | None) -> list[DbConfig]:
    """The databases a status/sync names (all of the config's when none is named)."""
    cfg = load_config(config_path or (None if dbs else config.DEFAULT_CONFIG_PATH), required=not dbs)
    if not dbs:
        assert cfg is not None
        return list(cfg.dbs)
    return [find_db(cfg, d) or DbConfig(path=str(Path(d).resolve()), replicas=()) for d in dbs]
