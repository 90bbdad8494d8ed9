import time
from tests.integration import test_s3_e2e as m
from tests.integration import harness as h
from replicator import restore as r
orig = r.restore
T = []
def timed(*a, **k):
    t = time.monotonic(); res = orig(*a, **k); T.append((round(time.monotonic()-t,2), res.segments)); return res
m.restore = timed
ow, ost, owf = m.wait_for, m.stop, m.start_writer
t0 = time.monotonic()
def mark(name, f):
    def g(*a, **k):
        t = time.monotonic(); v = f(*a, **k); print(name, round(t - t0,2), round(time.monotonic()-t, 2)); return v
    return g
m.wait_for = mark("wait_for", ow); m.stop = mark("stop", ost)
class W:
    def __init__(s, p): s.p = p
    def wait(s, t): 
        t1 = time.monotonic(); v = s.p.wait(t); print("writer", round(time.monotonic()-t1,2)); return v
m.start_writer = lambda *a: W(owf(*a))
def test_x(tmp_path, moto_server, make_bucket):
    global t0; t0 = time.monotonic()
    try:
        m.test_oracle_s3_replica(tmp_path, moto_server, make_bucket)
    finally:
        print("total", time.monotonic()-t0, "restores", sum(x for x,_ in T), T, len(T))
