"""storage/crypt.py and replica_meta.py: age-encrypted replicas on file and S3 (moto), end
to end through a real replicator, the compactor and restore; the marker test greps every
object a replica holds for plaintext planted in the database."""

from __future__ import annotations

import dataclasses
import io
import json
import os

import apsw
import pytest
from click.testing import CliRunner
from pyrage import x25519

from replicator import layout, replica_meta
from replicator.cli import cli
from replicator.compactor import Compactor, describe_plan
from replicator.config import AgeConfig, DbConfig, ReplicaConfig, parse
from replicator.demo import content_hash
from replicator.errors import ConfigError, ReplicatorError, RestoreError
from replicator.plan import Target
from replicator.replication import DbReplicator
from replicator.restore import restore
from replicator.retention import Policy
from replicator.segment import SegmentEncoder, SnapshotWriter, Transaction, decode_segment, merge_segments
from replicator.storage import Integrity, Permanent, open_storage
from replicator.storage.crypt import AGE_MAGIC, AgeStorage, plaintext_size
from replicator.storage.memory import MemoryStorage

from integration.harness import wait_for

GEN = "20261126T000000000Z-abcdef"
PS = 512
HOUR = 3600 * 10**9
START_NS = 1_790_000_000 * 10**9
IDENTITY = x25519.Identity.generate()
RECIPIENT = str(IDENTITY.to_public())
OTHER = x25519.Identity.generate()


def age(identities: bool = True, recipients: bool = True, identity=IDENTITY) -> AgeConfig:
    return AgeConfig(identities=(str(identity),) if identities else (),
                     recipients=(str(identity.to_public()),) if recipients else ())


def snapshot_bytes(txid: int = 1, pages: int = 4) -> bytes:
    buf = io.BytesIO()
    w = SnapshotWriter(buf, GEN, PS, txid, txid * 1_000_000, pages)
    w.write_pages(b"".join(bytes([i + 1]) * PS for i in range(pages)))
    w.finish()
    return buf.getvalue()


def segment_bytes(txid: int) -> bytes:
    tx = Transaction(txid, txid * 1_000_000, 4, 0, [(1, bytes([txid]) * PS)])
    return SegmentEncoder().encode(GEN, PS, [tx])


@pytest.fixture(params=["file", "s3"])
def replica(request, tmp_path) -> ReplicaConfig:
    if request.param == "file":
        path = tmp_path / "replica"
        return ReplicaConfig(name="file", url=f"file://{path}", type="file", path=str(path))
    server = request.getfixturevalue("moto_server")
    opts = request.getfixturevalue("make_bucket")(server)
    return ReplicaConfig(name="s3", url=f"s3://{opts.bucket}/{opts.prefix}", type="s3", s3=opts,
                         sync_interval_s=0.01)


def raw(storage):
    """The bytes the store holds, below the encryption wrapper."""
    return storage.inner if isinstance(storage, AgeStorage) else storage


# -- every object kind round trips, sealed; metadata stays plaintext -------------------------


