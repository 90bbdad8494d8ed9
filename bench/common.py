"""Settings, the work directory, result collection and the pieces every section uses."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import procs
from .tools import BENCH_DIR, Tool

WORK = BENCH_DIR / "work"
SNAPSHOT_TIMEOUT_S = 300.0
_base = [WORK]


def run_base() -> Path:
    """This invocation's own directory under bench/work/ (concurrent runs must not share one)."""
    return _base[0]


def new_run_base() -> Path:
    d = WORK / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    d.mkdir(parents=True, exist_ok=True)
    _base[0] = d
    return d


@dataclasses.dataclass
class Settings:
    """Durations and sizes of one run; `quick()` scales everything down for a ~5 minute run."""

    rpo_runs: int = 5
    rpo_rates: tuple[int, ...] = (500, 5000, 0)  # 0 = flat out
    rpo_write_s: tuple[float, float] = (2.0, 5.0)  # writer runs a random time in this range
    rpo_s3_rates: tuple[int, ...] = (500, 5000)  # the same, to an S3 replica (SeaweedFS)
    impact_s: float = 20.0
    impact_rounds: int = 2
    cpu_rate: int = 5000
    cpu_rate_s: float = 20.0
    idle_s: float = 30.0
    restore_size_mb: int = 1024
    history_factors: tuple[float, ...] = (1.0, 2.0)  # WAL written after the snapshot, x db size
    pitr_s: float = 10.0
    pitr_rate: int = 500
    pitr_targets: int = 10
    requests_idle_s: float = 120.0  # S3 requests counted with no writes
    requests_load_s: float = 60.0  # ... and with the writer at requests_rate
    requests_rate: int = 500
    requests_rounds: int = 1
    sim_days: int = 60  # 7. simulated days of replication and compaction on S3
    sim_step_min: int = 15
    sim_tx_per_step: int = 5
    sim_pass_every_h: int = 6
    workloads_s: float = 30.0  # 8. issue 14's workloads: seconds of writes per row and tool
    seed: int = 7
    profile: bool = False

    @classmethod
    def quick(cls) -> "Settings":
        return cls(rpo_runs=2, rpo_rates=(500, 5000, 0), rpo_write_s=(1.0, 2.5), impact_s=5.0,
                   impact_rounds=1, cpu_rate_s=5.0, idle_s=10.0, restore_size_mb=96,
                   history_factors=(1.0, 3.0), pitr_s=5.0, pitr_targets=5, requests_idle_s=20.0,
                   requests_load_s=15.0, sim_days=31, sim_step_min=60, sim_pass_every_h=12,
                   workloads_s=5.0)


def rate_label(rate: float) -> str:
    return "flat out" if not rate else f"{rate:g} tx/s"


class Context:
    def __init__(self, settings: Settings, tools: list[Tool]):
        self.s = settings
        self.tools = tools
        self.rng = random.Random(settings.seed)
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []
        self.py = sys.executable
        self._n = 0

    def run_dir(self, name: str) -> Path:
        self._n += 1
        d = run_base() / "runs" / f"{self._n:03d}-{name}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def order(self, i: int) -> list[Tool]:
        """A, B on even rounds and B, A on odd ones, so drift and noise cancel in ratios."""
        return list(self.tools) if i % 2 == 0 else list(reversed(self.tools))

    def writer_args(self, db: Path, rate: float = 0, duration_s: float = 0, result: Path | None = None,
                    seed: int = 1) -> list[str]:
        args = [self.py, "-m", "bench.workload", "writer", str(db), "--rate", str(rate),
                "--duration", str(duration_s), "--seed", str(seed)]
        if result is not None:
            args += ["--result", str(result)]
        return args

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)


def say(text: str) -> None:
    print(text, flush=True)


def start_tool(tool: Tool, db: Path, replica: Path, log: Path,
               on_start=None) -> tuple[subprocess.Popen, float]:
    """Start replicating and wait until the first snapshot object is in the replica."""
    start = time.monotonic()
    proc = tool.start(db, replica, log)
    if on_start is not None:
        on_start(proc)
    waited = procs.wait_for(lambda: tool.snapshot_present(replica), SNAPSHOT_TIMEOUT_S, proc=proc)
    if waited is None:
        procs.stop(proc, timeout_s=10)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{tool.name}: no snapshot in {replica} (exit {proc.returncode}); log tail:\n{tail}")
    return proc, time.monotonic() - start


def wait_idle(pid: int, window_s: float = 1.5, threshold: float = 0.03, timeout_s: float = 120.0) -> float:
    """Wait until pid's tree uses < threshold of a CPU over window_s; returns seconds waited."""
    start = time.monotonic()
    prev = procs.cpu_ns_precise(pid)
    while time.monotonic() - start < timeout_s:
        time.sleep(window_s)
        cur = procs.cpu_ns_precise(pid)
        if (cur - prev) / 1e9 < threshold * window_s:
            break
        prev = cur
    return time.monotonic() - start


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def worst(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


def mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def remove_data(d: Path) -> None:
    """Drop databases and replicas of a finished run (logs stay for inspection)."""
    for p in d.iterdir():
        if p.suffix == ".log" or p.name.endswith(".json") or p.suffix in (".svg", ".txt", ".yml"):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
