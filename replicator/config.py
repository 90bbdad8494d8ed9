"""YAML configuration -> frozen dataclasses, validated once at load.

Accepts Litestream's keys so an existing litestream.yml works unchanged. Every error names
the key path (`dbs[0].replicas[1].retention: not a duration: "7 days"`). Nothing downstream
reads raw dicts or the environment.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import yaml

from .durations import parse_duration
from .errors import ConfigError
from .logs import LEVELS, TYPES, LogSettings

DEFAULT_CONFIG_PATH = "/etc/replicator.yml"
DEFAULT_RETENTION_S = 720 * 3600.0  # 30 days: the window users expect from Litestream
DEFAULT_RETENTION_CHECK_INTERVAL_S = 3600.0  # the compactor's pass interval
DEFAULT_SNAPSHOT_INTERVAL_S = 24 * 3600.0  # one full image a day bounds restore replay
DEFAULT_FILE_SYNC_INTERVAL_S = 0.0  # local disk: ship on every wake-up (RPO of milliseconds)
DEFAULT_S3_SYNC_INTERVAL_S = 1.0  # object stores: at most one PUT a second while writes flow
DEFAULT_MONITOR_INTERVAL_S = 1.0  # fallback poll when no file event arrives
MIN_CHECKPOINT_PAGES = 1000  # ~4 MB of WAL at 4 KiB pages: SQLite's own autocheckpoint size
DEFAULT_BUSY_TIMEOUT_S = 5.0
DEFAULT_CHECKPOINT_INTERVAL_S = 60.0  # idle checkpoint so a quiet WAL does not linger
# A snapshot once the compressed segments since the newest one reach this many times its
# size (and at least 1 GiB): a restore reads at most about that much of segments, whatever
# the history (0 turns it off).
DEFAULT_SNAPSHOT_HISTORY_RATIO = 1.0


@dataclasses.dataclass(frozen=True)
class S3Options:
    bucket: str
    prefix: str = ""
    region: str | None = None
    endpoint: str | None = None
    force_path_style: bool = False
    skip_verify: bool = False
    access_key_id: str | None = dataclasses.field(default=None, repr=False)
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    part_size: int = 16 << 20
    concurrency: int = 4
    # Server-side encryption (Litestream 0.5's keys): SSE-C sends this 256-bit key with every
    # PUT, GET and HEAD; SSE-KMS names the key S3 encrypts new objects with.
    sse_customer_key: bytes | None = dataclasses.field(default=None, repr=False)
    sse_customer_algorithm: str = "AES256"
    sse_kms_key_id: str | None = None


@dataclasses.dataclass(frozen=True)
class AgeConfig:
    """Client-side encryption (Litestream 0.3's `age`): key texts, files already read.
    Writers need recipients only; restore, verify and the compactor's merges an identity."""

    identities: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    recipients: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ReplicaConfig:
    """Where one database is replicated to and how often."""

    name: str
    url: str  # display form; never contains credentials
    type: str  # "file" | "s3"
    path: str | None = None  # file replicas: the root directory
    s3: S3Options | None = None
    retention_s: float = DEFAULT_RETENTION_S
    # False (Litestream 0.5's `retention: {enabled: false}`): the compactor merges and builds
    # snapshots but deletes nothing; a bucket lifecycle rule does that.
    retention_enabled: bool = True
    retention_check_interval_s: float = DEFAULT_RETENTION_CHECK_INTERVAL_S
    # Snapshots kept beyond the window (restic's forget --keep-*): ((rule, count), ...)
    keep: tuple[tuple[str, int], ...] = ()
    snapshot_interval_s: float = DEFAULT_SNAPSHOT_INTERVAL_S
    sync_interval_s: float = DEFAULT_FILE_SYNC_INTERVAL_S
    age: AgeConfig | None = None  # client-side encryption of every object (storage/crypt.py)


@dataclasses.dataclass(frozen=True)
class DbConfig:
    path: str
    replicas: tuple[ReplicaConfig, ...]
    monitor_interval_s: float = DEFAULT_MONITOR_INTERVAL_S
    checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S
    min_checkpoint_page_count: int = MIN_CHECKPOINT_PAGES
    busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S
    snapshot_history_ratio: float = DEFAULT_SNAPSHOT_HISTORY_RATIO


@dataclasses.dataclass(frozen=True)
class ListenAddr:
    """Where the metrics are served (`addr:`, Litestream's key): host "" means every interface."""

    host: str
    port: int  # 0: any free port (the log line names the one taken)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Config:
    dbs: tuple[DbConfig, ...]
    source: str | None = None  # the file it came from, for messages
    addr: ListenAddr | None = None  # Prometheus metrics (metrics.py); None: not served
    exec: str | None = None  # the application `run` starts as its child (`--exec` overrides it)
    logging: LogSettings = LogSettings()

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every credential the config holds: the log redacts them (logs.py)."""
        out: list[str] = []
        for d in self.dbs:
            for r in d.replicas:
                if r.s3:
                    out += [v for v in (r.s3.access_key_id, r.s3.secret_access_key) if v]
                    if r.s3.sse_customer_key:
                        import base64

                        out.append(base64.b64encode(r.s3.sse_customer_key).decode())
                if r.age:
                    out += list(r.age.identities)
        return tuple(out)


_TOP_KEYS = {"dbs", "addr", "access-key-id", "secret-access-key", "logging", "log-level",
             "exec", "mcp-addr", "snapshot", "levels", "l0-retention", "l0-retention-check-interval",
             "shutdown-sync-timeout", "shutdown-sync-interval"}
_DB_KEYS = {"path", "replicas", "replica", "meta-path", "monitor-interval", "checkpoint-interval",
            "min-checkpoint-page-count", "max-checkpoint-page-count", "busy-timeout",
            "truncate-page-n", "dir", "pattern", "recursive", "watch", "snapshot-history-ratio"}
_REPLICA_KEYS = {"url", "type", "name", "path", "bucket", "region", "endpoint", "force-path-style",
                 "skip-verify", "access-key-id", "secret-access-key", "retention",
                 "retention-check-interval", "snapshot-interval", "validation-interval",
                 "sync-interval", "part-size", "concurrency", "sse-customer-algorithm",
                 "sse-customer-key", "sse-customer-key-path", "sse-kms-key-id", "age",
                 "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly"}
# Litestream keys this version knows but does not implement: refused with a reason, never
# accepted and ignored (a user who configured encryption must not get plaintext replicas).
_NOT_YET = "a Litestream key this version does not implement yet; remove it"
_UNSUPPORTED = {
    "mcp-addr": _NOT_YET, "snapshot": _NOT_YET,
    "levels": _NOT_YET, "l0-retention": _NOT_YET, "l0-retention-check-interval": _NOT_YET,
    "shutdown-sync-timeout": _NOT_YET, "shutdown-sync-interval": _NOT_YET, "meta-path": _NOT_YET,
    "truncate-page-n": "there is no emergency TRUNCATE checkpoint (docs/design.md 4.4); remove it",
    "max-checkpoint-page-count": "there is no emergency TRUNCATE checkpoint (docs/design.md 4.4); remove it",
    "validation-interval": _NOT_YET, "dir": _NOT_YET, "pattern": _NOT_YET, "recursive": _NOT_YET,
    "watch": _NOT_YET,
}
log = logging.getLogger(__name__)
_SSE_KEYS = ("sse-customer-algorithm", "sse-customer-key", "sse-customer-key-path", "sse-kms-key-id")
SSE_C_KEY_BYTES = 32  # SSE-C takes AES-256 keys only
_ENV = re.compile(r"\$(\{(\w+)\}|(\w+))")


def expand_env(text: str, environ: dict[str, str]) -> str:
    """Litestream expands $VAR and ${VAR} in the whole file before parsing; unset -> ''."""
    return _ENV.sub(lambda m: environ.get(m.group(2) or m.group(3), ""), text)


def load(path: str | os.PathLike, environ: dict[str, str] | None = None) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}", "pass -c PATH or create it") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {p}: {err.strerror}") from None
    cfg = parse(text, source=str(p), environ=os.environ if environ is None else environ)
    if mode & 0o077 and holds_secrets(text):
        log.warning("config file %s holds secrets and is readable by others (mode %04o): chmod 600 it, or "
                    "take the secrets from the environment ($VAR)", p, mode & 0o7777)
    return cfg


# A key whose value is a secret written into the file itself (not a $VAR taken from the
# environment), or an age identity pasted inline.
_SECRET_LINE = re.compile(r"^\s*-?\s*(secret-access-key|sse-customer-key)\s*:\s*(?!\$)(?!['\"]?\s*$)\S",
                          re.MULTILINE)


def holds_secrets(text: str) -> bool:
    """The config text itself holds a credential or key (before $VAR expansion)."""
    return bool(_SECRET_LINE.search(text)) or "AGE-SECRET-KEY-" in text


def parse(text: str, source: str = "<config>", environ: dict[str, str] | None = None) -> Config:
    text = expand_env(text, dict(os.environ if environ is None else environ))
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: YAML syntax error{where}: {problem}") from None
    if raw is None:
        raw = {}
    return _Parser(source).config(raw)


class _Parser:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key_path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key_path}: {message}")

    def mapping(self, value: Any, key_path: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key_path or "(top level)", "expected a mapping")
        for key in value:
            where = f"{key_path}.{key}" if key_path else str(key)
            if key in _UNSUPPORTED and key in allowed:
                raise self.fail(where, _UNSUPPORTED[key])
            if key not in allowed:
                raise self.fail(where, "unknown key")
        return value

    def duration(self, value: Any, key_path: str) -> float:
        try:
            return parse_duration(value)
        except ValueError:
            raise self.fail(key_path, f"not a duration: {value!r} (e.g. 720h, 1s, 250ms)") from None

    def integer(self, value: Any, key_path: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key_path, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def ratio(self, value: Any, key_path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise self.fail(key_path, f"expected a number >= 0, got {value!r}")
        return float(value)

    def boolean(self, value: Any, key_path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key_path, f"expected true or false, got {value!r}")
        return value

    def string(self, value: Any, key_path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key_path, f"expected a non-empty string, got {value!r}")
        return value

    def config(self, raw: Any) -> Config:
        top = self.mapping(raw, "", _TOP_KEYS)
        creds = (top.get("access-key-id") or None, top.get("secret-access-key") or None)
        dbs_raw = top.get("dbs")
        if dbs_raw is None:
            raise self.fail("dbs", "missing: list at least one database")
        if not isinstance(dbs_raw, list) or not dbs_raw:
            raise self.fail("dbs", "expected a non-empty list of databases")
        dbs = tuple(self.db(d, f"dbs[{i}]", creds) for i, d in enumerate(dbs_raw))
        paths = [d.path for d in dbs]
        for i, p in enumerate(paths):
            if p in paths[:i]:
                raise self.fail(f"dbs[{i}].path", f"duplicate database {p}")
        command = self.string(top["exec"], "exec") if top.get("exec") is not None else None
        addr = None
        if top.get("addr") not in (None, ""):
            try:
                addr = parse_addr(top["addr"])
            except ValueError as err:
                raise self.fail("addr", str(err)) from None
        return Config(dbs=dbs, source=self.source, exec=command,
                      logging=self.logging(top), addr=addr)

    def logging(self, top: dict[str, Any]) -> LogSettings:
        """`logging: {level, type, stderr}` (Litestream), or the legacy top-level `log-level`."""
        fields: dict[str, Any] = {}
        if "log-level" in top:
            fields["level"] = self.level(top["log-level"], "log-level")
        if top.get("logging") is not None:
            lg = self.mapping(top["logging"], "logging", {"level", "type", "stderr"})
            if "level" in lg:
                level = self.level(lg["level"], "logging.level")
                if fields.get("level", level) != level:
                    raise self.fail("logging.level", f"contradicts log-level {top['log-level']!r}; keep one")
                fields["level"] = level
            if "type" in lg:
                kind = str(lg["type"]).lower()
                if kind not in TYPES:
                    raise self.fail("logging.type", f"expected text or json, got {lg['type']!r}")
                fields["type"] = kind
            if "stderr" in lg:
                fields["stderr"] = self.boolean(lg["stderr"], "logging.stderr")
        return LogSettings(**fields)

    def level(self, value: Any, key_path: str) -> str:
        level = str(value).lower() if isinstance(value, str) else None
        if level not in LEVELS:
            raise self.fail(key_path, f"expected debug, info, warn or error, got {value!r}")
        return "warn" if level == "warning" else level

    def db(self, raw: Any, kp: str, creds: tuple[str | None, str | None]) -> DbConfig:
        d = self.mapping(raw, kp, _DB_KEYS)
        if "path" not in d:
            raise self.fail(f"{kp}.path", "missing")
        path = str(Path(os.path.expanduser(self.string(d["path"], f"{kp}.path"))).absolute())
        if "replica" in d and "replicas" in d:
            raise self.fail(kp, "use either replica or replicas, not both")
        if "replica" in d:
            reps_raw, rkp = [d["replica"]], f"{kp}.replica"
        else:
            reps_raw, rkp = d.get("replicas"), f"{kp}.replicas"
            if not isinstance(reps_raw, list) or not reps_raw:
                raise self.fail(rkp, "expected a non-empty list of replicas")
        replicas = []
        for i, r in enumerate(reps_raw):
            replicas.append(self.replica(r, f"{rkp}[{i}]" if "replicas" in d else rkp, creds, i))
        names = [r.name for r in replicas]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise self.fail(f"{rkp}[{i}].name", f"duplicate replica name {n!r}")
        kwargs: dict[str, Any] = {}
        for key, attr, conv in (
            ("monitor-interval", "monitor_interval_s", self.duration),
            ("checkpoint-interval", "checkpoint_interval_s", self.duration),
            ("busy-timeout", "busy_timeout_s", self.duration),
            ("min-checkpoint-page-count", "min_checkpoint_page_count", lambda v, k: self.integer(v, k, 1)),
            ("snapshot-history-ratio", "snapshot_history_ratio", self.ratio),
        ):
            if key in d:
                kwargs[attr] = conv(d[key], f"{kp}.{key}")
        cfg = DbConfig(path=path, replicas=tuple(replicas), **kwargs)
        return cfg

    def replica(self, raw: Any, kp: str, creds: tuple[str | None, str | None], index: int) -> ReplicaConfig:
        r = self.mapping(raw, kp, _REPLICA_KEYS)
        fields: dict[str, Any] = {}
        if "url" in r:
            base = replica_from_url(self.string(r["url"], f"{kp}.url"), error=lambda m: self.fail(f"{kp}.url", m))
            rtype = base.type
            fields.update(path=base.path, s3=base.s3, url=base.url)
            if "type" in r and r["type"] != rtype:
                raise self.fail(f"{kp}.type", f"{r['type']!r} contradicts url scheme {rtype!r}")
        else:
            rtype = r.get("type", "file")
            if rtype == "file":
                if "path" not in r:
                    raise self.fail(f"{kp}.path", "missing (or give url)")
                root = str(Path(os.path.expanduser(self.string(r["path"], f"{kp}.path"))).absolute())
                fields.update(path=root, url=f"file://{root}")
            elif rtype == "s3":
                if "bucket" not in r:
                    raise self.fail(f"{kp}.bucket", "missing (or give url)")
                bucket = self.string(r["bucket"], f"{kp}.bucket")
                prefix = str(r.get("path") or "").strip("/")
                fields.update(s3=S3Options(bucket=bucket, prefix=prefix),
                              url=f"s3://{bucket}/{prefix}".rstrip("/"))
            else:
                raise self.fail(f"{kp}.type", f"unsupported replica type {rtype!r} (file or s3)")
        if rtype == "s3":
            s3 = fields["s3"]
            overrides: dict[str, Any] = {}
            for key, attr in (("region", "region"), ("endpoint", "endpoint")):
                if r.get(key):
                    overrides[attr] = self.string(r[key], f"{kp}.{key}")
            for key, attr in (("force-path-style", "force_path_style"), ("skip-verify", "skip_verify")):
                if key in r:
                    overrides[attr] = self.boolean(r[key], f"{kp}.{key}")
            if "part-size" in r:
                overrides["part_size"] = self.integer(r["part-size"], f"{kp}.part-size", 5 << 20)
            if "concurrency" in r:
                overrides["concurrency"] = self.integer(r["concurrency"], f"{kp}.concurrency", 1)
            overrides["access_key_id"] = r.get("access-key-id") or s3.access_key_id or creds[0]
            overrides["secret_access_key"] = r.get("secret-access-key") or s3.secret_access_key or creds[1]
            if s3.endpoint is None and overrides.get("endpoint") and "force-path-style" not in r:
                overrides["force_path_style"] = True  # S3-compatible stores rarely do virtual hosts
            overrides.update(self.sse(r, kp))
            fields["s3"] = dataclasses.replace(s3, **overrides)
            fields.setdefault("sync_interval_s", DEFAULT_S3_SYNC_INTERVAL_S)
        elif any(k in r for k in _SSE_KEYS):
            key = next(k for k in _SSE_KEYS if k in r)
            raise self.fail(f"{kp}.{key}", "server-side encryption is for s3 replicas; use age for this one")
        if "age" in r:
            fields["age"] = self.age(r["age"], f"{kp}.age")
        if isinstance(r.get("retention"), dict):
            ret = self.mapping(r["retention"], f"{kp}.retention", {"enabled", "duration"})
            if "enabled" in ret:
                fields["retention_enabled"] = self.boolean(ret["enabled"], f"{kp}.retention.enabled")
            if "duration" in ret:
                fields["retention_s"] = self.duration(ret["duration"], f"{kp}.retention.duration")
        elif "retention" in r:
            fields["retention_s"] = self.duration(r["retention"], f"{kp}.retention")
        keep = [(rule, self.integer(r[f"keep-{rule}"], f"{kp}.keep-{rule}", 0))
                for rule in ("hourly", "daily", "weekly", "monthly", "yearly") if f"keep-{rule}" in r]
        if keep:
            fields["keep"] = tuple(keep)
        for key, attr in (
            ("retention-check-interval", "retention_check_interval_s"),
            ("snapshot-interval", "snapshot_interval_s"),
            ("sync-interval", "sync_interval_s"),
        ):
            if key in r:
                fields[attr] = self.duration(r[key], f"{kp}.{key}")
        name = r.get("name")
        fields["name"] = self.string(name, f"{kp}.name") if name is not None else (rtype if index == 0 else f"{rtype}{index}")
        return ReplicaConfig(type=rtype, **fields)


    def sse(self, r: dict[str, Any], kp: str) -> dict[str, Any]:
        """SSE-C (a base64 256-bit key, inline or in a file) or SSE-KMS; never echoes a key."""
        out: dict[str, Any] = {}
        if "sse-customer-key" in r and "sse-customer-key-path" in r:
            raise self.fail(f"{kp}.sse-customer-key-path", "give sse-customer-key or sse-customer-key-path, not both")
        raw, where = None, None
        if "sse-customer-key" in r:
            where = f"{kp}.sse-customer-key"
            raw = r["sse-customer-key"]
            if not isinstance(raw, str) or not raw:
                raise self.fail(where, "expected a base64-encoded 256-bit key (empty: an unset $VAR?)")
        elif "sse-customer-key-path" in r:
            where = f"{kp}.sse-customer-key-path"
            path = os.path.expanduser(self.string(r["sse-customer-key-path"], where))
            try:
                raw = Path(path).read_text().strip()
            except OSError as err:
                raise self.fail(where, f"cannot read {path}: {err.strerror}") from None
        if raw is not None:
            import base64
            import binascii

            try:
                key = base64.b64decode(raw.strip(), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != SSE_C_KEY_BYTES:
                raise self.fail(where, "not a base64-encoded 256-bit key (e.g. `openssl rand -base64 32`)")
            out["sse_customer_key"] = key
        if "sse-customer-algorithm" in r:
            algo = self.string(r["sse-customer-algorithm"], f"{kp}.sse-customer-algorithm")
            if algo != "AES256":
                raise self.fail(f"{kp}.sse-customer-algorithm", f"{algo!r} is not supported (S3 takes AES256)")
            if raw is None:
                raise self.fail(f"{kp}.sse-customer-algorithm", "needs sse-customer-key or sse-customer-key-path")
        if "sse-kms-key-id" in r:
            if raw is not None:
                raise self.fail(f"{kp}.sse-kms-key-id", "give SSE-C (sse-customer-key) or SSE-KMS, not both")
            out["sse_kms_key_id"] = self.string(r["sse-kms-key-id"], f"{kp}.sse-kms-key-id")
        return out

    def age(self, raw: Any, kp: str) -> AgeConfig:
        a = self.mapping(raw, kp, {"identities", "recipients"})
        ids = self.age_keys(a.get("identities", []), f"{kp}.identities", identity=True)
        recips = self.age_keys(a.get("recipients", []), f"{kp}.recipients", identity=False)
        if not ids and not recips:
            raise self.fail(kp, "give recipients (to write) and/or identities (to read)")
        return AgeConfig(identities=ids, recipients=recips)

    def age_keys(self, raw: Any, kp: str, identity: bool) -> tuple[str, ...]:
        """Each entry is key text (Litestream 0.3's form, $VAR expanded) or a file holding it."""
        if not isinstance(raw, list):
            raise self.fail(kp, "expected a list")
        return tuple(age_key_text(v, f"{kp}[{i}]", identity, self.fail) for i, v in enumerate(raw))


def age_key_text(value: Any, where: str, identity: bool,
                 fail: Callable[[str, str], Exception] = lambda w, m: ConfigError(f"{w}: {m}")) -> str:
    """An age key (or several) given inline or as a file path, checked; the text it holds.
    Errors never echo an identity."""
    from .storage.crypt import parse_identities, parse_recipients

    parse = parse_identities if identity else parse_recipients
    what = "identity" if identity else "recipient"
    if not isinstance(value, str) or not value.strip():
        raise fail(where, f"expected an age {what} or a file holding one (empty: an unset $VAR?)")
    text = value
    if not value.lstrip().startswith(("AGE-SECRET-KEY-", "age1", "#")):
        path = os.path.expanduser(value.strip())
        try:
            text = Path(path).read_text()
        except OSError as err:
            if identity:
                raise fail(where, f"neither an age identity (AGE-SECRET-KEY-1...) nor a readable file "
                                  f"({err.strerror})") from None
            raise fail(where, f"{value!r} is neither an age recipient (age1...) nor a readable file") from None
    try:
        parse(text)
    except ValueError as err:
        raise fail(where, f"age {what}: {err}") from None
    return text


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def parse_addr(value: Any) -> ListenAddr:
    """`HOST:PORT`, `:PORT` (every interface) or `[IPv6]:PORT`, as Litestream's `addr:`."""
    import ipaddress

    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    host, sep, port = (text or "").rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT or :PORT (e.g. \":9090\", 127.0.0.1:9090), got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address: [{host}]") from None
    elif host and not _HOSTNAME.match(host):
        raise ValueError(f"not a host name or address: {host!r}")
    return ListenAddr(host, int(port))


def replica_from_url(url: str, error: Callable[[str], Exception] | None = None) -> ReplicaConfig:
    """A replica from a URL (`file:///dir`, `s3://bucket/prefix`, or a bare directory path)."""
    parsed = urlparse(url)
    shown = _without_credentials(url, parsed)
    fail = error or (lambda m: ConfigError(f"{shown}: {m}"))
    if parsed.scheme in ("", "file"):
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise fail("file URLs take an absolute path: file:///path/to/dir")
        raw_path = parsed.path if parsed.scheme == "file" else url
        if not raw_path:
            raise fail("empty path")
        root = str(Path(os.path.expanduser(raw_path)).absolute())
        return ReplicaConfig(name="file", type="file", path=root, url=f"file://{root}")
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise fail("S3 URL without a bucket (expected s3://bucket/prefix)")
        if parsed.username or parsed.password:
            raise fail("credentials do not belong in the URL; use access-key-id/secret-access-key or the environment")
        prefix = parsed.path.strip("/")
        return ReplicaConfig(name="s3", type="s3", s3=S3Options(bucket=parsed.netloc, prefix=prefix),
                             url=f"s3://{parsed.netloc}/{prefix}".rstrip("/"),
                             sync_interval_s=DEFAULT_S3_SYNC_INTERVAL_S)
    raise fail(f"unsupported replica URL scheme {parsed.scheme!r} (file or s3)")


def _without_credentials(url: str, parsed) -> str:
    """The URL as it may be shown: a user:secret@ part is replaced, never echoed."""
    if parsed.username is None and parsed.password is None:
        return url
    return url.replace(parsed.netloc, "***@" + parsed.netloc.rpartition("@")[2], 1)



def read_age_identity_file(path: str) -> str:
    """`--age-identity FILE`: the file's identities, checked (a key is never taken inline on
    a command line, where other users' `ps` would show it)."""
    where = f"--age-identity {path}"
    try:
        text = Path(os.path.expanduser(path)).read_text()
    except OSError as err:
        raise ConfigError(f"{where}: cannot read it: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not an age identity file (not text)") from None
    if not text.strip():
        raise ConfigError(f"{where}: the file is empty")
    return age_key_text("# " + path + "\n" + text, where, identity=True)
