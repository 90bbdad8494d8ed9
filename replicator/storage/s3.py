"""S3 and S3-compatible backend (boto3), translating every botocore failure into base.py errors.

Callers never see botocore exceptions, and no message carries credentials: errors name the
replica URL (s3://bucket/prefix), the key, and the S3 error code / HTTP status only, never the
server's free-text message (which may echo request details).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import itertools
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, Iterable, Iterator, Sequence
from urllib.parse import urlsplit

import botocore.exceptions as bce
import botocore.loaders
import botocore.session
import urllib3.exceptions
from botocore.config import Config

from ..config import S3Options
from ..durations import parse_duration
from ..errors import ConfigError
from .base import (
    AlreadyExists,
    NotFound,
    ObjectInfo,
    Permanent,
    PreconditionFailed,
    StorageError,
    Throttled,
    Transient,
    Unsupported,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0  # per socket read: how long a stalled store holds a request
READ_TIMEOUT_ENV = "REPLICATOR_S3_READ_TIMEOUT"  # overrides READ_TIMEOUT_S (a duration)
BOTO_MAX_ATTEMPTS = 3  # botocore retries single requests (e.g. one part); RetryingStorage retries verbs
DELETE_BATCH = 1000  # DeleteObjects limit
MAX_PARTS = 10_000  # CompleteMultipartUpload limit
_READ_BUFFER = 256 << 10

_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
_CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict", "412"}
_THROTTLE = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
             "TooManyRequests", "TooManyRequestsException", "RequestThrottled", "503"}
_TRANSIENT = {"RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
              "OperationAborted", "PriorRequestNotComplete", "NoSuchUpload"}
_AUTH = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
         "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "403"}
_UNSUPPORTED = {"NotImplemented", "501"}

# Raised by socket/HTTP layers below botocore (e.g. while a body streams).
_NETWORK_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError, TimeoutError)


def _classify(code: str, status: int | None) -> tuple[type[StorageError], str, bool]:
    """(error class, short reason, whether it concerns the whole bucket) for a code/status."""
    tag = f"{code}, HTTP {status}" if status and code != str(status) else code or f"HTTP {status}"
    if code == "NoSuchBucket":
        return Permanent, "no such bucket", True
    if code in _NOT_FOUND or status == 404:
        return NotFound, "not found", False
    if code in _CONFLICT or status == 412:
        return PreconditionFailed, f"precondition failed ({tag})", False
    if code in _AUTH or status == 403:
        return Permanent, f"access denied ({tag}); check credentials, region and bucket policy", True
    if code in _UNSUPPORTED or status == 501:
        return Unsupported, f"not supported by this store ({tag})", False
    if code in _THROTTLE or status in (429, 503):
        return Throttled, f"throttled by the store ({tag})", False
    if code in _TRANSIENT or (status is not None and status >= 500):
        return Transient, f"server error ({tag})", False
    return Permanent, f"request rejected ({tag})", False


class _Redact(logging.Filter):
    """botocore logs each request at DEBUG, signed headers and all: an SSE-C key would be
    in them. Every botocore logger gets this filter, which cuts the keys out of records."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, key: bytes) -> None:
        import base64

        self.secrets |= {base64.b64encode(key).decode(), key.hex(), repr(key)[2:-1]}
        for name in list(logging.root.manager.loggerDict):
            if name.split(".")[0] in ("botocore", "boto3", "s3transfer", "urllib3"):
                logger = logging.getLogger(name)
                if self not in logger.filters:
                    logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if any(secret in text for secret in self.secrets):
            for secret in self.secrets:
                text = text.replace(secret, "***")
            record.msg, record.args = text, ()
        return True


_REDACT = _Redact()


