"""Configuration: Litestream files load unchanged; every error names its key path."""

from __future__ import annotations

import os
import textwrap

import pytest

from replicator import config
from replicator.config import DEFAULT_S3_SYNC_INTERVAL_S, ConfigError, load, parse, replica_from_url

RUNBOOK = """\
access-key-id: AKIA...
secret-access-key: ...

dbs:
- path: /data/mnemosyne.db
  replicas:
    - url: s3://mybucket/mnemosyne
      retention: 720h  # 30 days
      snapshot-interval: 24h
"""


def yml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def error_of(text: str, environ: dict[str, str] | None = None, source: str = "<config>") -> str:
    with pytest.raises(ConfigError) as exc:
        parse(yml(text), source=source, environ=environ or {})
    assert exc.value.exit_code == 2
    return str(exc.value)


def test_litestream_runbook_config_loads_unchanged(tmp_path):
    path = tmp_path / "litestream.yml"
    path.write_text(RUNBOOK)
    cfg = load(path, environ={})
    assert cfg.source == str(path)
    (db,) = cfg.dbs
    assert db.path == "/data/mnemosyne.db"
    (r,) = db.replicas
    assert (r.type, r.name, r.url) == ("s3", "s3", "s3://mybucket/mnemosyne")
    assert (r.s3.bucket, r.s3.prefix) == ("mybucket", "mnemosyne")
    assert r.retention_s == 720 * 3600
    assert r.snapshot_interval_s == 24 * 3600
    assert r.sync_interval_s == DEFAULT_S3_SYNC_INTERVAL_S
    assert (r.s3.access_key_id, r.s3.secret_access_key) == ("AKIA...", "...")
    assert "AKIA..." not in repr(cfg)


def test_env_expansion():
    cfg = parse(yml("""
        access-key-id: $KEY_ID
        secret-access-key: ${SECRET}
        dbs:
          - path: ${DATA}/app.db
            replicas:
              - url: s3://$BUCKET/app
                retention: ${RETAIN}
    """), environ={"KEY_ID": "AKIAEXAMPLE", "SECRET": "s3cr3t-value", "DATA": "/srv/data",
                   "BUCKET": "prod-backups", "RETAIN": "48h"})
    r = cfg.dbs[0].replicas[0]
    assert cfg.dbs[0].path == "/srv/data/app.db"
    assert r.s3.bucket == "prod-backups"
    assert r.retention_s == 48 * 3600
    assert (r.s3.access_key_id, r.s3.secret_access_key) == ("AKIAEXAMPLE", "s3cr3t-value")
    assert "s3cr3t-value" not in repr(cfg) and "AKIAEXAMPLE" not in repr(cfg)


def test_env_expansion_uses_the_given_environ_only(monkeypatch):
    monkeypatch.setenv("REPLICATOR_TEST_DIR", "/from/os/environ")
    cfg = parse(yml("""
        dbs:
          - path: /data/app.db
            replicas:
              - path: /backups${REPLICATOR_TEST_DIR}/x
    """), environ={})
    assert cfg.dbs[0].replicas[0].path == "/backups/x"  # unset -> empty, like Litestream


def test_load_reads_os_environ_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICATOR_TEST_BUCKET", "env-bucket")
    path = tmp_path / "c.yml"
    path.write_text("dbs:\n- path: /d/a.db\n  replicas:\n  - url: s3://$REPLICATOR_TEST_BUCKET/p\n")
    assert load(path).dbs[0].replicas[0].s3.bucket == "env-bucket"


