"""S3-specific behaviour: error translation (never leaking credentials), retries, multipart."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from replicator.config import S3Options
import botocore.exceptions as bce
import urllib3.exceptions

from replicator.storage import (
    NotFound,
    Permanent,
    PreconditionFailed,
    RetryingStorage,
    Throttled,
    Transient,
    Unsupported,
)
from replicator.storage import s3 as s3_module
from replicator.storage.s3 import S3Storage

MIB = 1 << 20
SERVERS = ["moto_server", pytest.param("seaweedfs_server", marks=pytest.mark.seaweedfs)]


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_no_secrets(err: BaseException, options: S3Options) -> None:
    text = f"{err} {err!r} {getattr(err, 'hint', '')}"
    for secret in (options.access_key_id, options.secret_access_key):
        assert secret and secret not in text
    assert err.__cause__ is None and err.__suppress_context__  # no botocore chain in tracebacks


@pytest.mark.parametrize("server_fixture", SERVERS)
def test_missing_bucket_is_permanent_and_named(request, server_fixture: str) -> None:
    server = request.getfixturevalue(server_fixture)
    options = server.options("no-such-bucket-4c1f", prefix="some/prefix")
    storage = S3Storage(options)
    for op in (lambda: storage.put("k", b"x"), lambda: storage.get("k"), lambda: list(storage.list())):
        with pytest.raises(Permanent) as info:
            op()
        assert "s3://no-such-bucket-4c1f/some/prefix: no such bucket" in str(info.value)
        assert_no_secrets(info.value, options)


@pytest.mark.seaweedfs
@pytest.mark.parametrize("change", ["secret_access_key", "access_key_id"])
def test_wrong_credentials_are_permanent_without_secrets(seaweedfs_server, make_bucket, change: str) -> None:
    good = make_bucket(seaweedfs_server)
    bad = dataclasses.replace(good, **{change: "WRONG" + getattr(good, change)[5:]})
    storage = S3Storage(bad)
    for op in (lambda: storage.put("k", b"x"), lambda: storage.get("k"), lambda: list(storage.list())):
        with pytest.raises(Permanent) as info:
            op()
        assert str(info.value).startswith(f"s3://{good.bucket}/replica: access denied")
        assert_no_secrets(info.value, bad)
        assert_no_secrets(info.value, good)


def unreachable_options(port: int) -> S3Options:
    return S3Options(bucket="bucket", prefix="p", endpoint=f"http://127.0.0.1:{port}", force_path_style=True,
                     access_key_id="AKIDUNREACHABLE", secret_access_key="unreachable-secret")


def test_unreachable_endpoint_is_transient() -> None:
    port = closed_port()
    options = unreachable_options(port)
    storage = S3Storage(options)
    for op in (lambda: storage.put("k", b"x"), lambda: storage.get("k"), lambda: storage.stat("k"),
               lambda: list(storage.list()), lambda: storage.put_if_absent("k", b"x")):
        with pytest.raises(Transient) as info:
            op()
        assert f"cannot connect to http://127.0.0.1:{port}" in str(info.value)
        assert_no_secrets(info.value, options)


def test_retrying_storage_rides_out_an_outage(moto_server) -> None:
    """The endpoint refuses connections until the second back-off, then a server appears."""
    from moto.server import ThreadedMotoServer

    port = closed_port()
    sleeps: list[float] = []
    late: list[ThreadedMotoServer] = []

    def sleep(delay: float) -> None:
        sleeps.append(delay)
        if len(sleeps) == 2:
            late.append(ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False))
            late[0].start()
            dataclasses.replace(moto_server, endpoint=f"http://127.0.0.1:{port}").client().create_bucket(
                Bucket="bucket")

    storage = RetryingStorage(S3Storage(unreachable_options(port)), attempts=5, sleep=sleep)
    try:
        storage.put("k", io.BytesIO(b"payload"))
        assert storage.get("k") == b"payload"
        assert len(sleeps) == 2 and storage.requests["put"] == 3
    finally:
        for server in late:
            server.stop()

    gone = RetryingStorage(S3Storage(unreachable_options(closed_port())), attempts=3, sleep=sleeps.append)
    with pytest.raises(Transient):
        gone.get("k")
    assert gone.requests["get"] == 3


@pytest.mark.parametrize("server_fixture", SERVERS)
def test_multipart_is_parallel_bounded_and_complete(request, make_bucket, server_fixture: str) -> None:
    server = request.getfixturevalue(server_fixture)
    options = make_bucket(server, part_size=5 * MIB, concurrency=2)
    storage = S3Storage(options)
    lock, counts = threading.Lock(), {"read": 0, "sent": 0, "peak": 0}

    class Counting(io.RawIOBase):
        def __init__(self, data: bytes):
            self.src = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
            n = self.src.readinto(buf)
            with lock:
                counts["read"] += n
                counts["peak"] = max(counts["peak"], counts["read"] - counts["sent"])
            return n

    upload_part = storage._client.upload_part

    def counting_upload_part(**kwargs):  # type: ignore[no-untyped-def]
        result = upload_part(**kwargs)
        with lock:
            counts["sent"] += len(kwargs["Body"])
        return result

    storage._client.upload_part = counting_upload_part
    data = os.urandom(26 * MIB)
    storage.put("big", io.BufferedReader(Counting(data)))
    assert storage.get("big") == data
    assert re.fullmatch(r'"[0-9a-f]{32}-6"', storage.stat("big").etag or "")  # 6 parts
    assert counts["peak"] <= 3 * 5 * MIB  # concurrency + 1 parts in memory
    assert not server.client().list_multipart_uploads(Bucket=options.bucket).get("Uploads")


@pytest.mark.parametrize("server_fixture", SERVERS)
def test_failed_multipart_is_aborted(request, make_bucket, server_fixture: str) -> None:
    server = request.getfixturevalue(server_fixture)
    options = make_bucket(server, part_size=5 * MIB, concurrency=2)
    storage = S3Storage(options)

    class Failing(io.RawIOBase):
        sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
            if self.sent >= 12 * MIB:
                raise ValueError("source went away")
            buf[:] = b"x" * len(buf)
            self.sent += len(buf)
            return len(buf)

    with pytest.raises(ValueError, match="source went away"):
        storage.put("partial", Failing())
    assert not server.client().list_multipart_uploads(Bucket=options.bucket).get("Uploads")
    with pytest.raises(NotFound):
        storage.stat("partial")


@pytest.mark.seaweedfs
def test_seaweedfs_restart_keeps_data(seaweedfs_server, make_bucket) -> None:
    """The outage fixture contract: stop() makes requests fail Transient, start() restores data."""
    storage = S3Storage(make_bucket(seaweedfs_server))
    storage.put("k", b"durable")
    seaweedfs_server.stop()
    try:
        with pytest.raises(Transient):
            storage.get("k")
    finally:
        seaweedfs_server.start()
    assert storage.get("k") == b"durable"


def client_error(code: str, status: int) -> bce.ClientError:
    return bce.ClientError({"Error": {"Code": code, "Message": "AKIDSECRET leaked?"},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize("err, expected", [
    (client_error("NoSuchKey", 404), NotFound),
    (client_error("404", 404), NotFound),
    (client_error("PreconditionFailed", 412), PreconditionFailed),
    (client_error("ConditionalRequestConflict", 409), PreconditionFailed),
    (client_error("SlowDown", 503), Throttled),
    (client_error("503", 503), Throttled),
    (client_error("InternalError", 500), Transient),
    (client_error("502", 502), Transient),
    (client_error("RequestTimeout", 400), Transient),
    (client_error("AccessDenied", 403), Permanent),
    (client_error("InvalidArgument", 400), Permanent),
    (bce.ReadTimeoutError(endpoint_url="http://x"), Transient),
    (bce.ConnectTimeoutError(endpoint_url="http://x"), Transient),
    (bce.ConnectionClosedError(endpoint_url="http://x"), Transient),
    (bce.EndpointConnectionError(endpoint_url="http://x"), Transient),
    (urllib3.exceptions.ProtocolError("reset"), Transient),
    (ConnectionResetError(104, "reset"), Transient),
    (bce.NoCredentialsError(), Permanent),
])
def test_error_translation(err: Exception, expected: type) -> None:
    storage = S3Storage(unreachable_options(1))
    translated = storage._translate(err, "k")
    assert type(translated) is expected or (expected is Permanent and isinstance(translated, Permanent))
    assert "AKIDSECRET" not in str(translated) and "unreachable-secret" not in str(translated)


def test_a_store_without_conditional_writes_is_reported_not_emulated(
        moto_without_conditional_writes, make_bucket, caplog) -> None:
    """A 501 to If-Match / If-None-Match: Unsupported, remembered, nothing written. No HEAD
    then PUT in its place: two writers could both pass that check."""
    server = moto_without_conditional_writes
    storage = RetryingStorage(S3Storage(make_bucket(server)), sleep=lambda s: None)
    assert storage.conditional_writes
    refused = server.refused
    with pytest.raises(Unsupported):
        storage.put_if_match("cas", b"v1", None)
    assert "no conditional writes" in caplog.text
    assert not storage.conditional_writes and server.refused == refused + 1
    assert storage.requests == {"put": 1}  # Permanent: not retried
    with pytest.raises(Unsupported):
        storage.put_if_match("cas", b"v1", '"00000000000000000000000000000000"')
    with pytest.raises(Unsupported):
        storage.put_if_absent("once", b"1")
    assert server.refused == refused + 1  # learned once, then remembered
    assert list(storage.list()) == []
    storage.put("plain", b"x")  # unconditional writes are what the store has
    assert storage.get("plain") == b"x"


def test_region_and_credentials_resolution(monkeypatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    opts = unreachable_options(1)
    assert S3Storage(opts)._client.meta.region_name == "eu-central-1"
    assert S3Storage(dataclasses.replace(opts, region="ap-south-1"))._client.meta.region_name == "ap-south-1"
    monkeypatch.delenv("AWS_REGION")
    assert S3Storage(opts)._client.meta.region_name == "us-east-1"
    with pytest.raises(Permanent, match="must be given together"):
        S3Storage(dataclasses.replace(opts, secret_access_key=None))


def test_the_model_loader_checks_a_service_without_listing_every_one(monkeypatch) -> None:
    """botocore lists its ~450 services before loading one model (0.06-0.2 s of each
    process's start); ours answers `in` from the service's own directory."""
    import botocore.loaders

    from replicator.storage.s3 import _Loader

    listed: list[str] = []
    full = botocore.loaders.Loader.list_available_services
    monkeypatch.setattr(botocore.loaders.Loader, "list_available_services",
                        lambda self, type_name: listed.append(type_name) or full(self, type_name))
    names = _Loader().list_available_services("service-2")
    assert "s3" in names and "sts" in names and "sso-oidc" in names
    assert "no-such-service" not in names and "../s3" not in names and "" not in names
    assert listed == []  # none of that listed every service
    assert "s3" in list(names) and len(names) > 100 and listed  # iterating still lists them all
    session = s3_module._session()
    client = session.create_client("s3", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
    assert client.meta.service_model.service_name == "s3"
    with pytest.raises(bce.UnknownServiceError):
        session.create_client("no-such-service", region_name="us-east-1")


def test_only_storage_imports_boto() -> None:
    root = Path(__file__).resolve().parent.parent / "replicator"
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.parent.name != "storage" and re.search(r"^\s*(import|from)\s+(boto3|botocore)",
                                                             p.read_text(), re.M)]
    assert offenders == []


def test_read_timeout_comes_from_the_environment_when_set(monkeypatch) -> None:
    from replicator.storage import s3

    opts = unreachable_options(1)
    monkeypatch.delenv(s3.READ_TIMEOUT_ENV, raising=False)
    assert S3Storage(opts)._client.meta.config.read_timeout == s3.READ_TIMEOUT_S
    for raw, seconds in (("1.5", 1.5), ("250ms", 0.25), ("2m", 120.0), ("  ", s3.READ_TIMEOUT_S)):
        monkeypatch.setenv(s3.READ_TIMEOUT_ENV, raw)
        assert S3Storage(opts)._client.meta.config.read_timeout == seconds, raw


@pytest.mark.parametrize("raw", ["soon", "0", "0s", "-1", "1 s", "nan", "inf"])
def test_bad_read_timeout_is_a_config_error_naming_the_variable(monkeypatch, raw: str) -> None:
    from replicator.errors import ConfigError
    from replicator.storage import s3

    monkeypatch.setenv(s3.READ_TIMEOUT_ENV, raw)
    with pytest.raises(ConfigError) as info:
        S3Storage(unreachable_options(1))
    assert str(info.value).startswith(f"{s3.READ_TIMEOUT_ENV}: expected a positive duration")
    assert repr(raw) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("kind, kwargs, ops", [
    ("error", {"code": "InternalError"}, "put get open list stat"),
    ("reset-upload", {}, "put get list"),
    ("reset-download", {}, "put get open list stat"),
    ("truncate", {}, "put get open list stat"),
    ("stall", {"stall_s": 30}, "put list"),
], ids=["internal-error", "reset-upload", "reset-download", "truncate", "stall"])
def test_every_injected_fault_is_transient(moto_server, make_bucket, fault_proxy, monkeypatch,
                                           kind: str, kwargs: dict, ops: str) -> None:
    """What the shipper relies on: whatever the network does to a request, S3Storage raises
    Transient, never a botocore error or a Permanent one. (SlowDown -> Throttled is in
    test_error_translation: through the proxy botocore's throttling backoff costs seconds.)"""
    from replicator.storage import s3

    monkeypatch.setenv(s3.READ_TIMEOUT_ENV, "0.2")
    opts = make_bucket(moto_server)
    proxy = fault_proxy(moto_server)
    storage = S3Storage(dataclasses.replace(opts, endpoint=proxy.url))
    storage.put("k", os.urandom(20_000))
    calls = {"put": ("PUT", lambda: storage.put("k", os.urandom(20_000))),
             "get": ("GET", lambda: storage.get("k")),
             "open": ("GET", lambda: storage.open("k").read()),
             "list": ("GET", lambda: list(storage.list())),
             "stat": ("HEAD", lambda: storage.stat("k"))}
    for op in ops.split():
        method, call = calls[op]
        before = proxy.faults(kind)
        proxy.inject(kind, method=method, **kwargs)
        with pytest.raises(Transient) as info:
            call()
        proxy.clear()
        assert proxy.faults(kind) > before, op
        assert_no_secrets(info.value, opts)
        assert str(info.value).startswith("s3://"), info.value
    assert storage.stat("k").size == 20_000


# -- server-side encryption ------------------------------------------------------------------


def _record_requests(storage: S3Storage) -> list[tuple[str, dict[str, str]]]:
    """(operation, headers) of every request the client sends, as sent."""
    seen: list[tuple[str, dict[str, str]]] = []

    def hook(request: object, event_name: str, **_: object) -> None:
        headers = {k: v.decode() if isinstance(v, bytes) else v
                   for k, v in request.headers.items()}  # type: ignore[attr-defined]
        seen.append((event_name.rsplit(".", 1)[-1], headers))

    storage._client.meta.events.register("before-send.s3", hook)
    return seen


def _exercise(storage: S3Storage) -> None:
    storage.put("a", b"small")
    storage.put("big", io.BytesIO(os.urandom(11 * MIB)))  # multipart: 3 parts of 5 MiB
    storage.put_if_absent("lease", b"{}")
    assert storage.get("a") == b"small"
    with storage.open("a", 1, 3) as f:
        assert f.read() == b"mal"
    assert len(storage.get("big")) == 11 * MIB
    assert storage.stat("a").size == 5


def test_sse_c_key_goes_with_every_object_request_and_never_into_logs(moto_server, make_bucket, caplog):
    import base64
    import hashlib
    import logging

    key = os.urandom(32)
    storage = S3Storage(make_bucket(moto_server, sse_customer_key=key, part_size=5 * MIB))
    seen = _record_requests(storage)
    caplog.set_level(logging.DEBUG)
    _exercise(storage)
    md5 = base64.b64encode(hashlib.md5(key).digest()).decode()
    body_ops = {"PutObject", "GetObject", "HeadObject", "CreateMultipartUpload", "UploadPart",
                "CompleteMultipartUpload"}
    ops = {op for op, _ in seen}
    assert body_ops <= ops
    for op, headers in seen:
        if op in body_ops:
            assert headers.get("x-amz-server-side-encryption-customer-algorithm") == "AES256", op
            assert headers.get("x-amz-server-side-encryption-customer-key-MD5") == md5, op
    secret = base64.b64encode(key).decode()
    assert secret not in caplog.text and key.hex() not in caplog.text
    assert "sse_customer_key" not in repr(storage) and secret not in repr(make_bucket)


def test_sse_kms_key_id_goes_with_every_write(moto_server, make_bucket):
    import boto3

    kms = boto3.client("kms", endpoint_url=moto_server.endpoint, region_name=moto_server.region,
                       aws_access_key_id=moto_server.access_key, aws_secret_access_key=moto_server.secret_key)
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    opts = make_bucket(moto_server, sse_kms_key_id=key_id, part_size=5 * MIB)
    storage = S3Storage(opts)
    seen = _record_requests(storage)
    _exercise(storage)
    for op, headers in seen:
        writes = op in ("PutObject", "CreateMultipartUpload")
        assert (headers.get("x-amz-server-side-encryption-aws-kms-key-id") == key_id) == writes, op
    client = moto_server.client()
    for name in ("a", "big", "lease"):
        head = client.head_object(Bucket=opts.bucket, Key=f"{opts.prefix}/{name}")
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_id), name
