"""The fault proxy itself, in front of moto's server (and SeaweedFS, which checks signatures):
it forwards transparently, each fault does to a real S3 client what it says, and its
counters tell what happened, so fault tests can rely on them."""

from __future__ import annotations

import collections
import http.client
import io
import random
import threading
import time

import botocore.exceptions as bce
import pytest

from faultproxy import (
    ERROR,
    RESET_DOWNLOAD,
    RESET_UPLOAD,
    STALL,
    TRUNCATE,
    FaultProxy,
    Injected,
)
from integration.harness import wait_for
from replicator.storage.s3 import S3Storage

MIB = 1 << 20


@pytest.fixture
def s3(moto_server, make_bucket, fault_proxy):
    """(proxy, bucket, client through the proxy without retries, client straight to moto)."""
    bucket = make_bucket(moto_server).bucket
    proxy = fault_proxy(moto_server)
    return proxy, bucket, moto_server.client(proxy.url, attempts=1), moto_server.client()


def exists(client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except bce.ClientError as err:
        assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        return False


def test_forwards_every_verb_unchanged_and_counts_them(s3) -> None:
    proxy, bucket, via, direct = s3
    big = random.Random(1).randbytes(2 * MIB)
    via.put_object(Bucket=bucket, Key="small", Body=b"hello")
    via.put_object(Bucket=bucket, Key="big", Body=io.BytesIO(big))  # a stream: Expect: 100-continue
    assert via.get_object(Bucket=bucket, Key="big")["Body"].read() == big
    assert via.get_object(Bucket=bucket, Key="big", Range="bytes=10-19")["Body"].read() == big[10:20]
    assert via.head_object(Bucket=bucket, Key="small")["ContentLength"] == 5
    listed = via.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("big", 2 * MIB), ("small", 5)]
    via.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "small"}]})
    assert direct.get_object(Bucket=bucket, Key="big")["Body"].read() == big
    assert not exists(direct, bucket, "small")
    assert proxy.requests == collections.Counter({"PUT": 2, "GET": 3, "HEAD": 1, "POST": 1})
    assert proxy.injected == [] and proxy.faults() == 0


@pytest.mark.parametrize("code, status", [("InternalError", 500), ("SlowDown", 503),
                                          ("ServiceUnavailable", 503)])
def test_error_is_an_s3_xml_answer_and_never_reaches_the_server(s3, code: str, status: int) -> None:
    proxy, bucket, via, direct = s3
    proxy.inject(ERROR, method="PUT", times=1, code=code)
    with pytest.raises(bce.ClientError) as info:
        via.put_object(Bucket=bucket, Key="k", Body=b"x" * 1000)
    assert info.value.response["Error"]["Code"] == code
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert not exists(direct, bucket, "k")
    assert proxy.injected == [Injected(ERROR, "PUT", f"/{bucket}/k", forwarded=False, code=code)]
    via.put_object(Bucket=bucket, Key="k", Body=b"x" * 1000)  # times=1: the next one passes
    assert exists(direct, bucket, "k") and proxy.faults(ERROR, "PUT") == 1


def test_reset_upload_breaks_the_request_before_the_server_sees_it(s3) -> None:
    proxy, bucket, via, direct = s3
    proxy.inject(RESET_UPLOAD, method="PUT")
    with pytest.raises(bce.ConnectionClosedError):
        via.put_object(Bucket=bucket, Key="k", Body=b"x" * MIB)
    assert not exists(direct, bucket, "k")
    assert proxy.injected == [Injected(RESET_UPLOAD, "PUT", f"/{bucket}/k", forwarded=False)]


def test_reset_download_breaks_the_answer_after_the_server_acted(s3) -> None:
    proxy, bucket, via, direct = s3
    proxy.inject(RESET_DOWNLOAD, times=2)
    with pytest.raises(bce.ConnectionClosedError):  # a PUT's answer has no body: cut mid-status
        via.put_object(Bucket=bucket, Key="k", Body=b"x" * 100_000)
    assert exists(direct, bucket, "k"), "the PUT took effect although the client saw it fail"
    resp = via.get_object(Bucket=bucket, Key="k")  # the headers arrive, the body breaks off
    with pytest.raises(bce.ResponseStreamingError, match="ConnectionResetError"):
        resp["Body"].read()
    assert [(f.kind, f.method, f.forwarded) for f in proxy.injected] == [
        (RESET_DOWNLOAD, "PUT", True), (RESET_DOWNLOAD, "GET", True)]


def test_truncate_promises_the_whole_length_and_sends_half(s3) -> None:
    proxy, bucket, via, direct = s3
    data = random.Random(2).randbytes(10_000)
    direct.put_object(Bucket=bucket, Key="k", Body=data)
    proxy.inject(TRUNCATE, method="GET", path="/k", times=1)
    resp = via.get_object(Bucket=bucket, Key="k")
    assert resp["ContentLength"] == 10_000
    with pytest.raises(bce.ResponseStreamingError, match=r"IncompleteRead\(5000 bytes read, 5000 more"):
        resp["Body"].read()
    assert via.get_object(Bucket=bucket, Key="k")["Body"].read() == data
    assert proxy.faults(TRUNCATE) == 1