@pytest.mark.parametrize("text, path", [
    ("bogus: 1\ndbs: []", "bogus"),
    ("dbs:\n- path: /a.db\n  bogus: 1\n  replicas: [{url: file:///b}]", "dbs[0].bogus"),
    ("dbs:\n- path: /a.db\n  replicas:\n  - url: file:///b\n    bogus: 1", "dbs[0].replicas[0].bogus"),
    ("dbs:\n- path: /a.db\n  replica:\n    url: file:///b\n    bogus: 1", "dbs[0].replica.bogus"),
    ("dbs:\n- path: /a.db\n  replicas: [{url: file:///b}]\n- path: /c.db\n  replicas:\n  - url: file:///d\n"
     "  - url: file:///e\n    bogus: 1", "dbs[1].replicas[1].bogus"),
])
def test_unknown_key_names_its_path(text, path):
    assert f"<config>: {path}: unknown key" in error_of(text)


def test_bad_duration_names_its_path():
    msg = error_of("""
        dbs:
          - path: /data/app.db
            replicas:
              - url: file:///backups/a
              - url: file:///backups/b
                retention: 7 days
    """)
    assert "dbs[0].replicas[1].retention: not a duration" in msg
    assert "7 days" in msg


@pytest.mark.parametrize("text, needle", [
    ("dbs:\n- path: /a.db\n  monitor-interval: soon\n  replicas: [{url: file:///b}]", "dbs[0].monitor-interval: not a duration"),
    ("dbs:\n- path: /a.db\n  replicas: [{url: file:///b, sync-interval: fast}]", "dbs[0].replicas[0].sync-interval: not a duration"),
    ("dbs:\n- path: /a.db\n  min-checkpoint-page-count: 0\n  replicas: [{url: file:///b}]", "dbs[0].min-checkpoint-page-count: expected an integer >= 1"),
    ("dbs:\n- path: /a.db\n  snapshot-history-ratio: -1\n  replicas: [{url: file:///b}]", "dbs[0].snapshot-history-ratio: expected a number >= 0"),
    ("dbs:\n- path: /a.db\n  snapshot-history-ratio: lots\n  replicas: [{url: file:///b}]", "dbs[0].snapshot-history-ratio: expected a number >= 0"),
    ("dbs:\n- path: /a.db\n  replicas: [{type: s3, bucket: b, force-path-style: yes please}]", "dbs[0].replicas[0].force-path-style: expected true or false"),
    ("dbs:\n- path: /a.db\n  replicas: [{type: s3, bucket: b, part-size: 1024}]", "dbs[0].replicas[0].part-size: expected an integer"),
    ("dbs:\n- path: /a.db\n  replicas: [{type: gcs, bucket: b}]", "dbs[0].replicas[0].type: unsupported replica type"),
    ("dbs:\n- path: /a.db\n  replicas: [{type: s3, url: file:///b}]", "dbs[0].replicas[0].type: 's3' contradicts url scheme 'file'"),
    ("dbs:\n- path: /a.db\n  replicas: [{type: s3}]", "dbs[0].replicas[0].bucket: missing"),
    ("dbs:\n- path: /a.db\n  replicas: [{type: file}]", "dbs[0].replicas[0].path: missing"),
    ("dbs:\n- path: /a.db\n  replicas: [{url: ftp://host/x}]", "dbs[0].replicas[0].url: unsupported replica URL scheme 'ftp'"),
    ("dbs:\n- path: /a.db\n  replicas: [{url: file://host/x}]", "dbs[0].replicas[0].url: file URLs take an absolute path"),
    ("dbs:\n- path: /a.db\n  replicas: [{url: 's3://AK:SK@bucket/x'}]", "dbs[0].replicas[0].url: credentials do not belong"),
    ("dbs:\n- path: /a.db\n  replicas: [{url: file:///b}, {url: file:///c}, {url: file:///d, name: file}]",
     "dbs[0].replicas[2].name: duplicate replica name 'file'"),
    ("dbs:\n- path: /a.db\n  replicas: [{url: file:///b}]\n- path: /a.db\n  replicas: [{url: file:///c}]", "dbs[1].path: duplicate database"),
    ("dbs:\n- replicas: [{url: file:///b}]", "dbs[0].path: missing"),
    ("dbs:\n- path: /a.db", "dbs[0].replicas: expected a non-empty list"),
    ("dbs:\n- path: /a.db\n  replicas: []", "dbs[0].replicas: expected a non-empty list"),
    ("dbs:\n- path: /a.db\n  replica: {url: file:///b}\n  replicas: [{url: file:///c}]", "dbs[0]: use either replica or replicas"),
    ("{}", "dbs: missing"),
    ("", "dbs: missing"),
    ("dbs: {path: /a.db}", "dbs: expected a non-empty list"),
    ("- just\n- a list", "(top level): expected a mapping"),
    ("dbs:\n- /a.db", "dbs[0]: expected a mapping"),
    ("dbs:\n- path: 5\n  replicas: [{url: file:///b}]", "dbs[0].path: expected a non-empty string"),
])
def test_validation_errors_name_their_path(text, needle):
    assert needle in error_of(text)


