"""`python -m bench [--quick] [--sections rpo,impact,cpu,restore,pitr,requests] ...` (or `./dev bench`)."""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import impact, pitr, procs, report, requests_bench, restore_bench, rpo, simulate, workloads_bench
from .common import Context, Settings, new_run_base, run_base, say
from .tools import BENCH_DIR, make_tools

SECTIONS = {"rpo": rpo.run, "impact": impact.run_impact, "cpu": impact.run_cpu,
            "restore": restore_bench.run, "pitr": pitr.run, "requests": requests_bench.run,
            "simulate": simulate.run, "workloads": workloads_bench.run}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="./dev bench", description=__doc__.split("\n")[0] + " Benchmarks "
                                "replicator against Litestream; writes bench/RESULTS.md.")
    p.add_argument("--quick", action="store_true", help="a ~5 minute run with shorter durations and a small database")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--tools", default="litestream,replicator", help="comma-separated: litestream,replicator")
    p.add_argument("--runs", type=int, help="RPO runs per rate and tool")
    p.add_argument("--impact-seconds", type=float, help="writer-impact duration per configuration")
    p.add_argument("--idle-seconds", type=float, help="idle CPU measurement window")
    p.add_argument("--restore-size-mb", type=int, help="size of the restore benchmark database")
    p.add_argument("--history", help="comma-separated history factors (WAL written / db size), e.g. 1,3")
    p.add_argument("--seed", type=int)
    p.add_argument("--profile", action="store_true", help="py-spy the replicator in the flat-out run, the "
                   "history ingest and a restore; summaries go into RESULTS.md")
    p.add_argument("--out", default=str(BENCH_DIR / "RESULTS.md"), help="where to write the results")
    p.add_argument("--replicator-code", metavar="DIR", help="run the replicator package found in DIR (e.g. "
                   "an earlier run's bench/work/<run>/code) instead of a fresh copy of replicator/")
    p.add_argument("--from-json", metavar="RAW", help="only rewrite --out from a raw results file of an "
                   "earlier run (bench/work/results-*.json)")
    return p.parse_args(argv)


def settings_from(a: argparse.Namespace) -> Settings:
    s = Settings.quick() if a.quick else Settings()
    if a.runs:
        s.rpo_runs = a.runs
    if a.impact_seconds:
        s.impact_s = a.impact_seconds
    if a.idle_seconds:
        s.idle_s = a.idle_seconds
    if a.restore_size_mb:
        s.restore_size_mb = a.restore_size_mb
    if a.history:
        s.history_factors = tuple(float(x) for x in a.history.split(","))
    if a.seed is not None:
        s.seed = a.seed
    s.profile = a.profile
    return s


def freeze_replicator(use: str | None = None) -> str:
    """Run a copy of replicator/ taken now, so commits landing during a long run cannot mix
    versions between sections (PYTHONPATH wins over the editable install's finder)."""
    src = BENCH_DIR.parent / "replicator"
    frozen = new_run_base() / "code"
    try:
        return _freeze(src, frozen, use)
    finally:
        # Byte-compiled now, as an installed package is: where PYTHONDONTWRITEBYTECODE is set,
        # each process would otherwise compile the copy's sources again (~0.1 s a restore).
        compileall.compile_dir(str(frozen / "replicator"), quiet=1)


def _freeze(src: Path, frozen: Path, use: str | None) -> str:
    if use:
        shutil.copytree(Path(use) / "replicator", frozen / "replicator", ignore=shutil.ignore_patterns("__pycache__"))
        note = (Path(use) / "COMMIT").read_text().strip() if (Path(use) / "COMMIT").exists() else "?"
        (frozen / "COMMIT").write_text(note)
        os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(frozen), os.environ.get("PYTHONPATH")) if x)
        return f"{note} (from {use})"
    shutil.copytree(src, frozen / "replicator", ignore=shutil.ignore_patterns("__pycache__"))
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(frozen), os.environ.get("PYTHONPATH")) if x)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=src).stdout.strip()
    dirty = subprocess.run(["git", "status", "--short", "--", "replicator"], capture_output=True, text=True,
                           cwd=src).stdout.strip()
    desc = head + (" + uncommitted changes in replicator/" if dirty else "")
    (frozen / "COMMIT").write_text(desc)
    return desc


def rewrite(raw_path: str, out: str) -> None:
    raw = json.loads(Path(raw_path).read_text())
    settings = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw["settings"].items()})
    report.write(Path(out), raw["results"], raw["info"], raw.get("command", "./dev bench"), settings,
                 raw["versions"], raw["notes"], raw.get("elapsed_s", 0.0))
    say(f"wrote {out} from {raw_path}")


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.from_json:
        return rewrite(a.from_json, a.out)
    sections = [x.strip() for x in a.sections.split(",") if x.strip()]
    unknown = [x for x in sections if x not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s): {', '.join(unknown)} (choose from {', '.join(SECTIONS)})")
    tools = make_tools([x.strip() for x in a.tools.split(",") if x.strip()])
    settings = settings_from(a)
    code = freeze_replicator(a.replicator_code)
    for t in tools:
        t.ensure()
    versions = {t.name: t.version() for t in tools}
    info = report.machine_info()
    info["commit"] = f"{code}, run from a copy taken at the start"
    say(f"machine: {info['nproc']} x {info['cpu']}, {info['memory']}, kernel {info['kernel']}, "
        f"python {info['python']}, SQLite {info['sqlite_apsw']}")
    say("tools: " + "; ".join(versions.values()))
    ctx = Context(settings, tools)
    if settings.profile:
        ctx.note("--profile: py-spy sampled the replicator (200 Hz, --nonblocking) in the flat-out run, the "
                 f"{settings.cpu_rate} tx/s run, the first snapshot, the history ingest and one extra restore; "
                 "the profiler's own CPU competes on this 2-core machine, so take this run's figures as rough.")
    say(f"work directory: {run_base()}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    results: dict = {}
    try:
        for name in sections:
            t = time.monotonic()
            try:
                results[name] = SECTIONS[name](ctx)
            except Exception as err:  # noqa: BLE001 - report it and carry on with the next section
                import traceback

                traceback.print_exc()
                ctx.note(f"section {name} failed: {type(err).__name__}: {err}")
            say(f"   ({name}: {time.monotonic() - t:.0f} s)")
    finally:
        procs.cleanup()
    elapsed = time.monotonic() - started
    info["loadavg_end"] = report.loadavg()
    evicts = {p["tools"][t]["evict"] for p in results.get("restore", {}).get("points", []) for t in p["tools"]}
    if "drop_caches" in evicts:
        ctx.note("Cold restores: `sync; echo 3 > /proc/sys/vm/drop_caches` right before each cold restore and "
                 "cold floor (the file is write-only, so it cannot be read back, but writing it works here).")
    if "fadvise" in evicts:
        ctx.note("/proc/sys/vm/drop_caches is not writable here (sandbox, even as root), so cold restores "
                 "evict the replica files (and the source, for the floors) with fsync + "
                 "posix_fadvise(POSIX_FADV_DONTNEED) instead; the restore tools' own binaries and libraries "
                 "stay cached.")
    command = "./dev bench " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    raw = run_base() / "results.json"
    raw.write_text(json.dumps({"settings": vars(settings), "results": results, "info": info,
                               "versions": versions, "notes": ctx.notes, "command": command.strip(),
                               "elapsed_s": elapsed}, indent=1, default=str))
    out = Path(a.out)
    report.write(out, results, info, command.strip(), settings, versions, ctx.notes, elapsed)
    say(f"\nwrote {out} (raw figures: {raw}); total {elapsed / 60:.1f} min")
