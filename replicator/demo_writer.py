"""The demo's application: inserts a note at a steady rate until terminated."""

from __future__ import annotations

import datetime as dt
import signal
import sys
import time

import apsw


def main() -> None:
    path, rate = sys.argv[1], float(sys.argv[2])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    conn = apsw.Connection(path)
    conn.set_busy_timeout(5000)
    period = 1.0 / rate
    n = 0
    next_at = time.monotonic()
    while True:
        n += 1
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        conn.execute("INSERT INTO notes(at, body) VALUES(?, ?)", (now, f"note {n} " + "x" * (n % 200)))
        if n % 100 == 0:
            conn.execute("DELETE FROM notes WHERE id % 7 = 0 AND id < ?", (n - 50,))
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