def test_s3_url_without_a_bucket():
    assert "dbs[0].replicas[0].url: S3 URL without a bucket" in error_of(
        "dbs:\n- path: /a.db\n  replicas: [{url: 's3://'}]")
    with pytest.raises(ConfigError, match="without a bucket"):
        replica_from_url("s3:///prefix")


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text("dbs:\n  - path: /a.db\n    replicas: [url: file:///b\n  - path: x\n")
    with pytest.raises(ConfigError) as exc:
        load(path, environ={})
    msg = str(exc.value)
    assert msg.startswith(f"{path}: YAML syntax error at line 4, column ")
    assert "\n" not in msg


@pytest.mark.parametrize("text, line", [
    ("dbs:\n- path: /a.db\n  bad indent: x\n    y: z\n", 4),
    ("a: b: c\n", 1),
])
def test_yaml_syntax_error_line_number(text, line):
    assert f"<config>: YAML syntax error at line {line}, column " in error_of(text)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found") as exc:
        load(tmp_path / "nope.yml", environ={})
    assert str(tmp_path / "nope.yml") in str(exc.value)


def test_unreadable_path(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path, environ={})  # a directory


def test_long_form_s3_with_inherited_credentials():
    cfg = parse(yml("""
        access-key-id: AKIATOPLEVEL
        secret-access-key: top-level-secret
        dbs:
          - path: /data/app.db
            replicas:
              - type: s3
                bucket: backups
                path: /prod/app/
                endpoint: http://127.0.0.1:9000
                region: eu-west-1
                force-path-style: true
              - type: s3
                name: other
                bucket: backups2
                endpoint: http://minio:9000
                access-key-id: AKIAOWN
                secret-access-key: own-secret
              - type: s3
                name: vhost
                bucket: backups3
                endpoint: http://minio:9000
                force-path-style: false
    """), environ={})
    a, b, c = cfg.dbs[0].replicas
    assert (a.type, a.name, a.url) == ("s3", "s3", "s3://backups/prod/app")
    assert (a.s3.bucket, a.s3.prefix, a.s3.endpoint, a.s3.region, a.s3.force_path_style) == (
        "backups", "prod/app", "http://127.0.0.1:9000", "eu-west-1", True)
    assert (a.s3.access_key_id, a.s3.secret_access_key) == ("AKIATOPLEVEL", "top-level-secret")
    assert a.sync_interval_s == DEFAULT_S3_SYNC_INTERVAL_S
    assert (b.s3.access_key_id, b.s3.secret_access_key) == ("AKIAOWN", "own-secret")
    assert b.s3.force_path_style is True  # a custom endpoint implies path style...
    assert c.s3.force_path_style is False  # ...unless the file says otherwise
    assert b.url == "s3://backups2"
    text = repr(cfg)
    for secret in ("AKIATOPLEVEL", "top-level-secret", "AKIAOWN", "own-secret"):
        assert secret not in text


