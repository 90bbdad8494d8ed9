"""The incremental database checksum always equals the checksum of the file from scratch."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from replicator.dbhash import DbChecksum, file_checksum, page_hash
from strategies import MAX_PGNO, PAGE_SIZE, pages

ZERO = bytes(PAGE_SIZE)

writes = st.tuples(st.just("write"), st.integers(1, MAX_PGNO), pages())
resizes = st.tuples(st.just("resize"), st.integers(0, MAX_PGNO))


class Model:
    """The database file as a bytearray: writes past the end zero-fill, resize truncates or
    zero-extends (what SQLite's commit size does to the file)."""

    def __init__(self) -> None:
        self.data = bytearray()

    @property
    def n_pages(self) -> int:
        return len(self.data) // PAGE_SIZE

    def write(self, pgno: int, page: bytes) -> None:
        if pgno > self.n_pages:
            self.resize(pgno)
        self.data[(pgno - 1) * PAGE_SIZE: pgno * PAGE_SIZE] = page

    def resize(self, n: int) -> None:
        if n < self.n_pages:
            del self.data[n * PAGE_SIZE:]
        else:
            self.data += bytes((n - self.n_pages) * PAGE_SIZE)

    def checksum(self) -> int:
        return file_checksum(io.BytesIO(bytes(self.data)), PAGE_SIZE, self.n_pages)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(writes, resizes), max_size=25))
def test_incremental_equals_from_scratch(ops):
    ck, model = DbChecksum(PAGE_SIZE), Model()
    for op in ops:
        if op[0] == "write":
            ck.update(op[1], op[2])
            model.write(op[1], op[2])
        else:
            ck.resize(op[1])
            model.resize(op[1])
        assert ck.n_pages == model.n_pages
        assert ck.value == model.checksum()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(pages(), min_size=1, max_size=3), max_size=4))
def test_append_pages_equals_page_by_page_updates(chunks):
    bulk, single = DbChecksum(PAGE_SIZE), DbChecksum(PAGE_SIZE)
    for chunk in chunks:
        bulk.append_pages(b"".join(chunk))
        for page in chunk:
            single.update(single.n_pages + 1, page)
    assert (bulk.value, list(bulk.hashes)) == (single.value, list(single.hashes))


def test_shrink_then_grow_brings_back_zeros_not_the_old_pages():
    ck = DbChecksum(PAGE_SIZE)
    for pgno in range(1, 6):
        ck.update(pgno, bytes([pgno]) * PAGE_SIZE)
    ck.resize(2)
    ck.resize(5)
    expected = file_checksum(io.BytesIO(b"\x01" * PAGE_SIZE + b"\x02" * PAGE_SIZE), PAGE_SIZE, 5)
    assert ck.value == expected
    assert ck.hashes[2:].tolist() == [page_hash(p, ZERO) for p in (3, 4, 5)]


def test_short_file_reads_as_zeros():
    data = b"\x07" * PAGE_SIZE
    assert (file_checksum(io.BytesIO(data), PAGE_SIZE, 3)
            == file_checksum(io.BytesIO(data + bytes(2 * PAGE_SIZE)), PAGE_SIZE, 3))
    # ...and only the first n_pages count.
    assert file_checksum(io.BytesIO(data + b"junk" * 200), PAGE_SIZE, 1) == file_checksum(io.BytesIO(data), PAGE_SIZE, 1)


def test_the_page_number_matters():
    a, b = b"\x01" * PAGE_SIZE, b"\x02" * PAGE_SIZE
    assert page_hash(1, a) != page_hash(2, a)
    assert (file_checksum(io.BytesIO(a + b), PAGE_SIZE, 2)
            != file_checksum(io.BytesIO(b + a), PAGE_SIZE, 2))  # XOR alone would not see a swap


def test_empty_database():
    assert DbChecksum(PAGE_SIZE).value == 0 == file_checksum(io.BytesIO(b""), PAGE_SIZE, 0)


def test_copy_is_independent():
    ck = DbChecksum(PAGE_SIZE)
    ck.update(1, b"\x01" * PAGE_SIZE)
    other = ck.copy()
    other.update(1, b"\x02" * PAGE_SIZE)
    other.resize(4)
    assert ck.value == file_checksum(io.BytesIO(b"\x01" * PAGE_SIZE), PAGE_SIZE, 1)
    assert ck.n_pages == 1
    assert other.value != ck.value


def test_large_files_read_in_chunks(monkeypatch):
    from replicator import dbhash

    monkeypatch.setattr(dbhash, "READ_CHUNK", 3 * PAGE_SIZE)  # several reads, last one partial
    image = b"".join(bytes([i]) * PAGE_SIZE for i in range(1, 9))
    ck = DbChecksum(PAGE_SIZE)
    for i in range(8):
        ck.update(i + 1, image[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
    assert file_checksum(io.BytesIO(image), PAGE_SIZE, 8) == ck.value
    ck.resize(10)
    assert file_checksum(io.BytesIO(image), PAGE_SIZE, 10) == ck.value
