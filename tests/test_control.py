"""The control socket: owner-only from its first instant, any spool depth, one JSON line each way."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from replicator import control
from replicator.errors import ReplicatorError


@pytest.fixture
def served(tmp_path):
    seen = []

    def echo(req):
        seen.append(req)
        return {"you said": req.get("x")}

    def boom(req):
        raise ReplicatorError("no snapshot for you")

    def bug(req):
        raise KeyError("oops")

    server = control.ControlServer(tmp_path, {"echo": echo, "boom": boom, "bug": bug})
    server.start()
    yield tmp_path, server, seen
    server.stop()


def test_a_request_gets_its_handler_answer(served):
    d, _, seen = served
    assert control.ask(d, {"op": "echo", "x": 42}, 5) == {"you said": 42}
    assert seen == [{"op": "echo", "x": 42}]


def test_the_socket_is_owner_only_and_nothing_else_is_left_beside_it(served):
    d, server, _ = served
    mode = os.stat(server.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert sorted(p.name for p in d.iterdir()) == [control.SOCKET_NAME]  # the private dir is gone


def test_errors_come_back_as_one_line(served):
    d, _, _ = served
    with pytest.raises(ReplicatorError, match="no snapshot for you"):
        control.ask(d, {"op": "boom"}, 5)
    with pytest.raises(ReplicatorError, match="unknown request 'nope'"):
        control.ask(d, {"op": "nope"}, 5)
    with pytest.raises(ReplicatorError, match="internal error: KeyError"):
        control.ask(d, {"op": "bug"}, 5)
    assert control.ask(d, {"op": "echo"}, 5) == {"you said": None}  # still serving


def test_garbage_and_a_silent_peer_do_not_stop_the_server(served):
    d, server, _ = served
    for payload in (b"not json\n", b"[1, 2]\n", b"x" * (control.MAX_REQUEST_BYTES + 10)):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(server.path))
        s.sendall(payload)
        s.close()
    assert control.ask(d, {"op": "echo", "x": 1}, 5) == {"you said": 1}


def test_no_socket_or_a_stale_one_means_no_replicator(tmp_path):
    assert control.ask(tmp_path, {"op": "echo"}, 1) is None
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / control.SOCKET_NAME))
    stale.close()  # the file stays, nobody listens
    assert control.ask(tmp_path, {"op": "echo"}, 1) is None


def test_a_stale_socket_is_replaced_and_stop_removes_it(tmp_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / control.SOCKET_NAME))
    stale.close()
    server = control.ControlServer(tmp_path, {"echo": lambda req: "fresh"})
    server.start()
    try:
        assert control.ask(tmp_path, {"op": "echo"}, 5) == "fresh"
    finally:
        server.stop()
    assert not (tmp_path / control.SOCKET_NAME).exists()


def test_a_spool_deeper_than_sun_path_still_works(tmp_path):
    deep = tmp_path
    while len(str(deep)) < 150:
        deep = deep / ("d" * 30)
    deep.mkdir(parents=True)
    server = control.ControlServer(deep, {"echo": lambda req: "deep"})
    server.start()
    try:
        assert control.ask(deep, {"op": "echo"}, 5) == "deep"
    finally:
        server.stop()


def test_slow_requests_do_not_hold_up_others(tmp_path):
    release = threading.Event()
    server = control.ControlServer(tmp_path / "x", {"slow": lambda req: release.wait(10),
                                                   "fast": lambda req: "fast"})
    (tmp_path / "x").mkdir()
    server.start()
    try:
        slow = threading.Thread(target=control.ask, args=(tmp_path / "x", {"op": "slow"}, 10))
        slow.start()
        assert control.ask(tmp_path / "x", {"op": "fast"}, 5) == "fast"
        release.set()
        slow.join()
    finally:
        server.stop()


def test_a_client_that_is_not_answered_in_time_gets_one_line(tmp_path):
    block = threading.Event()
    server = control.ControlServer(tmp_path, {"hang": lambda req: block.wait(10)})
    server.start()
    try:
        with pytest.raises(ReplicatorError, match="did not answer within 0.2s"):
            control.ask(tmp_path, {"op": "hang"}, 0.2)
    finally:
        block.set()
        server.stop()