def test_every_object_kind_round_trips_sealed(replica, tmp_path):
    storage = open_storage(dataclasses.replace(replica, age=age()))
    snap_key = layout.snapshot_key(GEN, 1, 1_000_000)
    named_key = layout.snapshot_key(GEN, 1, 1_000_000, name="before-migration")
    seg_keys = [layout.segment_key(GEN, t, t, t * 1_000_000, t * 1_000_000) for t in (2, 3)]
    merged_key = layout.segment_key(GEN, 2, 3, 2_000_000, 3_000_000)
    snap = snapshot_bytes()
    path = tmp_path / "snap"
    path.write_bytes(snap)
    with open(path, "rb") as f:  # snapshots are put as streams (files)
        storage.put(snap_key, f)
    storage.put(named_key, snap)
    segs = [segment_bytes(t) for t in (2, 3)]
    for k, d in zip(seg_keys, segs):
        storage.put(k, d)
    merged = merge_segments(segs, seg_keys)
    storage.put(merged_key, merged)
    marker = layout.retired_key(GEN, 1, 1)
    storage.put(marker, b"")
    storage.put(layout.REPLICA_META, b'{"format_version": 1}')

    for key, body in [(snap_key, snap), (named_key, snap), (seg_keys[0], segs[0]), (merged_key, merged)]:
        stored = raw(storage).get(key)
        assert stored.startswith(AGE_MAGIC) and body not in stored
        assert storage.get(key) == body
        assert storage.get_with_etag(key)[0] == body
        with storage.open(key) as f:
            assert f.read() == body
        with storage.open(key, 5, 40) as f:
            assert f.read() == body[5:45]
        assert storage.stat(key).size == len(body)
        fresh = open_storage(dataclasses.replace(replica, age=age(identities=False)))  # no identity
        assert fresh.stat(key).size == len(body)  # from the age header alone
    assert decode_segment(storage.get(merged_key))[0].last_txid == 3
    assert raw(storage).get(layout.REPLICA_META) == b'{"format_version": 1}'
    assert raw(storage).get(marker) == b""
    assert [o.key for o in storage.list(layout.GENERATIONS)] == sorted(
        [snap_key, named_key, *seg_keys, merged_key, marker])


@pytest.mark.parametrize("size", [0, 1, 65536 - 20, 65536, 3 * 65536 + 7])
def test_plaintext_size_from_the_age_header(size):
    storage = AgeStorage(MemoryStorage(), [RECIPIENT])
    key = layout.segment_key(GEN, 2, 2, 1, 1)
    storage.put(key, os.urandom(size))
    assert storage.stat(key).size == size
    header_end = storage.inner.get(key).index(b"\n--- ")
    assert plaintext_size(len(storage.inner.get(key)), header_end) >= size  # sanity: it is bounded


# -- wrong and missing keys, swapped and planted objects --------------------------------------


def test_wrong_and_missing_identity_are_one_clear_error():
    inner = MemoryStorage()
    key = layout.segment_key(GEN, 2, 2, 1, 1)
    AgeStorage(inner, [RECIPIENT]).put(key, segment_bytes(2))
    with pytest.raises(Permanent, match="none of the age identities given opens it") as e:
        AgeStorage(inner, [], [str(OTHER)]).get(key)
    assert str(OTHER) not in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(Permanent, match="no age identity was given"):
        AgeStorage(inner, [RECIPIENT]).open(key)


def test_swapped_objects_are_detected():
    storage = AgeStorage(MemoryStorage(), [], [str(IDENTITY)])
    a, b = (layout.segment_key(GEN, t, t, t, t) for t in (2, 3))
    storage.put(a, segment_bytes(2))
    storage.put(b, segment_bytes(3))
    storage.inner.put(b, storage.inner.get(a))  # a bucket writer renames one over the other
    with pytest.raises(Integrity, match="swapped or replayed"):
        storage.get(b)
    storage.inner.put(b, segment_bytes(3))  # a plaintext object planted in an encrypted replica
    with pytest.raises(Integrity, match="not age-encrypted"):
        storage.get(b)
    sealed = bytearray(AgeStorage(MemoryStorage(), [RECIPIENT]).seal(b, segment_bytes(3)))
    sealed[-3] ^= 1
    storage.inner.put(b, bytes(sealed))
    with pytest.raises(Integrity, match="altered or truncated"):
        storage.get(b)


def test_identities_never_show_in_repr_or_config():
    cfg = parse(f"dbs:\n- path: /a.db\n  replicas:\n  - url: file:///b\n    age:\n      identities: [$ID]\n",
                environ={"ID": str(IDENTITY)})
    r = cfg.dbs[0].replicas[0]
    assert r.age.identities == (str(IDENTITY),)
    assert str(IDENTITY) not in repr(cfg) and str(IDENTITY) not in repr(open_storage(r))