def test_url_form_takes_overrides_and_credentials():
    cfg = parse(yml("""
        dbs:
          - path: /data/app.db
            replicas:
              - url: s3://bucket/pre/fix
                endpoint: http://localhost:8333
                region: us-east-2
                access-key-id: AK
                secret-access-key: SK
                sync-interval: 10s
    """), environ={})
    r = cfg.dbs[0].replicas[0]
    assert (r.s3.bucket, r.s3.prefix, r.s3.endpoint, r.s3.region) == ("bucket", "pre/fix", "http://localhost:8333", "us-east-2")
    assert r.s3.force_path_style is True
    assert (r.s3.access_key_id, r.s3.secret_access_key) == ("AK", "SK")
    assert r.sync_interval_s == 10.0


def test_file_replicas_and_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse(yml("""
        dbs:
          - path: app.db
            min-checkpoint-page-count: 500
            busy-timeout: 2s
            snapshot-history-ratio: 0.5
            replicas:
              - path: backups/app
              - url: file:///srv/backups/app
          - path: /data/other.db
            replica:
              url: /mnt/backups/other
    """), environ={})
    app, other = cfg.dbs
    assert app.path == str(tmp_path / "app.db")
    assert (app.min_checkpoint_page_count, app.busy_timeout_s, app.snapshot_history_ratio) == (500, 2.0, 0.5)
    assert other.snapshot_history_ratio == config.DEFAULT_SNAPSHOT_HISTORY_RATIO
    a, b = app.replicas
    assert (a.type, a.name, a.path, a.url) == ("file", "file", str(tmp_path / "backups/app"),
                                               f"file://{tmp_path / 'backups/app'}")
    assert (b.name, b.path) == ("file1", "/srv/backups/app")
    assert a.retention_s == config.DEFAULT_RETENTION_S
    assert a.sync_interval_s == config.DEFAULT_FILE_SYNC_INTERVAL_S
    assert other.replicas[0].path == "/mnt/backups/other"


@pytest.mark.parametrize("text, where, why", [
    ("mcp-addr: ':3001'\n", "mcp-addr", "does not implement yet"),
    ("dbs:\n- path: /a.db\n  meta-path: /x\n  replicas: [{url: file:///b}]", "dbs[0].meta-path", "does not implement"),
    ("dbs:\n- path: /a.db\n  max-checkpoint-page-count: 10000\n  replicas: [{url: file:///b}]",
     "dbs[0].max-checkpoint-page-count", "no emergency TRUNCATE"),
    ("dbs:\n- path: /a.db\n  replicas: [{url: file:///b, validation-interval: 6h}]",
     "dbs[0].replicas[0].validation-interval", "does not implement"),
    ("dbs:\n- path: /a.db\n  replicas: [{url: file:///b, age: {recipients: [x]}}]",
     "dbs[0].replicas[0].age.recipients[0]", "neither an age recipient"),
    ("dbs:\n- path: /a.db\n  replicas: [{url: file:///b, sse-kms-key-id: k}]",
     "dbs[0].replicas[0].sse-kms-key-id", "server-side encryption is for s3 replicas"),
])
def test_litestream_keys_not_implemented_are_refused_naming_the_key(text, where, why):
    """Never accepted and ignored: a user who configured encryption must not get plaintext."""
    with pytest.raises(ConfigError) as e:
        parse(text, environ={})
    assert f"{where}: " in str(e.value) and why in str(e.value)


def test_exec_is_litestreams_top_level_command_string():
    body = "dbs:\n- path: /a.db\n  replicas: [{url: file:///b}]\n"
    assert parse("exec: my-app --serve 'a b'\n" + body, environ={}).exec == "my-app --serve 'a b'"
    assert parse(body, environ={}).exec is None
    with pytest.raises(ConfigError) as e:
        parse("exec: [my-app]\n" + body, environ={})
    assert "exec: expected a non-empty string" in str(e.value)


