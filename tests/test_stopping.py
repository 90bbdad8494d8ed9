"""stop_on_signals: a signal sets the Event whichever thread the kernel delivers it to."""

from __future__ import annotations

import os
import signal
import threading
import time

from replicator.stopping import stop_on_signals


def test_a_signal_sets_the_event_while_the_main_thread_waits() -> None:
    with stop_on_signals() as stop:
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
        assert stop.wait(10)


def test_a_signal_while_worker_threads_are_busy_still_stops_an_untimed_wait() -> None:
    """Many rounds, with busy threads the kernel may pick to take the signal: an untimed
    wait in the main thread must still end each time (the hang this module exists for)."""
    busy = threading.Event()

    def spin() -> None:
        while not busy.is_set():
            sum(range(1000))

    workers = [threading.Thread(target=spin, daemon=True) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        for _ in range(50):
            with stop_on_signals() as stop:
                done = threading.Event()

                def waiter() -> None:
                    stop.wait()
                    done.set()

                threading.Thread(target=waiter, daemon=True).start()
                os.kill(os.getpid(), signal.SIGINT)
                assert done.wait(10), "a signal was lost"
    finally:
        busy.set()


def test_the_previous_handlers_come_back_after_the_block() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_other_signals_do_not_stop() -> None:
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        with stop_on_signals() as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert not stop.wait(0.2)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_sighup_sets_reload_and_not_stop() -> None:
    from replicator.stopping import daemon_signals

    with daemon_signals() as signals:
        os.kill(os.getpid(), signal.SIGHUP)
        assert signals.woke.wait(10)
        assert signals.reload.wait(10)
        assert not signals.stop.is_set()
        signals.woke.clear()
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.woke.wait(10) and signals.stop.wait(10)
        assert (signals.stops, signals.last_stop) == (1, signal.SIGTERM)


def test_stop_signals_are_counted_for_forwarding() -> None:
    from replicator.stopping import daemon_signals

    with daemon_signals() as signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            n = signals.stops
            os.kill(os.getpid(), sig)
            deadline = time.monotonic() + 10
            while signals.stops == n and time.monotonic() < deadline:
                signals.woke.wait(0.05)
            assert signals.last_stop == sig
        assert signals.stops == 2 and not signals.reload.is_set()


def test_without_reload_signals_sighup_keeps_its_previous_handler() -> None:
    from replicator.stopping import daemon_signals

    before = signal.getsignal(signal.SIGHUP)
    with daemon_signals(reload=()):
        assert signal.getsignal(signal.SIGHUP) is before
