"""replica.json is the bucket writer's too: whatever it holds, reading and checking it ends
in a typed error or a decision, never a crash (hypothesis: random bytes and random JSON)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from replicator import layout, replica_meta
from replicator.errors import ReplicatorError
from replicator.storage import StorageError
from replicator.storage.memory import MemoryStorage

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                  max_size=4), max_leaves=12)


def _with_meta(body: bytes) -> MemoryStorage:
    storage = MemoryStorage()
    storage.put(layout.REPLICA_META, body)
    return storage


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), _json.map(lambda v: json.dumps(v).encode()),
                 st.dictionaries(st.sampled_from(["encryption", "format_version", "db"]), _json, max_size=3)
                 .map(lambda v: json.dumps(v).encode())))
def test_any_replica_json_is_a_decision_or_a_typed_error(body):
    storage = _with_meta(body)
    for check in (replica_meta.check_readable, lambda s: replica_meta.check_writable(s)):
        try:
            check(storage)
        except (ReplicatorError, StorageError):
            pass