@pytest.mark.parametrize("value, host, port", [
    ('":9090"', "", 9090), ("127.0.0.1:9090", "127.0.0.1", 9090), ("localhost:0", "localhost", 0),
    ('"[::1]:9090"', "::1", 9090), ("metrics.internal:9100", "metrics.internal", 9100),
])
def test_addr_is_parsed_at_load(value, host, port):
    cfg = parse(f"addr: {value}\ndbs:\n- path: /a.db\n  replicas: [{{url: file:///b}}]\n", environ={})
    assert cfg.addr == config.ListenAddr(host, port)
    assert str(cfg.addr) == value.strip('"')


def test_no_addr_serves_nothing():
    assert parse("dbs:\n- path: /a.db\n  replicas: [{url: file:///b}]\n", environ={}).addr is None


@pytest.mark.parametrize("value", ["9090", '"127.0.0.1"', '":99999"', '"host:port"', '"[nope]:1"',
                                   '"bad host:80"', "[1, 2]", "true"])
def test_bad_addr_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError) as e:
        parse(f"addr: {value}\ndbs:\n- path: /a.db\n  replicas: [{{url: file:///b}}]\n", environ={})
    assert "addr: " in str(e.value) and "\n" not in str(e.value)


def test_config_is_frozen():
    cfg = parse(RUNBOOK, environ={})
    with pytest.raises(AttributeError):
        cfg.dbs[0].replicas[0].retention_s = 1  # type: ignore[misc]


@pytest.mark.parametrize("url, kind, where", [
    ("file:///backups/app", "file", "/backups/app"),
    ("/backups/app", "file", "/backups/app"),
    ("s3://bucket", "s3", "bucket"),
    ("s3://bucket/a/b/", "s3", "bucket"),
])
def test_replica_from_url(url, kind, where):
    r = replica_from_url(url)
    assert r.type == kind
    assert (r.path if kind == "file" else r.s3.bucket) == where
    if kind == "s3":
        assert r.url == url.rstrip("/")


def test_a_secret_in_a_replica_url_is_never_echoed():
    with pytest.raises(ConfigError) as e:
        replica_from_url("s3://AKIAEXAMPLE:very-secret-value@bucket/prefix")
    assert "very-secret-value" not in str(e.value) and "AKIAEXAMPLE" not in str(e.value)
    assert "s3://***@bucket/prefix" in str(e.value) and "credentials do not belong in the URL" in str(e.value)


def _cfg_file(tmp_path, text, mode):
    p = tmp_path / "replicator.yml"
    p.write_text(text)
    os.chmod(p, mode)
    return p


_WITH_SECRET = ("dbs:\n  - path: /data/app.db\n    replicas:\n      - url: s3://bucket/app\n"
                "        secret-access-key: wJalrXUtnFEMI/K7MDENG\n")
_FROM_ENV = _WITH_SECRET.replace("wJalrXUtnFEMI/K7MDENG", "$AWS_SECRET_ACCESS_KEY")


@pytest.mark.parametrize("text,mode,warned", [
    (_WITH_SECRET, 0o644, True), (_WITH_SECRET, 0o640, True), (_WITH_SECRET, 0o600, False),
    (_FROM_ENV, 0o644, False),
])
def test_a_config_holding_secrets_readable_by_others_is_warned_about(tmp_path, caplog, text, mode, warned):
    caplog.set_level("WARNING")
    config.load(_cfg_file(tmp_path, text, mode), environ={"AWS_SECRET_ACCESS_KEY": "x"})
    lines = [r.getMessage() for r in caplog.records if "readable by others" in r.getMessage()]
    assert bool(lines) == warned
    assert all("wJalrXUtnFEMI" not in line for line in lines)  # the warning names no secret


# -- logging (Litestream's keys and the legacy log-level) ---------------------------------

_DBS = "dbs: [{path: /a.db, replicas: [{url: file:///b}]}]\n"


