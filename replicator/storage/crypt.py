"""Client-side encryption with age: a Storage wrapper that seals every object body on its
way out and opens it on its way in, binding each object's name into what age authenticates.

Sealed object = age(recipients, ENVELOPE_MAGIC || u16 len || key || body). age authenticates
the whole plaintext (STREAM chunks with a final-chunk flag, so truncation is caught too); the
key inside must equal the key asked for, so an object swapped, or replayed under another
name, fails as `Integrity` instead of restoring the wrong transactions. Names stay plaintext
(listing and planning need no key); replica.json, the leases and the empty retirement markers
are not sealed: their names or fields are all they hold (docs/design.md, "Encryption").
"""

from __future__ import annotations

import collections
import hashlib
import io
import struct
import tempfile
import threading
from typing import Any, BinaryIO, Iterable, Iterator, Sequence

import pyrage
from pyrage import x25519

from .. import layout
from ..errors import ConfigError
from .base import Integrity, ObjectInfo, Permanent, Storage

AGE_MAGIC = b"age-encryption.org/v1\n"
ENVELOPE_MAGIC = b"RPLAGE01"  # what the plaintext inside the age envelope starts with
ENVELOPE_VERSION = 1
_NAME_LEN = struct.Struct("<H")
_AGE_CHUNK = 64 << 10  # age's STREAM chunk of plaintext; each carries a 16-byte tag
_AGE_TAG = 16
_AGE_NONCE = 16
_HEADER_PROBE = 4096  # bytes read to find the end of an age header (a stanza is ~100 bytes)
SPOOL_MEMORY_BYTES = 32 << 20  # an opened object above this is decrypted to a temp file
_SIZES_KEPT = 256  # plaintext sizes remembered from opens (restore opens, then stats)
_MISSING_IDENTITY_HINT = "pass --age-identity FILE, or give the replica's age.identities in the config"


