"""A hostile replica cannot hurt the restorer: each row of docs/design.md's hostile-input
table, as a forged object in a real replica of a real database, restored by the real CLI.

Every forgery recomputes the checksums it breaks (header CRC, body xxh64, trailer): an attacker
with write access to the bucket can, so the checks that hold must be the structural ones.
Each row must end in one `error:` line and a non-zero exit, with nothing written (no output,
no temp file beside it) and the restorer's memory bounded.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import apsw
import pytest
import xxhash
import zstandard

from replicator import layout, segment
from replicator.config import DbConfig, ReplicaConfig
from replicator.replication import DbReplicator
from replicator.segment import SegmentEncoder, Transaction, decode_segment, parse_header
from replicator.storage import open_storage

from .harness import BIN

MiB = 1 << 20


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """A real database replicated to a file replica: one snapshot, then segments."""
    d = tmp_path_factory.mktemp("honest")
    db, replica = d / "app.db", d / "replica"
    conn = apsw.Connection(str(db))
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
    cfg = DbConfig(path=str(db), replicas=(ReplicaConfig(name="f", url=f"file://{replica}", type="file",
                                                         path=str(replica)),))
    rep = DbReplicator(cfg)
    rep.open()
    for batch in range(3):
        for i in range(20):
            conn.execute("INSERT INTO t(v) VALUES (randomblob(300))")
        rep.step()
    rep.stop()
    assert rep.join()
    conn.close()
    return replica


@pytest.fixture
def replica(honest, tmp_path):
    copy = tmp_path / "replica"
    subprocess.run(["cp", "-r", str(honest), str(copy)], check=True)
    return copy


def _objects(replica: Path):
    listing = layout.parse_listing(open_storage(f"file://{replica}").list(layout.GENERATIONS))
    gen = listing.generations[-1]
    return gen.snapshots[-1], gen.segments


def _path(replica: Path, key: str) -> Path:
    return replica / key


def _repack(data: bytes, header: segment.Header, body: bytes, db_checksum: int | None = None) -> bytes:
    trailer = segment.parse_trailer(data)
    return b"".join((segment._pack_header(header), body,
                     segment._TRAILER.pack(len(body), xxhash.xxh64_intdigest(body),
                                           trailer.db_checksum if db_checksum is None else db_checksum,
                                           segment.TRAILER_MAGIC)))


def _body(data: bytes) -> bytes:
    return data[segment.HEADER_SIZE:len(data) - segment.TRAILER_SIZE]


def _forge_header(path: Path, **changes) -> None:
    data = path.read_bytes()
    h = dataclasses.replace(parse_header(data), **changes)
    path.write_bytes(_repack(data, h, _body(data)))


def _forge_records(path: Path, change) -> None:
    data = path.read_bytes()
    header, txs = decode_segment(data)
    txs = change([Transaction(t.txid, t.time_ns, t.db_size, t.db_checksum, [(p, bytes(b)) for p, b in t.pages])
                  for t in txs])
    path.write_bytes(SegmentEncoder().encode(header.generation, header.page_size, txs))


def _bomb(path: Path, decompressed: int) -> None:
    """The same tiny frame of zeros over and over: a few hundred KB that expand to `decompressed`."""
    data = path.read_bytes()
    frame = zstandard.ZstdCompressor(level=19).compress(bytes(4 * MiB))
    path.write_bytes(_repack(data, parse_header(data), frame * (decompressed // (4 * MiB))))


def _last_tx(change_tx):
    def change(txs):
        return txs[:-1] + [change_tx(txs[-1])]
    return change


def snapshot_page_size_zero(r):
    snap, _ = _objects(r)
    _forge_header(_path(r, snap.key), page_size=0)


def segment_page_size_3000(r):
    _, segs = _objects(r)
    _forge_header(_path(r, segs[-1].key), page_size=3000)


def snapshot_claims_2_to_32_pages(r):
    snap, segs = _objects(r)
    for s in segs:
        _path(r, s.key).unlink()
    _forge_header(_path(r, snap.key), db_size=2**32 - 1)


def record_claims_2_to_32_pages(r):
    _, segs = _objects(r)
    _forge_records(_path(r, segs[-1].key), _last_tx(lambda t: t._replace(db_size=2**32 - 1)))


def record_claims_pages_nothing_holds(r):
    _, segs = _objects(r)
    _forge_records(_path(r, segs[-1].key), _last_tx(lambda t: t._replace(db_size=t.db_size + 5000)))


def page_number_zero(r):
    _, segs = _objects(r)
    _forge_records(_path(r, segs[-1].key), _last_tx(lambda t: t._replace(pages=[(0, t.pages[0][1])])))


def page_number_2_to_32(r):
    _, segs = _objects(r)
    _forge_records(_path(r, segs[-1].key), _last_tx(lambda t: t._replace(pages=[(2**32 - 1, t.pages[0][1])])))


def page_of_wrong_content(r):
    _, segs = _objects(r)
    _forge_records(_path(r, segs[-1].key), _last_tx(lambda t: t._replace(pages=[(1, bytes(len(t.pages[0][1])))])))


def txids_out_of_order(r):
    _, segs = _objects(r)
    big = max(segs, key=lambda s: s.last_txid - s.first_txid)
    assert big.last_txid - big.first_txid >= 2, "the fixture's batches hold 20 transactions each"
    _forge_records(_path(r, big.key), lambda txs: [txs[0], txs[1]._replace(txid=txs[1].txid + 7), *txs[2:]])


def segment_zstd_bomb(r):
    _, segs = _objects(r)
    _bomb(_path(r, segs[-1].key), 8 << 30)


def snapshot_zstd_bomb(r):
    snap, _ = _objects(r)
    _bomb(_path(r, snap.key), 8 << 30)


def segment_swapped_under_another_name(r):
    _, segs = _objects(r)
    a, b = segs[-1], segs[-2]
    _path(r, a.key).write_bytes(_path(r, b.key).read_bytes())


def snapshot_swapped_for_a_segment(r):
    snap, segs = _objects(r)
    _path(r, snap.key).write_bytes(_path(r, segs[0].key).read_bytes())


def truncated_segment(r):
    _, segs = _objects(r)
    p = _path(r, segs[-1].key)
    p.write_bytes(p.read_bytes()[:-100])


def not_an_object(r):
    _, segs = _objects(r)
    _path(r, segs[-1].key).write_bytes(b"<html>Access Denied</html>")


HOSTILE = {
    # name: (forgery, what the one line must say, peak RSS allowed)
    "snapshot page size 0": (snapshot_page_size_zero, "invalid page size 0", 200 * MiB),
    "segment page size 3000": (segment_page_size_3000, "invalid page size 3000", 200 * MiB),
    "snapshot header claims 2^32-1 pages": (snapshot_claims_2_to_32_pages, "GiB free", 200 * MiB),
    "record claims 2^32-1 pages": (record_claims_2_to_32_pages, "GiB free", 200 * MiB),
    "record claims 5000 pages nothing holds": (record_claims_pages_nothing_holds, "objects hold only", 200 * MiB),
    "page number 0": (page_number_zero, "page number 0", 200 * MiB),
    "page number 2^32-1": (page_number_2_to_32, "checksum", 200 * MiB),
    "a page of the wrong content": (page_of_wrong_content, "checksum", 200 * MiB),
    "txids out of order": (txids_out_of_order, "does not follow", 200 * MiB),
    "segment zstd bomb (8 GiB)": (segment_zstd_bomb, "decompresses to more than", 1600 * MiB),
    "snapshot zstd bomb (8 GiB)": (snapshot_zstd_bomb, "holds more pages than", 300 * MiB),
    "segment swapped under another's name": (segment_swapped_under_another_name, "names another object", 200 * MiB),
    "segment stored as the snapshot": (snapshot_swapped_for_a_segment, "bad magic", 200 * MiB),
    "truncated segment": (truncated_segment, "", 200 * MiB),
    "not an object at all": (not_an_object, "", 200 * MiB),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_replica_gets_one_line_and_writes_nothing(name, replica, tmp_path):
    forge, says, rss_limit = HOSTILE[name]
    forge(replica)
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = subprocess.run(["/usr/bin/env", "python3", "-c", _RUN, str(BIN), str(outdir / "restored.db"),
                           f"file://{replica}"], capture_output=True, text=True, timeout=300)
    rc_line, peak_line = proc.stdout.strip().splitlines()[-2:]
    rc, peak_kib = int(rc_line), int(peak_line)
    err = proc.stderr.strip()
    assert rc == 1, (rc, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert says in err, err
    assert list(outdir.iterdir()) == []  # neither the output nor a temp file
    assert peak_kib * 1024 < rss_limit, f"peak RSS {peak_kib // 1024} MiB"


# Runs the restore as a child and prints its exit code and peak RSS (KiB) from wait4, its
# stderr passed through: the test's own RSS must not count.
_RUN = """
import os, subprocess, sys
p = subprocess.Popen([sys.argv[1], "restore", "-o", sys.argv[2], sys.argv[3]], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
print(os.waitstatus_to_exitcode(status)); print(usage.ru_maxrss)
"""


def test_the_honest_replica_restores(honest, tmp_path):
    """The control row: the same replica unforged restores (so every row above can fail)."""
    proc = subprocess.run([str(BIN), "restore", "-o", str(tmp_path / "ok.db"), f"file://{honest}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