@pytest.mark.parametrize("forward", [True, False])
def test_stall_outlasts_the_clients_read_timeout(s3, moto_server, forward: bool) -> None:
    proxy, bucket, _, direct = s3
    impatient = moto_server.client(proxy.url, read_timeout=0.5, attempts=1)
    proxy.inject(STALL, method="PUT", times=1, stall_s=30, forward=forward)
    started = time.monotonic()
    with pytest.raises(bce.ReadTimeoutError):
        impatient.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert time.monotonic() - started < 5
    assert exists(direct, bucket, "k") == forward  # the ambiguous case: it may have landed
    assert proxy.injected == [Injected(STALL, "PUT", f"/{bucket}/k", forwarded=forward)]


def test_rules_match_method_path_and_times(s3) -> None:
    proxy, bucket, via, direct = s3
    for key in ("a", "b"):
        direct.put_object(Bucket=bucket, Key=key, Body=key.encode())
    rule = proxy.inject(ERROR, method="GET", path=f"/{bucket}/a", times=2)

    def get(key: str) -> str:
        try:
            return via.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        except bce.ClientError as err:
            return err.response["Error"]["Code"]

    assert [get("b"), get("a"), get("a"), get("a"), get("b")] == ["b", "InternalError", "InternalError", "a", "b"]
    via.put_object(Bucket=bucket, Key="a", Body=b"A")  # another method: not matched
    assert rule.injected == 2 and rule.exhausted
    assert proxy.requests == collections.Counter({"GET": 5, "PUT": 1})
    proxy.inject(ERROR, path="list-type=2")  # the query string is part of what `path` matches
    with pytest.raises(bce.ClientError):
        via.list_objects_v2(Bucket=bucket)
    assert get("a") == "A"
    proxy.clear()
    assert [o["Key"] for o in via.list_objects_v2(Bucket=bucket)["Contents"]] == ["a", "b"]
    assert proxy.faults(ERROR, "GET") == 3


def test_a_fraction_is_drawn_from_the_rules_own_seed(s3) -> None:
    proxy, bucket, via, direct = s3
    direct.put_object(Bucket=bucket, Key="k", Body=b"v")
    proxy.inject(ERROR, method="GET", fraction=0.3, seed=5)
    outcomes = []
    for _ in range(30):
        try:
            via.get_object(Bucket=bucket, Key="k")["Body"].read()
            outcomes.append(False)
        except bce.ClientError:
            outcomes.append(True)
    rng = random.Random(5)
    assert outcomes == [rng.random() < 0.3 for _ in range(30)]
    assert 0 < sum(outcomes) < 30 and proxy.faults(ERROR) == sum(outcomes)


def test_close_ends_stalls_and_kept_alive_connections(moto_server) -> None:
    proxy = FaultProxy(moto_server.endpoint)
    host, port = proxy.url.removeprefix("http://").split(":")
    idle = http.client.HTTPConnection(host, int(port), timeout=30)
    idle.request("GET", "/")  # answered, then kept alive: its handler waits for more
    idle.getresponse().read()
    proxy.inject(STALL, stall_s=60)
    stalled = http.client.HTTPConnection(host, int(port), timeout=30)
    outcome: list[BaseException | None] = []

    def request() -> None:
        try:
            stalled.request("GET", "/")
            stalled.getresponse()
            outcome.append(None)
        except (OSError, http.client.HTTPException) as err:
            outcome.append(err)

    thread = threading.Thread(target=request)
    thread.start()
    try:
        wait_for(lambda: proxy.faults(STALL) == 1, 10, "the request to stall")
        started = time.monotonic()
        proxy.close()
        assert time.monotonic() - started < 5, "close() waited for the stall"
        thread.join(10)
        assert not thread.is_alive() and isinstance(outcome[0], http.client.RemoteDisconnected)
    finally:
        proxy.close()
        idle.close()
        stalled.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "explode"}, "unknown fault kind"),
    ({"kind": ERROR, "code": "Teapot"}, "unknown error code"),
    ({"kind": ERROR, "fraction": 1.5}, "fraction must be within"),
    ({"kind": ERROR, "times": -1}, "times must be >= 0"),
])
def test_bad_rules_are_refused(moto_server, fault_proxy, kwargs: dict, message: str) -> None:
    proxy = fault_proxy(moto_server)
    with pytest.raises(ValueError, match=message):
        proxy.inject(**kwargs)
    with pytest.raises(ValueError, match="upstream must be"):
        FaultProxy("https://127.0.0.1")


@pytest.mark.seaweedfs
def test_signed_requests_pass_through_to_seaweedfs(seaweedfs_server, make_bucket, fault_proxy) -> None:
    """SeaweedFS verifies signatures (Host included): the proxy must not disturb them."""
    import dataclasses

    opts = make_bucket(seaweedfs_server)
    proxy = fault_proxy(seaweedfs_server)
    storage = S3Storage(dataclasses.replace(opts, endpoint=proxy.url))
    data = random.Random(3).randbytes(3 * MIB)
    storage.put("a/big", io.BytesIO(data))
    storage.put_if_absent("a/lease", b"{}")
    assert storage.get("a/big") == data
    assert [o.key for o in storage.list("a/")] == ["a/big", "a/lease"]
    storage.delete_many(["a/lease"])
    assert storage.stat("a/big").size == 3 * MIB
    assert proxy.requests["PUT"] == 2 and proxy.requests["POST"] == 1 and proxy.injected == []
