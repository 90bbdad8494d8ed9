"""logs.py: one line per event, text or JSON lines, the level from the config or -v, and
the config's credentials never in a line."""

from __future__ import annotations

import json
import logging

import pytest

from replicator import logs
from replicator.logs import LogSettings


@pytest.fixture(autouse=True)
def restore_root():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    logs.setup(verbose=False)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_ts_level_logger_msg(capsys):
    logs.setup(LogSettings(level="info", type="json"), verbose=False)
    logging.getLogger("replicator.replication").info("replicating %s to %s", "/a.db", "s3://b/a")
    logging.getLogger("replicator.x").debug("not shown at info")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("replicator.x").exception("failed")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # the traceback stays inside its event's line
    first, second = map(json.loads, lines)
    assert set(first) == {"ts", "level", "logger", "msg"} and first["ts"].endswith("Z")
    assert (first["level"], first["logger"], first["msg"]) == ("info", "replicator.replication",
                                                                "replicating /a.db to s3://b/a")
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_levels_stdout_and_verbose(capsys):
    logs.setup(LogSettings(level="warn", stderr=False), verbose=False)
    log = logging.getLogger("replicator.y")
    log.info("quiet")
    log.warning("loud")
    out = capsys.readouterr()
    assert out.err == "" and out.out.count("\n") == 1 and "WARNING loud" in out.out
    logs.setup(verbose=True)  # -v, then the config says error: -v wins
    logs.setup(LogSettings(level="error"))
    log.debug("debugging")
    assert "DEBUG debugging" in capsys.readouterr().err


def test_credentials_are_redacted(capsys):
    logs.setup(LogSettings(type="text"), verbose=False, secrets=["AKIASECRETKEY", "s3cr3t/value"])
    logging.getLogger("replicator.z").warning("endpoint said AKIASECRETKEY s3cr3t/value")
    err = capsys.readouterr().err
    assert "AKIASECRETKEY" not in err and "s3cr3t" not in err and "said *** ***" in err


def test_setting_up_again_leaves_one_handler():
    for _ in range(3):
        logs.setup(verbose=False)
    assert sum(h.get_name() == "replicator" for h in logging.getLogger().handlers) == 1
