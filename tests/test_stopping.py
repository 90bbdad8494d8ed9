"""stop_on_signals: a signal sets the Event whichever thread the kernel delivers it to."""

from __future__ import annotations

import os
import signal
import threading

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
