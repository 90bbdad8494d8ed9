"""Object-store faults under a real replicator: `replicator replicate DB s3://...` ships a
real writer's transactions through tests/faultproxy.py, which breaks requests on the way
(S3 error answers, resets mid-upload and mid-download, truncated answers, stalls longer than
the client's read timeout) while the writer runs, or while the replicator starts (the only
time it GETs and LISTs), and then lets them through again.

Whatever the fault, the daemon must ride it out (running until we stop it, exit 0 after a
clean stop), and the replica must end up exactly the source: the latest restore and a
sample of txid restores are exact prefixes of the workload, and the history holds no
segment objects that overlap (our own retries must not leave two copies of any txid).
Restores and listings go straight to the server, not through the proxy.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path

import apsw
import pytest

from faultproxy import ERROR, RESET_DOWNLOAD, RESET_UPLOAD, STALL, TRUNCATE
from replicator import layout
from replicator.plan import Target

from .harness import TESTS, read_oracle, start_replicator, start_writer, stop, wait_for
from .test_s3_e2e import has_snapshot, init_db, restore_state, s3_storage, wait_started

sys.path.insert(0, str(TESTS))
import workload  # noqa: E402

OPS = 400  # ~4 s of writing: pauses of 100 ms every 10 transactions
READ_TIMEOUT = "1s"  # REPLICATOR_S3_READ_TIMEOUT for the replicator: a stall costs ~1 s
OUTAGE_LINE = "keeping data in the spool"  # the shipper's line when an upload round failed


@dataclasses.dataclass(frozen=True)
class Fault:
    """What the proxy breaks, and when: `starting` faults are on before the replicator
    starts (its lease GET and listing); the others from a moment into the writer's run. They
    stay on until `faults` were injected, and for `failed_round` also until a whole round
    (recovery or upload, with every retry) failed and the next one began. Each entry of
    `rules` is one proxy rule's extra options (checked in order: a seeded fraction first
    leaves the rest to the next)."""

    kind: str
    method: str
    path: str | None = None
    faults: int = 3
    failed_round: bool = False
    starting: bool = False
    rules: tuple[dict, ...] = ({},)


CASES = {
    "server-errors-put": Fault(ERROR, "PUT", "/segments/", faults=25, failed_round=True, rules=(
        {"code": "InternalError", "fraction": 0.5, "seed": 1}, {"code": "ServiceUnavailable"})),
    "slow-down-put": Fault(ERROR, "PUT", None, faults=4, rules=({"code": "SlowDown"},)),
    "reset-upload-put": Fault(RESET_UPLOAD, "PUT", "/segments/", faults=25, failed_round=True),
    # The ambiguous ones: the server stored the object, the client saw a failure.
    "reset-download-put": Fault(RESET_DOWNLOAD, "PUT", "/segments/", faults=25, failed_round=True),
    "stall-put": Fault(STALL, "PUT", "/segments/", faults=3, rules=({"stall_s": 3.0},)),
    "reset-download-get": Fault(RESET_DOWNLOAD, "GET", None, faults=25, failed_round=True, starting=True),
    "truncate-list": Fault(TRUNCATE, "GET", "list-type=2", faults=25, failed_round=True, starting=True),
    "stall-list": Fault(STALL, "GET", "list-type=2", faults=2, starting=True, rules=({"stall_s": 3.0},)),
}
SEAWEEDFS_CASES = ("reset-download-put", "stall-put", "truncate-list")


def params():
    for name in CASES:
        yield pytest.param("moto_server", name, id=f"moto-{name}")
    for name in SEAWEEDFS_CASES:
        yield pytest.param("seaweedfs_server", name, id=f"seaweedfs-{name}", marks=pytest.mark.seaweedfs)


def source_state(db: Path) -> tuple[int, str]:
    """(k, content hash) of the live database, WAL included (db_state opens it immutable)."""
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT n FROM meta").fetchall()[0][0], workload.content_hash(conn)
    finally:
        conn.close()


def integrity(path: Path) -> str:
    conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()[0][0]
    finally:
        conn.close()


def assert_history_is_one_unbroken_run(listing: layout.Listing) -> layout.Generation:
    """One generation whose segments follow its snapshot txid by txid: no overlap, no gap,
    no duplicate (an object left by one of our own failed retries would overlap)."""
    assert len(listing.generations) == 1, [g.name for g in listing.generations]
    gen = listing.generations[0]
    assert gen.snapshots, "no snapshot"
    spans = [(s.first_txid, s.last_txid) for s in gen.segments]
    assert spans == sorted(spans)
    expected_first = gen.snapshots[0].txid + 1
    for first, last in spans:
        assert first == expected_first, f"segments overlap or leave a gap: {spans}"
        assert last >= first
        expected_first = last + 1
    return gen


@pytest.mark.parametrize("server_fixture, case", list(params()))
def test_faults_are_ridden_out_and_the_replica_is_exact(request, tmp_path: Path, make_bucket, fault_proxy,
                                                       server_fixture: str, case: str) -> None:
    fault = CASES[case]
    seed = 100 + list(CASES).index(case)
    server = request.getfixturevalue(server_fixture)
    opts = make_bucket(server, prefix="faults/app")
    proxy = fault_proxy(server)
    db, log, out = tmp_path / "app.db", tmp_path / "replicator.log", tmp_path / "out.db"
    init_db(db)
    env = {**server.env, "AWS_ENDPOINT_URL_S3": proxy.url, "REPLICATOR_S3_READ_TIMEOUT": READ_TIMEOUT}

    def inject() -> None:
        for options in fault.rules:
            proxy.inject(fault.kind, method=fault.method, path=fault.path, **options)

    def enough_faults() -> bool:
        if proxy.faults(fault.kind) < fault.faults:
            return False
        if not fault.failed_round:
            return True
        # A failed round was logged, and the round after it has begun (and hit a fault too).
        text = log.read_text(errors="replace")
        return OUTAGE_LINE in text and proxy.faults(fault.kind) >= fault.faults + 2

    def writer_to(ops: int):
        return start_writer(db, ops, seed, "--pause-every", "10", "--pause-ms", "100")

    replicate = ["replicate", str(db), f"s3://{opts.bucket}/{opts.prefix}"]
    if fault.starting:
        writer = writer_to(OPS // 2)
        inject()
        # Recovery runs before the daemon reports that it started: do not wait for that line.
        rep = start_replicator(replicate, log, env=env)
        wait_for(enough_faults, 60, f"{fault.faults} {fault.kind} faults")
        proxy.clear()
        wait_started(log)
        assert writer.wait(60) == 0
        writer = writer_to(OPS)  # resumes: the second half is shipped as segments for sure
    else:
        writer = writer_to(OPS)
        rep = start_replicator(replicate, log, env=env)
        wait_started(log)
        wait_for(lambda: has_snapshot(server, opts), 30, "the first snapshot in the bucket")
        oracle = Path(str(db) + ".oracle")
        wait_for(lambda: oracle.exists() and len(read_oracle(db)) >= 40, 30, "the writer under way")
        inject()
        wait_for(enough_faults, 60, f"{fault.faults} {fault.kind} faults")
        proxy.clear()
    assert rep.poll() is None, "the replicator exited during the faults:\n" + log.read_text()[-3000:]
    assert writer.wait(60) == 0
    assert rep.poll() is None, log.read_text()[-3000:]
    assert stop(rep) == 0, log.read_text()[-3000:]
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert server.secret_key not in text, "a credential leaked into the log"

    # The faults really happened, to the requests meant.
    injected = proxy.faults()
    assert injected >= fault.faults and proxy.faults(fault.kind, fault.method) == injected
    assert all(f.method == fault.method and (fault.path or "") in f.target for f in proxy.injected)
    assert proxy.requests[fault.method] > injected  # and the same requests went through later
    if fault.kind in (RESET_DOWNLOAD, TRUNCATE, STALL):
        assert all(f.forwarded for f in proxy.injected)  # the server acted, the client never knew
    codes = {options["code"] for options in fault.rules if "code" in options}
    assert {f.code for f in proxy.injected if f.code} == codes

    storage = s3_storage(opts)
    gen = assert_history_is_one_unbroken_run(layout.parse_listing(storage.list(layout.GENERATIONS)))
    source = source_state(db)
    latest = restore_state(storage, out)
    assert integrity(out) == "ok"
    assert gen.segments, "everything was in the first snapshot: the faults hit no shipping"
    span = range(gen.first_txid, gen.last_txid + 1)
    txids = random.Random(seed).sample(span, min(4, len(span)))
    sampled = {t: restore_state(storage, out, Target(txid=t)) for t in txids}
    expected = workload.expected_hashes(seed, {OPS} | {k for k, _ in sampled.values()})
    assert source == latest == (OPS, expected[OPS])
    for txid, (k, digest) in sampled.items():
        assert digest == expected[k], f"txid {txid}: restored k={k} is not the workload's prefix"
    assert [sampled[t][0] for t in sorted(txids)] == sorted(k for k, _ in sampled.values())