class _Body(io.RawIOBase):
    """A botocore StreamingBody whose read errors arrive as StorageErrors."""

    def __init__(self, body: Any, storage: S3Storage, key: str):
        self._body, self._storage, self._key = body, storage, key

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        with self._storage._errors(self._key):
            data = self._body.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes, looping over short reads (pipes and sockets return less)."""
    buf = bytearray()
    while len(buf) < size:
        chunk = stream.read(size - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def read_timeout_s(environ: Any = os.environ) -> float:
    """READ_TIMEOUT_S, or REPLICATOR_S3_READ_TIMEOUT (seconds or a duration) when set.

    An environment variable rather than a config key: like AWS_ENDPOINT_URL_S3 it reaches
    `replicator replicate DB s3://...` too, which has no config file. Fault tests set it so
    a store that stalls costs them seconds, not minutes; operators may want it either way.
    """
    raw = environ.get(READ_TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return READ_TIMEOUT_S
    try:
        value = float(raw)  # bare seconds
    except ValueError:
        try:
            value = parse_duration(raw)
        except ValueError:
            value = 0.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"{READ_TIMEOUT_ENV}: expected a positive duration (e.g. 30s, 2.5s, 500ms), "
                          f"got {raw!r}")
    return value


_loader_lock = threading.Lock()
_loader: Any = None


class _ServiceNames(Sequence[str]):
    """The services a loader has models of, for `in` alone without listing them all."""

    def __init__(self, loader: "_Loader", type_name: str):
        self._loader, self._type_name = loader, type_name

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            return False
        try:
            return bool(self._loader.list_api_versions(name, self._type_name))
        except bce.DataNotFoundError:
            return False

    def _all(self) -> list[str]:
        return self._loader.all_services(self._type_name)

    def __getitem__(self, i: Any) -> Any:
        return self._all()[i]

    def __len__(self) -> int:
        return len(self._all())


class _Loader(botocore.loaders.Loader):
    """botocore's model loader, minus a cost paid by every process: before loading a model
    it lists every service it has (~450 directories, ~2700 stats and ~900 listdirs: 60 ms
    warm, ~200 ms from a cold cache, a tenth of a small restore) only to check that the one
    asked for is among them. Here that check looks in the named service's directory; the
    whole list is still built when something iterates it."""

    def list_available_services(self, type_name: str) -> Sequence[str]:  # type: ignore[override]
        return _ServiceNames(self, type_name)

    def all_services(self, type_name: str) -> list[str]:
        return botocore.loaders.Loader.list_available_services(self, type_name)


def _session() -> botocore.session.Session:
    """A fresh botocore session (so the environment and credential chain are read now) that
    shares the parsed API models: loading those costs ~0.2 s per session."""
    global _loader
    session = botocore.session.Session()
    with _loader_lock:
        if _loader is None:
            default = session.get_component("data_loader")  # honours AWS_DATA_PATH
            _loader = _Loader(extra_search_paths=default.search_paths, include_default_search_paths=False)
        session.register_component("data_loader", _loader)
    return session


class S3Storage:
    """Objects under s3://bucket/prefix; keys are relative to the prefix."""

    def __init__(self, options: S3Options):
        self._bucket = options.bucket
        self._root = options.prefix.strip("/") + "/" if options.prefix.strip("/") else ""
        self.url = f"s3://{options.bucket}/{options.prefix.strip('/')}".rstrip("/")
        self._part_size = max(options.part_size, 5 << 20)  # S3's minimum for all but the last part
        self._concurrency = max(1, options.concurrency)
        self.conditional_writes = True  # until the store answers a conditional PUT with 501
        # SSE-C goes with every request that reads or writes an object's bytes (PUT, GET,
        # HEAD, parts); SSE-KMS only with the writes (S3 rejects its headers on a GET).
        self._sse_read: dict[str, Any] = {}
        self._sse_write: dict[str, Any] = {}
        if options.sse_customer_key:
            self._sse_read = {"SSECustomerAlgorithm": options.sse_customer_algorithm,
                              "SSECustomerKey": options.sse_customer_key}  # raw: botocore encodes it
            self._sse_write = dict(self._sse_read)
        elif options.sse_kms_key_id:
            self._sse_write = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": options.sse_kms_key_id}
        if bool(options.access_key_id) != bool(options.secret_access_key):
            raise Permanent(f"{self.url}: access key id and secret access key must be given together")
        read_timeout = read_timeout_s()
        try:
            session = _session()
            config = Config(
                # botocore reads AWS_DEFAULT_REGION but not AWS_REGION, which other SDKs honour.
                region_name=(options.region or session.get_config_variable("region")
                             or os.environ.get("AWS_REGION") or "us-east-1"),
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=read_timeout,
                retries={"mode": "standard", "max_attempts": BOTO_MAX_ATTEMPTS},
                max_pool_connections=max(10, self._concurrency + 4),
                # S3-compatible stores often reject the newer default CRC trailers.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"} if options.force_path_style else None,
            )
            # Credentials only when configured; otherwise botocore's default chain (env,
            # profile, instance role) applies.
            self._client = session.create_client(
                "s3", endpoint_url=options.endpoint or None, verify=not options.skip_verify, config=config,
                aws_access_key_id=options.access_key_id or None,
                aws_secret_access_key=options.secret_access_key or None)
        except (bce.BotoCoreError, ValueError) as err:
            raise Permanent(f"{self.url}: invalid S3 configuration ({type(err).__name__})") from None
        if options.sse_customer_key:
            _REDACT.add(options.sse_customer_key)  # after the client: its modules' loggers exist

    # -- error handling -------------------------------------------------------------------

    def _where(self, key: str | None) -> str:
        return f"{self.url}/{key}" if key else self.url

    def _endpoint(self) -> str:
        parts = urlsplit(self._client.meta.endpoint_url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")

    def _translate(self, err: BaseException, key: str | None) -> StorageError:
        if isinstance(err, bce.ClientError):
            error = err.response.get("Error", {})
            code = str(error.get("Code") or "")
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            cls, reason, bucket_level = _classify(code, status)
            return cls(f"{self.url if bucket_level else self._where(key)}: {reason}")
        where = self._where(key)
        if isinstance(err, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return Permanent(f"{where}: no S3 credentials found",
                             "set access-key-id/secret-access-key or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
        if isinstance(err, bce.SSLError) and "certificate verify failed" in str(err).lower():
            return Permanent(f"{where}: TLS certificate of {self._endpoint()} not trusted",
                             "fix the certificate or set skip-verify: true")
        if isinstance(err, (bce.EndpointConnectionError, bce.ConnectTimeoutError)):
            return Transient(f"{where}: cannot connect to {self._endpoint()}")
        if isinstance(err, (bce.ReadTimeoutError, TimeoutError)):
            return Transient(f"{where}: timed out talking to {self._endpoint()}")
        if isinstance(err, (bce.ConnectionError, bce.HTTPClientError, bce.ResponseStreamingError,
                            bce.IncompleteReadError, *_NETWORK_ERRORS)):
            return Transient(f"{where}: connection to {self._endpoint()} failed ({type(err).__name__})")
        if isinstance(err, bce.CredentialRetrievalError):
            return Transient(f"{where}: could not fetch credentials ({type(err).__name__})")
        return Permanent(f"{where}: S3 client error ({type(err).__name__})")

    @contextlib.contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except (bce.ClientError, bce.BotoCoreError, *_NETWORK_ERRORS) as err:
            raise self._translate(err, key) from None

    def _full(self, key: str) -> str:
        return self._root + key

    # -- writes ----------------------------------------------------------------------------

    def _put_object(self, key: str, data: bytes, **conditions: str) -> str:
        with self._errors(key):
            return self._client.put_object(Bucket=self._bucket, Key=self._full(key), Body=data,
                                           **conditions, **self._sse_write)["ETag"]

    def put(self, key: str, data: bytes | BinaryIO) -> None:
        """Bytes and streams that fit one part: one PUT. Longer streams: parallel multipart."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            self._put_object(key, bytes(data))
            return
        head = [_read_full(data, self._part_size)]
        if len(head[0]) == self._part_size:
            head.append(_read_full(data, self._part_size))
        if len(head) == 1 or not head[1]:
            self._put_object(key, head[0])
            return
        self._put_multipart(key, data, head)

    def _put_multipart(self, key: str, stream: BinaryIO, head: list[bytes]) -> None:
        """Upload parts on `concurrency` threads; `head` (already-read parts) is consumed.

        A semaphore bounds parts held in memory to concurrency + 1 (uploading + being read).
        Any failure aborts the upload so no orphaned parts keep costing storage.
        """
        full = self._full(key)
        with self._errors(key):
            upload_id = self._client.create_multipart_upload(Bucket=self._bucket, Key=full,
                                                           **self._sse_write)["UploadId"]
        slots = threading.Semaphore(self._concurrency + 1)
        failed = threading.Event()

        def upload(number: int, body: bytes) -> dict[str, Any]:
            try:
                etag = self._client.upload_part(Bucket=self._bucket, Key=full, UploadId=upload_id,
                                                PartNumber=number, Body=body, **self._sse_read)["ETag"]
                return {"PartNumber": number, "ETag": etag}
            except BaseException:
                failed.set()
                raise
            finally:
                slots.release()

        futures: list[Future] = []
        try:
            with self._errors(key):
                with ThreadPoolExecutor(self._concurrency, thread_name_prefix="s3-upload") as pool:
                    for _ in head:
                        slots.acquire()
                    for number in itertools.count(1):
                        if head:
                            body = head.pop(0)
                        else:
                            slots.acquire()
                            body = b"" if failed.is_set() else _read_full(stream, self._part_size)
                            if not body:
                                slots.release()
                                break
                        if number > MAX_PARTS:
                            raise Permanent(f"{self._where(key)}: more than {MAX_PARTS} parts; raise part-size")
                        futures.append(pool.submit(upload, number, body))
                        del body  # the pool holds the only reference until the part is sent
                parts = [f.result() for f in futures]
                self._client.complete_multipart_upload(Bucket=self._bucket, Key=full, UploadId=upload_id,
                                                       MultipartUpload={"Parts": parts}, **self._sse_read)
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=full, UploadId=upload_id)
            raise

    def put_if_absent(self, key: str, data: bytes) -> None:
        try:
            self.put_if_match(key, data, None)
        except PreconditionFailed:
            raise AlreadyExists(f"{self._where(key)} already exists") from None

    def put_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        """Conditional PUT (If-None-Match: * / If-Match: etag), atomic on AWS S3 and most clones.

        A store answering 501 has no conditional writes: that is remembered
        (`conditional_writes` False) and Unsupported raised, then and on every later call,
        without a request. Nothing emulates the condition with a HEAD before the PUT: two
        writers could both pass it.
        """
        if not self.conditional_writes:
            raise Unsupported(f"{self._where(key)}: the store has no conditional writes")
        try:
            return self._put_object(key, bytes(data), **({"IfNoneMatch": "*"} if etag is None
                                                        else {"IfMatch": etag}))
        except NotFound:  # AWS answers If-Match on a missing key with 404 NoSuchKey
            raise PreconditionFailed(f"{self._where(key)} changed concurrently (now absent)") from None
        except Unsupported:
            log.warning("%s: the store has no conditional writes (501 to If-Match/If-None-Match)", self.url)
            self.conditional_writes = False
            raise

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        return self.get_with_etag(key)[0]

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        with self._errors(key):
            resp = self._client.get_object(Bucket=self._bucket, Key=self._full(key), **self._sse_read)
            return resp["Body"].read(), resp["ETag"]

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        """A buffered stream of the object (a ranged GET when offset/length are given)."""
        if length == 0:
            self.stat(key)  # still report a missing key
            return io.BytesIO()
        kwargs = {}
        if offset or length is not None:
            kwargs["Range"] = f"bytes={offset}-{'' if length is None else offset + length - 1}"
        with self._errors(key):
            try:
                resp = self._client.get_object(Bucket=self._bucket, Key=self._full(key), **kwargs,
                                               **self._sse_read)
            except bce.ClientError as err:
                if err.response.get("Error", {}).get("Code") != "InvalidRange":
                    raise
                return io.BytesIO()  # offset at/after the end: no bytes, like a file
        return io.BufferedReader(_Body(resp["Body"], self, key), _READ_BUFFER)  # type: ignore[return-value]

    def stat(self, key: str) -> ObjectInfo:
        """HEAD has no error body, so a missing bucket also reads as NotFound here."""
        with self._errors(key):
            resp = self._client.head_object(Bucket=self._bucket, Key=self._full(key), **self._sse_read)
        return ObjectInfo(key, resp["ContentLength"], resp.get("ETag"))

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Keys under prefix in S3's (UTF-8 byte = code point) order; '/'-suffixed folder
        markers some tools create are skipped (our keys never end in '/')."""
        kwargs = {"Bucket": self._bucket, "Prefix": self._root + prefix}
        if start_after is not None:
            kwargs["StartAfter"] = self._root + start_after
        return self._list(kwargs)

    def _list(self, kwargs: dict[str, str]) -> Iterator[ObjectInfo]:
        n = len(self._root)
        with self._errors():
            for page in self._client.get_paginator("list_objects_v2").paginate(**kwargs):
                for obj in page.get("Contents", ()):
                    if not obj["Key"].endswith("/"):
                        yield ObjectInfo(obj["Key"][n:], obj["Size"], obj.get("ETag"))

    # -- deletes ---------------------------------------------------------------------------

    def delete_many(self, keys: Iterable[str]) -> None:
        """DeleteObjects in batches of 1000; per-key errors (other than absent) raise."""
        it = iter(keys)
        n = len(self._root)
        while batch := list(itertools.islice(it, DELETE_BATCH)):
            with self._errors():
                resp = self._client.delete_objects(
                    Bucket=self._bucket,
                    Delete={"Objects": [{"Key": self._full(k)} for k in batch], "Quiet": True})
            errors = [e for e in resp.get("Errors", ()) if e.get("Code") not in _NOT_FOUND]
            if errors:
                cls, reason, _ = _classify(str(errors[0].get("Code") or ""), None)
                more = f" (and {len(errors) - 1} more keys)" if len(errors) > 1 else ""
                raise cls(f"{self._where(errors[0].get('Key', '')[n:])}: delete failed: {reason}{more}")

    def close(self) -> None:
        self._client.close()
