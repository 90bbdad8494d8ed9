"""S3 replicas for the RPO rows: SeaweedFS on 127.0.0.1, the same server the tests start
(tests/s3servers.py), and the replica block both tools' YAML configs take (Litestream keys)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Any, Iterator

TESTS = Path(__file__).resolve().parent.parent / "tests"
BUCKET = "bench"


def weed_binary() -> Path:
    return Path(sys.executable).parent / "weed"


@dataclasses.dataclass
class S3Target:
    """One replica location: a prefix in the bench bucket."""

    server: Any
    prefix: str
    bucket: str = BUCKET

    def replica_yaml(self, indent: str = "      ") -> str:
        s = self.server
        lines = ["- type: s3", f"  bucket: {self.bucket}", f"  path: {self.prefix}", f"  endpoint: {s.endpoint}",
                 f"  region: {s.region}", "  force-path-style: true", f"  access-key-id: {s.access_key}",
                 f"  secret-access-key: {s.secret_key}"]
        return "".join(f"{indent}{line}\n" for line in lines)

    def keys(self) -> list[str]:
        client, out, token = self.server.client(), [], None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": self.prefix + "/"}
            if token:
                kw["ContinuationToken"] = token
            page = client.list_objects_v2(**kw)
            out += [o["Key"] for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return out


@contextlib.contextmanager
def seaweedfs(root: Path, metrics: bool = False) -> Iterator[Any]:
    """A running SeaweedFS with the bench bucket; stopped (and its sockets removed) after.
    metrics=True: its request counters can be read (`server.s3_requests()`)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from s3servers import SeaweedFS

    root.mkdir(parents=True, exist_ok=True)
    server = SeaweedFS(weed_binary(), root, metrics=metrics)
    try:
        server.start()
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.cleanup()