@pytest.mark.parametrize("text, want", [
    ("", ("info", "text", True)),
    ("logging: {level: debug, type: json, stderr: false}\n", ("debug", "json", False)),
    ("logging: {level: WARN}\n", ("warn", "text", True)),
    ("log-level: error\n", ("error", "text", True)),
    ("log-level: warning\nlogging: {level: warn, type: JSON}\n", ("warn", "json", True)),
])
def test_logging_keys(text, want):
    lg = parse(_DBS + text, environ={}).logging
    assert (lg.level, lg.type, lg.stderr) == want


@pytest.mark.parametrize("text, where", [
    ("logging: {level: loud}\n", "logging.level: expected debug, info, warn or error"),
    ("log-level: 3\n", "log-level: expected debug, info, warn or error"),
    ("logging: {type: xml}\n", "logging.type: expected text or json"),
    ("logging: {stderr: yes please}\n", "logging.stderr: expected true or false"),
    ("logging: {color: true}\n", "logging.color: unknown key"),
    ("logging: debug\n", "logging: expected a mapping"),
    ("log-level: info\nlogging: {level: debug}\n", "logging.level: contradicts log-level"),
])
def test_bad_logging_values_name_the_key(text, where):
    with pytest.raises(ConfigError) as e:
        parse(_DBS + text, environ={})
    assert where in str(e.value)


def test_the_configs_credentials_are_known_to_the_log_redaction():
    cfg = parse("access-key-id: AKIATOP\nsecret-access-key: top-secret\n"
                "dbs: [{path: /a.db, replicas: [{url: s3://b/a}, {url: s3://b/c, secret-access-key: own},"
                " {url: file:///d}]}]\n", environ={})
    assert set(cfg.secrets) == {"AKIATOP", "top-secret", "own"}


def test_s3_server_side_encryption_keys(tmp_path):
    import base64

    key = os.urandom(32)
    b64 = base64.b64encode(key).decode()
    base = "dbs:\n- path: /a.db\n  replicas:\n  - url: s3://b/p\n"
    r = parse(base + "    sse-customer-key: $K\n", environ={"K": b64}).dbs[0].replicas[0]
    assert (r.s3.sse_customer_key, r.s3.sse_customer_algorithm) == (key, "AES256")
    assert b64 not in repr(r) and repr(key) not in repr(r)
    path = tmp_path / "sse.key"
    path.write_text(b64 + "\n")
    r = parse(base + f"    sse-customer-key-path: {path}\n    sse-customer-algorithm: AES256\n", environ={}).dbs[0].replicas[0]
    assert r.s3.sse_customer_key == key
    r = parse(base + "    sse-kms-key-id: alias/backups\n", environ={}).dbs[0].replicas[0]
    assert r.s3.sse_kms_key_id == "alias/backups" and r.s3.sse_customer_key is None
    short = base64.b64encode(b"0123456789").decode()
    for extra, where, why in [
        (f"    sse-customer-key: {short}\n", "sse-customer-key", "not a base64-encoded 256-bit key"),
        ("    sse-customer-key: ''\n", "sse-customer-key", "unset $VAR"),
        (f"    sse-customer-key: {b64}\n    sse-customer-key-path: {path}\n", "sse-customer-key-path", "not both"),
        ("    sse-customer-key-path: /no/such/key\n", "sse-customer-key-path", "cannot read"),
        (f"    sse-customer-key: {b64}\n    sse-customer-algorithm: AES128\n", "sse-customer-algorithm", "not supported"),
        ("    sse-customer-algorithm: AES256\n", "sse-customer-algorithm", "needs sse-customer-key"),
        (f"    sse-customer-key: {b64}\n    sse-kms-key-id: k\n", "sse-kms-key-id", "not both"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse(base + extra, environ={})
        assert f"dbs[0].replicas[0].{where}: " in str(e.value) and why in str(e.value), str(e.value)
        assert b64 not in str(e.value) and short not in str(e.value)
