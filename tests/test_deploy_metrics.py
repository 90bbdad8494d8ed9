"""deploy/prometheus and deploy/grafana: the alert rules pass `promtool test rules` (where
promtool exists), and every metric they and the dashboard name is one that a scrape of the
daemon or the compactor returns; every metric exported is documented in docs/design.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import apsw
import pytest
import yaml

from replicator import metrics
from replicator.compactor import Compactor
from replicator.config import DbConfig, ListenAddr, ReplicaConfig
from replicator.replication import DbReplicator
from replicator.retention import Policy
from replicator.storage import open_storage
from replicator.verify import record, write_record

from integration.harness import wait_for
from scrape import names, samples, scrape, value

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = [ROOT / "deploy" / "prometheus" / "alerts_test.yml", ROOT / "deploy" / "prometheus" / "alerts_test_days.yml"]
DASHBOARD = ROOT / "deploy" / "grafana" / "replicator.json"
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in matchers, by/without/on lists) or Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    found = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        rest = expr[m.end():].lstrip()
        if m.group() not in PROMQL_WORDS and not rest.startswith("("):
            found.add(m.group())
    return found


def test_metric_names_parses_what_the_rules_use():
    assert metric_names('sum without (kind) (rate(a_total{x="y(z)"}[5m])) > 0 and on (db) delta(b[15m]) > 1e9') == {
        "a_total", "b"}
    assert metric_names("time() - c_seconds > 2 * 86400") == {"c_seconds"}


def _alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"]}


def _dashboard_exprs() -> dict[str, str]:
    dash = json.loads(DASHBOARD.read_text())
    out = {}

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out[f"panel {p['title']!r} {t['refId']}"] = t["expr"]
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.match(r"label_values\((.*),\s*\w+\)$", q or "")
        if m:
            out[f"variable {var['name']}"] = m.group(1)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:
    """Every sample name the daemon and the compactor serve, with each conditional metric
    made present: a checkpoint ran, a replica uploaded, a verify succeeded, a pass ran."""
    tmp = tmp_path_factory.mktemp("exported")
    db = tmp / "app.db"
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(2000)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
    replica = ReplicaConfig(name="file", url=f"file://{tmp / 'replica'}", type="file", path=str(tmp / "replica"))
    rep = DbReplicator(DbConfig(path=str(db), replicas=(replica,), monitor_interval_s=0.05,
                                min_checkpoint_page_count=1, checkpoint_interval_s=0.1))
    comp = Compactor(open_storage(replica), Policy(retention_s=3600), db=str(db), name="file")
    addr = ListenAddr("127.0.0.1", 0)
    run_reg = metrics.registry("run", metrics.ReplicatorCollector(lambda: [rep]))
    compact_reg = metrics.registry("compact", metrics.CompactorCollector(lambda: [comp]))
    with metrics.serving(addr, run_reg) as run_port, metrics.serving(addr, compact_reg) as compact_port:
        rep.start()
        try:
            for _ in range(20):
                conn.execute("INSERT INTO t(v) VALUES (?)", (b"d" * 500,))
            # Each conditional metric appears on its own event: wait for every one of them,
            # since under load the checkpoint can come before the first upload.
            def present() -> bool:
                got = samples(scrape(run_port))
                return bool(value(got, "replicator_checkpoints_total", db=str(db))) and \
                    value(got, "replicator_last_upload_timestamp_seconds", db=str(db), replica="file") is not None
            wait_for(present, 30, "a checkpoint and an upload")
            write_record(str(db), record(True, "file", 3, None))
            got = names(samples(scrape(run_port)))
        finally:
            rep.stop()
            rep.join()
            conn.close()
        comp.run_pass()
        got |= names(samples(scrape(compact_port)))
    return got


def test_every_alert_names_only_exported_metrics(exported):
    exprs = _alert_exprs()
    assert len(exprs) >= 10
    for alert, expr in exprs.items():
        used = metric_names(expr)
        assert used, f"{alert}: no metric in {expr!r}"
        assert used <= exported, f"{alert} names metrics nobody exports: {sorted(used - exported)}"


def test_every_dashboard_query_names_only_exported_metrics(exported):
    exprs = _dashboard_exprs()
    assert len(exprs) >= 25 and "variable db" in exprs
    for where, expr in exprs.items():
        used = metric_names(expr)
        assert used, f"{where}: no metric in {expr!r}"
        assert used <= exported, f"{where} names metrics nobody exports: {sorted(used - exported)}"


def test_the_dashboard_and_alerts_cover_what_the_issue_asks_for(exported):
    used = set().union(*(metric_names(e) for e in [*_alert_exprs().values(), *_dashboard_exprs().values()]))
    ours = {n for n in exported if n.startswith("replicator_")}
    # _sum/_count of a summary stand for it; everything else is shown or alerted on.
    unused = {n for n in ours - used if not re.sub(r"_(sum|count)$", "", n) in {re.sub(r"_(sum|count)$", "", u) for u in used}}
    assert not unused, f"exported but neither on the dashboard nor in an alert: {sorted(unused)}"


def test_every_exported_metric_is_documented(exported):
    design = (ROOT / "docs" / "design.md").read_text()
    families = {re.sub(r"_(sum|count)$", "", n) for n in exported if n.startswith("replicator_")}
    missing = sorted(n for n in families if n not in design)
    assert not missing, f"not in docs/design.md: {missing}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: apt-get install prometheus)")
def test_alert_rules_pass_promtool():
    check = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    res = subprocess.run(["promtool", "test", "rules", *[str(p) for p in ALERT_TESTS]], capture_output=True,
                         text=True, timeout=300, cwd=ALERTS.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(ALERT_TESTS)


def test_the_dashboard_is_importable_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "replicator" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}"