def _parse_keys(text: str, parse, error: type, what: str, form: str) -> list:
    """One key a line ('#' comments, blank lines skipped); errors name the line, never its text
    (an identity is a secret)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(parse(line))
        except error:
            raise ValueError(f"line {n} is not an age X25519 {what} ({form})") from None
    if not out:
        raise ValueError(f"holds no age {what}")
    return out


def parse_identities(text: str) -> list[x25519.Identity]:
    """age identity file text (one AGE-SECRET-KEY-1... a line) -> identities."""
    return _parse_keys(text, x25519.Identity.from_str, pyrage.IdentityError, "identity", "AGE-SECRET-KEY-1...")


def parse_recipients(text: str) -> list[x25519.Recipient]:
    return _parse_keys(text, x25519.Recipient.from_str, pyrage.RecipientError, "recipient", "age1...")


def fingerprint(recipient: str) -> str:
    """What replica.json records of a recipient: enough to tell keys apart, nothing secret."""
    return "sha256:" + hashlib.sha256(recipient.encode()).hexdigest()[:16]


def is_sealed(key: str) -> bool:
    """Every object but the few whose name or plaintext fields are all they hold."""
    return key not in (layout.REPLICA_META, layout.LEASE, layout.COMPACTOR_LEASE) and layout.parse_retired(key) is None


def plaintext_size(ciphertext_size: int, header_len: int) -> int:
    """Bytes inside an age file of `ciphertext_size` whose header (through the MAC line) is
    `header_len` long: the payload is a nonce, then chunks of up to 64 KiB, each + 16 bytes."""
    payload = ciphertext_size - header_len - _AGE_NONCE
    chunks = max(1, -(-payload // (_AGE_CHUNK + _AGE_TAG)))
    return payload - chunks * _AGE_TAG


def _envelope_header(key: str) -> bytes:
    name = key.encode()
    return ENVELOPE_MAGIC + _NAME_LEN.pack(len(name)) + name


class _Chain(io.RawIOBase):
    """A header, then a stream: what encrypt_io reads (it wants at most n bytes per read)."""

    def __init__(self, head: bytes, tail: BinaryIO):
        self._head, self._tail = head, tail

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if self._head:
            part, self._head = (self._head, b"") if n < 0 else (self._head[:n], self._head[n:])
            return part
        return self._tail.read(n)


class AgeStorage:
    """Wraps a Storage (outside the retry wrapper: retries resend the same ciphertext).

    Writers need recipients only; reads need an identity (`can_decrypt`). Listing, stat and
    deletes never need one.
    """

    sealing = True

    def __init__(self, inner: Storage, recipients: Sequence[str], identities: Sequence[str] = ()):
        self.inner = inner
        self.url = inner.url
        self._identities = [i for text in identities for i in parse_identities(text)]
        recips = [r for text in recipients for r in parse_recipients(text)]
        if not recips:  # a reader's identities imply the recipients (the compactor re-seals)
            recips = [i.to_public() for i in self._identities]
        if not recips:
            raise ConfigError(f"{self.url}: age needs at least one recipient or identity")
        self._recipients = recips
        self.fingerprints = tuple(sorted({fingerprint(str(r)) for r in recips}))
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the identities
        return f"AgeStorage({self.url!r}, recipients={self.fingerprints})"

    @property
    def can_decrypt(self) -> bool:
        return bool(self._identities)

    @property
    def conditional_writes(self) -> bool:
        return self.inner.conditional_writes

    # -- sealing ---------------------------------------------------------------------------

    def seal(self, key: str, data: bytes | bytearray | memoryview) -> bytes:
        return pyrage.encrypt(_envelope_header(key) + bytes(data), self._recipients)

    def _seal_stream(self, key: str, data: BinaryIO) -> BinaryIO:
        out = tempfile.TemporaryFile(prefix="replicator-seal-")
        try:
            pyrage.encrypt_io(_Chain(_envelope_header(key), data), out, self._recipients)
        except pyrage.EncryptError as err:
            out.close()
            raise Permanent(f"{self.url}/{key}: age encryption failed ({err})") from None
        out.seek(0)
        return out  # type: ignore[return-value]

    def _where(self, key: str) -> str:
        return f"{self.url}/{key}"

    def _decrypt_into(self, key: str, src: BinaryIO, out: BinaryIO) -> None:
        if not self._identities:
            raise Permanent(f"{self.url}: the replica is age-encrypted and no age identity was given",
                            _MISSING_IDENTITY_HINT)
        magic = src.read(len(AGE_MAGIC))
        if magic != AGE_MAGIC:
            raise Integrity(f"{self._where(key)}: not age-encrypted (a plaintext or foreign object "
                            "in an encrypted replica)")
        try:
            pyrage.decrypt_io(_Chain(magic, src), out, self._identities)
        except (pyrage.DecryptError, OSError) as err:  # decrypt_io reports a bad payload as OSError
            if "no matching keys" in str(err).lower():
                raise Permanent(f"{self._where(key)}: none of the age identities given opens it "
                                "(wrong key?)", _MISSING_IDENTITY_HINT) from None
            raise Integrity(f"{self._where(key)}: age decryption failed ({err}): the object was "
                            "altered or truncated") from None

    def _check_envelope(self, key: str, head: bytes) -> int:
        """The body's offset in the plaintext, once its header names `key`."""
        fixed = len(ENVELOPE_MAGIC) + _NAME_LEN.size
        if len(head) < fixed or head[:len(ENVELOPE_MAGIC)] != ENVELOPE_MAGIC:
            raise Integrity(f"{self._where(key)}: decrypts, but holds no replicator envelope")
        (n,) = _NAME_LEN.unpack_from(head, len(ENVELOPE_MAGIC))
        name = bytes(head[fixed:fixed + n])
        if name != key.encode():
            shown = name.decode(errors="replace")
            raise Integrity(f"{self._where(key)}: holds the object {shown!r}: swapped or replayed "
                            "under another name")
        return fixed + n

    def open_sealed(self, key: str, data: bytes) -> bytes:
        out = io.BytesIO()
        self._decrypt_into(key, io.BytesIO(data), out)  # type: ignore[arg-type]
        plain = out.getbuffer()
        start = self._check_envelope(key, bytes(plain[:len(ENVELOPE_MAGIC) + _NAME_LEN.size + (1 << 16)]))
        self._remember(key, len(plain) - start)
        return bytes(plain[start:])

    def _remember(self, key: str, size: int) -> None:
        with self._lock:
            self._sizes[key] = size
            self._sizes.move_to_end(key)
            while len(self._sizes) > _SIZES_KEPT:
                self._sizes.popitem(last=False)

    # -- Storage ---------------------------------------------------------------------------

    def put(self, key: str, data: bytes | BinaryIO) -> None:
        if not is_sealed(key):
            return self.inner.put(key, data)
        if isinstance(data, (bytes, bytearray, memoryview)):
            return self.inner.put(key, self.seal(key, data))
        with self._seal_stream(key, data) as sealed:
            self.inner.put(key, sealed)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self.inner.put_if_absent(key, self.seal(key, data) if is_sealed(key) else data)

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        return self.inner.put_if_match(key, self.seal(key, data) if is_sealed(key) else data, etag)

    def get(self, key: str) -> bytes:
        data = self.inner.get(key)
        return self.open_sealed(key, data) if is_sealed(key) else data

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        data, etag = self.inner.get_with_etag(key)
        return (self.open_sealed(key, data) if is_sealed(key) else data), etag

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        """age authenticates whole chunks from the start: the object is decrypted whole (into
        memory, or a temp file past SPOOL_MEMORY_BYTES) and the range is cut from that."""
        if not is_sealed(key):
            return self.inner.open(key, offset, length)
        out = tempfile.SpooledTemporaryFile(SPOOL_MEMORY_BYTES, prefix="replicator-open-")
        try:
            with self.inner.open(key) as src:
                self._decrypt_into(key, src, out)  # type: ignore[arg-type]
            total = out.tell()
            out.seek(0)
            start = self._check_envelope(key, out.read(len(ENVELOPE_MAGIC) + _NAME_LEN.size + (1 << 16)))
            self._remember(key, total - start)
            out.seek(start + offset)
            if length is not None:
                with out:
                    return io.BytesIO(out.read(length))
            return out  # type: ignore[return-value]
        except BaseException:
            out.close()
            raise

    def stat(self, key: str) -> ObjectInfo:
        """Sizes are of the body, as callers wrote it: from the last open, else from the
        ciphertext's length and its age header's (a ranged read; no identity needed)."""
        info = self.inner.stat(key)
        if not is_sealed(key):
            return info
        with self._lock:
            size = self._sizes.get(key)
        if size is None:
            size = self._size_from_header(key, info.size)
        return ObjectInfo(key, size, info.etag)

    def _size_from_header(self, key: str, ciphertext_size: int) -> int:
        probe = _HEADER_PROBE
        while True:
            with self.inner.open(key, 0, probe) as f:
                head = f.read()
            end = head.find(b"\n--- ")
            eol = head.find(b"\n", end + 1) if end >= 0 else -1
            if eol >= 0:
                break
            if not head.startswith(AGE_MAGIC) or len(head) < probe:
                raise Integrity(f"{self._where(key)}: not age-encrypted (no age header)")
            probe *= 4
        return plaintext_size(ciphertext_size, eol + 1) - len(_envelope_header(key))

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix, start_after)

    def delete_many(self, keys: Iterable[str]) -> None:
        self.inner.delete_many(keys)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # requests, sync...: the backend's own
        return getattr(self.inner, name)