def test_age_keys_from_files_and_bad_keys_refused_naming_the_key(tmp_path):
    idf = tmp_path / "key.txt"
    idf.write_text(f"# created: today\n# public key: {RECIPIENT}\n{IDENTITY}\n")
    rf = tmp_path / "recipients.txt"
    rf.write_text(RECIPIENT + "\n")
    cfg = parse(f"dbs:\n- path: /a.db\n  replicas:\n  - url: file:///b\n    age:\n"
                f"      identities: [{idf}]\n      recipients: [{rf}]\n", environ={})
    storage = open_storage(cfg.dbs[0].replicas[0])
    assert storage.can_decrypt and len(storage.fingerprints) == 1
    for body, where, why in [
        ("identities: [AGE-SECRET-KEY-1NOTAKEY]", "age.identities[0]", "not an age X25519 identity"),
        ("identities: [/no/such/file]", "age.identities[0]", "neither an age identity"),
        ("identities: ['']", "age.identities[0]", "unset $VAR"),
        ("recipients: [age1nope]", "age.recipients[0]", "not an age X25519 recipient"),
        ("{}", "age", "give recipients"),
        ("colour: blue", "age.colour", "unknown key"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse(f"dbs:\n- path: /a.db\n  replicas:\n  - url: file:///b\n    age: {{{body}}}\n"
                  if not body.startswith("{") else
                  f"dbs:\n- path: /a.db\n  replicas:\n  - url: file:///b\n    age: {body}\n", environ={})
        assert f"dbs[0].replicas[0].{where}: " in str(e.value) and why in str(e.value), str(e.value)
        assert "NOTAKEY" not in str(e.value)


# -- replica.json: the replica's encryption is recorded, and writers keep to it --------------


def test_replica_json_records_encryption_and_writers_keep_to_it():
    store = MemoryStorage()
    sealed = AgeStorage(store, [RECIPIENT])
    replica_meta.ensure(sealed, "/data/app.db")
    meta = json.loads(store.get(layout.REPLICA_META))
    assert meta["encryption"]["scheme"] == "age" and meta["encryption"]["recipients"] == list(sealed.fingerprints)
    assert RECIPIENT not in json.dumps(meta) and str(IDENTITY) not in json.dumps(meta)
    sealed.put(layout.segment_key(GEN, 2, 2, 1, 1), segment_bytes(2))
    with pytest.raises(Permanent, match="age-encrypted: refusing to write plaintext"):
        replica_meta.ensure(store, "/data/app.db")
    store.delete_many([layout.REPLICA_META])  # replica.json gone: the objects still tell
    with pytest.raises(Permanent, match="age-encrypted: refusing to write plaintext"):
        replica_meta.ensure(store, "/data/app.db")

    plain = MemoryStorage()
    replica_meta.ensure(plain, "/data/app.db")
    plain.put(layout.segment_key(GEN, 2, 2, 1, 1), segment_bytes(2))
    with pytest.raises(Permanent, match="holds plaintext objects: refusing to add age-encrypted"):
        replica_meta.ensure(AgeStorage(plain, [RECIPIENT]), "/data/app.db")
    empty = MemoryStorage()
    replica_meta.ensure(empty, "/data/app.db")  # plaintext, but nothing in it yet
    replica_meta.ensure(AgeStorage(empty, [RECIPIENT]), "/data/app.db")
    assert "encryption" in json.loads(empty.get(layout.REPLICA_META))


# -- a real replicator, the compactor, restore -----------------------------------------------


class Clock:
    def __init__(self, now: int):
        self.now = now

    def __call__(self) -> int:
        return self.now


def _history(tmp_path, replica: ReplicaConfig, marker: bytes, hours: int = 30, per_hour: int = 2):
    """Hours of simulated history; every row holds `marker` beside random bytes (so that zstd
    stores it as a raw literal: the plaintext control must find it)."""
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    conn.set_busy_timeout(2000)
    list(conn.execute("PRAGMA journal_mode=wal; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)"))
    clock = Clock(START_NS)
    cfg = DbConfig(path=str(db), replicas=(replica,), monitor_interval_s=0.05)
    states: dict[int, str] = {}
    rep = DbReplicator(cfg, clock_ns=clock)
    rep.open()
    for hour in range(hours):
        for _ in range(per_hour):
            clock.now += HOUR // per_hour
            conn.execute("INSERT INTO t(v) VALUES (?)", (os.urandom(700) + marker + os.urandom(700),))
            rep.step()
            states[rep.tail.pos.txid] = content_hash(db)
            wait_for(lambda: rep.shippers[0].shipped_txid >= rep.tail.pos.txid, 30, "the upload", interval=0.002)
    rep.stop()
    assert rep.join()
    conn.close()
    return db, states, clock.now, cfg


def _all_bytes(storage) -> list[tuple[str, bytes]]:
    store = raw(storage)
    return [(o.key, store.get(o.key)) for o in store.list("")]


@pytest.mark.parametrize("encrypted", [True, False], ids=["age", "plaintext"])
def test_replicate_compact_restore_and_no_plaintext_leaves(tmp_path, replica, encrypted):
    marker = b"MARKER-" + os.urandom(12).hex().encode() + b"-PLANTED"
    rcfg = dataclasses.replace(replica, age=age()) if encrypted else replica
    db, states, end_ns, _ = _history(tmp_path, rcfg, marker)
    storage = open_storage(rcfg)
    policy = Policy(retention_s=None, snapshot_ratio=0.5, min_snapshot_history_bytes=0)
    comp = Compactor(storage, policy, clock_ns=lambda: end_ns + HOUR)
    plan, _ = comp.plan()
    assert plan.merges and plan.syntheses
    summary = comp.run_pass()
    assert summary.merged_outputs == len(plan.merges) and summary.snapshots == len(plan.syntheses)
    out = tmp_path / "out.db"
    for txid in (min(states), sorted(states)[len(states) // 2], max(states)):
        out.unlink(missing_ok=True)
        restore(storage, out, Target(txid=txid), now_ns=lambda: end_ns + HOUR)
        assert content_hash(out) == states[txid]
    objects = _all_bytes(storage)
    assert len(objects) > 10
    leaking = [k for k, data in objects if marker in data]
    if encrypted:
        assert leaking == [], leaking
        sealed = [k for k, _ in objects if layout.parse_key(k)]
        assert sealed and all(raw(storage).get(k).startswith(AGE_MAGIC) for k in sealed)
    else:
        assert leaking, "the control found no marker: the test could not fail"


def test_encrypted_replica_refuses_plaintext_and_keyless_workers(tmp_path, replica):
    marker = b"x"
    rcfg = dataclasses.replace(replica, age=age())
    db, states, end_ns, cfg = _history(tmp_path, rcfg, marker, hours=8)
    storage = open_storage(rcfg)
    before = sorted(o.key for o in storage.list(""))

    # A replicator without age: its shipper refuses, and writes nothing.
    plain_cfg = dataclasses.replace(cfg, replicas=(replica,))
    conn = apsw.Connection(str(db))
    rep = DbReplicator(plain_cfg)
    rep.open()
    conn.execute("INSERT INTO t(v) VALUES ('more')")
    rep.step()
    wait_for(lambda: rep.shippers[0].last_error is not None, 30, "the refusal")
    assert "age-encrypted: refusing to write plaintext" in rep.shippers[0].last_error
    rep.stop()
    rep.join()
    conn.close()
    assert sorted(o.key for o in storage.list("")) == before

    # A compactor without age refuses; one with recipients only deletes but never merges.
    with pytest.raises(Permanent, match="age-encrypted"):
        Compactor(open_storage(replica), Policy(retention_s=3600)).run_pass()
    policy = Policy(retention_s=2 * 3600, snapshot_ratio=0.5, min_snapshot_history_bytes=0)
    keyless = Compactor(open_storage(dataclasses.replace(replica, age=age(identities=False))), policy,
                        clock_ns=lambda: end_ns + HOUR)
    with_key, _ = Compactor(storage, policy, clock_ns=lambda: end_ns + HOUR).plan()
    assert with_key.syntheses or with_key.merges  # work an identity could do ...
    dry = keyless.run_pass(dry_run=True).plan_lines  # ... is not what --dry-run shows without one
    assert dry == tuple(describe_plan(keyless.plan()[0]))
    assert not [line for line in dry if line.startswith(("merge", "build"))], dry
    summary = keyless.run_pass()
    assert summary.merged_outputs == 0 and summary.snapshots == 0

    # Restore: without an identity, or with the wrong one, one line each.
    out = tmp_path / "out.db"
    with pytest.raises(ReplicatorError, match="age-encrypted and no age identity was given"):
        restore(open_storage(replica), out)
    with pytest.raises(RestoreError, match="none of the age identities given opens it"):
        restore(open_storage(dataclasses.replace(replica, age=age(identity=OTHER))), out)
    assert not out.exists()
    restore(storage, out, now_ns=lambda: end_ns + HOUR)
    assert content_hash(out) == states[max(states)]


def test_a_swapped_segment_fails_restore_with_the_integrity_line(tmp_path):
    path = tmp_path / "replica"
    rcfg = ReplicaConfig(name="file", url=f"file://{path}", type="file", path=str(path), age=age())
    _, states, end_ns, _ = _history(tmp_path, rcfg, b"m", hours=3)
    storage = open_storage(rcfg)
    segs = [o.key for o in storage.list(layout.GENERATIONS) if isinstance(layout.parse_key(o.key), layout.SegmentInfo)]
    assert len(segs) >= 2
    # The older segment's object also under the newer one's name (a replay: every name planned
    # is present, and the body under the last one holds an older transaction).
    (path / segs[-1]).write_bytes((path / segs[0]).read_bytes())
    with pytest.raises(RestoreError, match="swapped or replayed under another name"):
        restore(storage, tmp_path / "out.db", now_ns=lambda: end_ns + HOUR)
    assert not (tmp_path / "out.db").exists()


# -- the command line ------------------------------------------------------------------------


def test_cli_restore_with_age_identity_files(tmp_path):
    path = tmp_path / "replica"
    rcfg = ReplicaConfig(name="file", url=f"file://{path}", type="file", path=str(path), age=age())
    _, states, _, _ = _history(tmp_path, rcfg, b"m", hours=2)
    keyfile = tmp_path / "key.txt"
    keyfile.write_text(f"# created: now\n{IDENTITY}\n")
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(f"{OTHER}\n")
    runner = CliRunner()
    url = f"file://{path}"
    res = runner.invoke(cli, ["restore", url, "-o", str(tmp_path / "a.db")])
    assert res.exit_code != 0 and "no age identity was given" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(cli, ["restore", url, "-o", str(tmp_path / "b.db"), "--age-identity", str(wrong)])
    assert res.exit_code != 0 and "none of the age identities given opens it" in res.output
    assert str(OTHER) not in res.output and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(cli, ["restore", url, "-o", str(tmp_path / "c.db"), "--age-identity", str(keyfile)])
    assert res.exit_code == 0, res.output
    assert content_hash(tmp_path / "c.db") == states[max(states)]
    res = runner.invoke(cli, ["verify", url, "--age-identity", str(keyfile)])
    assert res.exit_code == 0 and res.output.startswith("ok:"), res.output
    res = runner.invoke(cli, ["verify", url, "--age-identity", str(tmp_path / "missing.txt")])
    assert res.exit_code == 2 and "--age-identity" in res.output and "cannot read" in res.output
    res = runner.invoke(cli, ["snapshots", url, "--age-identity", str(keyfile)])
    assert res.exit_code == 0 and GEN[:2] in res.output
    # -c: the config's age keys, for a URL it names
    conf = tmp_path / "r.yml"
    conf.write_text(f"dbs:\n- path: {tmp_path / 'app.db'}\n  replicas:\n  - url: {url}\n"
                    f"    age: {{identities: [{keyfile}]}}\n")
    res = runner.invoke(cli, ["restore", url, "-c", str(conf), "-o", str(tmp_path / "d.db")])
    assert res.exit_code == 0, res.output
