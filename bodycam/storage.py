"""Object store over boto3: originals keyed by SHA-256 and never overwritten, crops, exports."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any, ParamSpec, TypeVar

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.utils import determine_content_length

from bodycam.errors import NotFoundError, TransientError

log = logging.getLogger(__name__)
ORIGINALS = "originals/"
INCOMING = "incoming/"
THUMBNAILS = "thumbnails/"
REDACTIONS = "redactions/"
# Where the bytes of an original that is stored already are sent, to be dropped: a multipart
# upload there is never completed, so no object ever stands under it (see OriginalUpload).
RESENT = "resent/"
# 8 MiB parts: with 16 MiB ones a 2 GB upload streamed to the store as it arrived grew the
# server's peak memory by 165 MB (8 MiB: 87 MB; tests/test_upload_memory.py allows 150).
# An upload larger than MAX_PARTS parts of this size uses larger parts.
PART_BYTES = 8 * 1024 * 1024
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
# Parts of one original sent at once: on the embedded stack a 111 MB file took 0.90 s one part
# at a time and 0.74 s four at a time (16 MiB parts; the file was hashed beforehand).
UPLOAD_THREADS = 4


def read_full(stream: IO[bytes], n: int) -> bytes:
    """Read n bytes, looping over short reads; fewer only at the end of the stream."""
    chunks: list[bytes] = []
    left = n
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class S3Config:
    """Where the object store is and how to sign requests."""

    endpoint_url: str | None
    access_key: str | None
    secret_key: str | None
    bucket: str
    region: str = "us-east-1"


@dataclass(frozen=True)
class StoredObject:
    """An original stored by `put_original`: its key, size and SHA-256."""

    key: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    """A listed object."""

    key: str
    size_bytes: int
    etag: str
    modified: str = ""  # when it was last put, as the store says (ISO 8601)


P = ParamSpec("P")
R = TypeVar("R")


def _unreachable(endpoint: str | None, exc: Exception) -> TransientError | None:
    """A TransientError naming the store and what to do, for errors of a store that is down
    or failing (connection refused or reset, timeouts, 5xx); None for anything else. A
    store that answers is running: its 5xx (a full disk's among them) is named with its code,
    not taken for one that is down (`bodycam up` was the advice, and `up` repeated it: bb41)."""
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status < 500:
            return None
        code = str(exc.response.get("Error", {}).get("Code") or "no error code")[:60]
        return TransientError(f"object store (S3) at {endpoint} answered HTTP {status} ({code}):"
                              " it is failing or out of disk space (`bodycam status` shows the"
                              " embedded store's disk); retry once it stores again")
    if isinstance(exc, BotoCoreError):
        return TransientError(f"object store (S3) at {endpoint} unreachable "
                              f"({type(exc).__name__}): start it (`bodycam up` for the embedded"
                              " stack) or check BODYCAM_S3_ENDPOINT_URL, then retry")
    return None


def _missing(exc: ClientError) -> bool:
    """Whether the store answered that the object does not exist."""
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _version(answer: dict[str, Any]) -> str | None:
    """What identifies an object's bytes in a HEAD or GET answer (ETag, size, time written),
    or None when the store gives no ETag."""
    etag = answer.get("ETag")
    return f"{etag}/{answer['ContentLength']}/{answer.get('LastModified')}" if etag else None


def _guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a failing store into a TransientError with one clean line (no boto3 traceback).

    For the methods of an ObjectStore, or of an object whose `store` is one (OriginalUpload).
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            store = getattr(args[0], "store", args[0])
            assert isinstance(store, ObjectStore)
            # A file sent in parts wraps the store's answer (its message names a temporary
            # file): a full store failed a render's three attempts in two minutes (bb41).
            cause = exc.__context__ if isinstance(exc, S3UploadFailedError) else exc
            mapped = (_unreachable(store.cfg.endpoint_url, cause)
                      if isinstance(cause, BotoCoreError | ClientError) else None)
            if mapped is None:
                raise
            raise mapped from exc

    return wrapper


def original_key(sha256: str) -> str:
    """The content-addressed key of an original upload."""
    return f"{ORIGINALS}{sha256[:2]}/{sha256}"


# botocore asks the server for "100 Continue" before it sends any file-like body, one more
# round trip per PutObject (an anchor write took 4.1 ms with it, 3.3 ms without, p50 on the
# embedded stack). The handshake saves sending a large body the server would refuse; below
# this size it is dropped and the body goes with the headers.
SMALL_PUT = 1 << 20


def _no_continue_for_small_bodies(params: dict[str, Any], **_: Any) -> None:
    size = determine_content_length(params.get("body"))
    if size is not None and size < SMALL_PUT:
        params.get("headers", {}).pop("Expect", None)


class ObjectStore:
    """The one way Bodycam talks to S3; boto3 shapes stay inside this class."""

    def __init__(self, cfg: S3Config) -> None:
        self.cfg = cfg
        self.bucket = cfg.bucket
        self._client = boto3.client(
            "s3",
            endpoint_url=cfg.endpoint_url,
            aws_access_key_id=cfg.access_key,
            aws_secret_access_key=cfg.secret_key,
            region_name=cfg.region,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=10,
                read_timeout=120,
            ),
        )
        self._client.meta.events.register_last("before-call.s3",
                                               _no_continue_for_small_bodies)

    @_guarded
    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                self._client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if "BucketAlreadyOwnedByYou" not in str(exc):
                    raise TransientError(f"cannot create bucket {self.bucket}: {exc}") from exc

    @_guarded
    def exists(self, key: str) -> bool:
        """Whether an object exists."""
        return self._size(key) is not None

    @_guarded
    def put_original(self, stream: IO[bytes], sha256: str, max_bytes: int) -> StoredObject:
        """Store a file at its content-addressed key, once; an original already there is kept.

        The caller hashed the file (`sha256_file`). The stream is sent through an
        OriginalUpload (see there): nothing becomes visible unless the bytes sent hash to
        `sha256`; otherwise TransientError (the file changed), or ValueError past max_bytes.
        """
        upload = self.begin_original(sha256, max_bytes)
        try:
            while chunk := read_full(stream, PART_BYTES):
                upload.write(chunk)
            return upload.finish()
        except BaseException:
            upload.abort()
            raise

    @_guarded
    def begin_original(self, sha256: str, max_bytes: int) -> OriginalUpload:
        """An upload of the original that should hash to `sha256`, fed as its bytes arrive."""
        return OriginalUpload(self, sha256, max_bytes)

    def _part(self, key: str, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
        etag = self._client.upload_part(Bucket=self.bucket, Key=key, PartNumber=number,
                                        UploadId=upload_id, Body=body)["ETag"]
        return {"PartNumber": number, "ETag": etag}

    def _size(self, key: str) -> int | None:
        """An object's size, or None when it does not exist."""
        try:
            return int(self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if _missing(exc):
                return None
            raise TransientError(f"cannot read {key}: {exc}") from exc

    @_guarded
    def version_of(self, key: str) -> str | None:
        """What the store says identifies an object's current bytes (its ETag, which the store
        computes from them, with the size and time written), or None when it gives no ETag
        or the object does not exist: bytes written again under the key change it."""
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise TransientError(f"cannot read {key}: {exc}") from exc
        return _version(head)

    @_guarded
    def download_to(self, key: str, path: str) -> None:
        """Copy an object to a local file."""
        try:
            self._client.download_file(self.bucket, key, path)
        except (ClientError, BotoCoreError) as exc:
            raise TransientError(f"cannot download {key}: {exc}") from exc

    @_guarded
    def open_stream(self, key: str, first: int | None = None, last: int | None = None
                    ) -> IO[bytes]:
        """A readable stream of an object's bytes (only bytes first..last, inclusive, when
        given: an HTTP range request served without reading the rest)."""
        extra = {"Range": f"bytes={first}-{'' if last is None else last}"} \
            if first is not None else {}
        body = self._client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"]
        return body

    def sha256_of(self, key: str) -> tuple[str, int] | None:
        """Re-read an object and hash it: (SHA-256, size), or None when it does not exist."""
        found = self.hash_object(key)
        return (found[0], found[1]) if found is not None else None

    @_guarded
    def hash_object(self, key: str) -> tuple[str, int, str | None] | None:
        """Re-read an object and hash it: (SHA-256, size, `version_of` the bytes read, from
        the same read), or None when it does not exist."""
        try:
            got = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        digest = hashlib.sha256()
        size = 0
        with contextlib.closing(got["Body"]) as body:
            while chunk := body.read(PART_BYTES):
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size, _version(got)

    @_guarded
    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Write a small derived object (thumbnail, export); never used for originals."""
        if key.startswith(ORIGINALS):
            raise ValueError("originals are written only by put_original")
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    @_guarded
    def put_file(self, key: str, path: str, content_type: str) -> None:
        """Write a derived file (a redacted video) in parts; never used for originals."""
        if key.startswith(ORIGINALS):
            raise ValueError("originals are written only by put_original")
        self._client.upload_file(path, self.bucket, key,
                                 ExtraArgs={"ContentType": content_type})

    @_guarded
    def get_bytes(self, key: str) -> bytes:
        """Read a small object; NotFoundError when it is not in the store (the key is logged,
        not put in the message, which may reach a client)."""
        buf = io.BytesIO()
        try:
            self._client.download_fileobj(self.bucket, key, buf)
        except ClientError as exc:
            if _missing(exc):
                log.warning("object store: %s is missing", key)
                raise NotFoundError("an object it names is missing from the object store"
                                    ) from None
            raise
        return buf.getvalue()

    @_guarded
    def get_tags(self, key: str) -> dict[str, str]:
        """An object's tags (empty where the store has none)."""
        try:
            tags = self._client.get_object_tagging(Bucket=self.bucket, Key=key)["TagSet"]
        except ClientError:
            return {}
        return {t["Key"]: t["Value"] for t in tags}

    @_guarded
    def delete(self, key: str) -> None:
        """Delete a derived or incoming object; originals are refused."""
        if key.startswith(ORIGINALS):
            raise ValueError("the application never deletes originals")
        self._client.delete_object(Bucket=self.bucket, Key=key)

    @_guarded
    def delete_prefix(self, prefix: str) -> int:
        """Delete every derived object under a prefix; returns how many."""
        if prefix.startswith(ORIGINALS) or not prefix:
            raise ValueError("the application never deletes originals")
        n = 0
        for obj in self.list(prefix):
            self.delete(obj.key)
            n += 1
        return n

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under a prefix."""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    modified = obj.get("LastModified")
                    yield ObjectInfo(key=obj["Key"], size_bytes=int(obj["Size"]),
                                     etag=str(obj.get("ETag", "")).strip('"'),
                                     modified=modified.isoformat() if modified else "")
        except (BotoCoreError, ClientError) as exc:
            mapped = _unreachable(self.cfg.endpoint_url, exc)
            if mapped is None:
                raise
            raise mapped from exc

    @_guarded
    def unfinished_uploads(self, prefix: str = "") -> tuple[str, ...]:
        """Keys (under a prefix; all by default) with a multipart upload begun and neither
        completed nor aborted (parts the store holds that no object shows)."""
        resp = self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return tuple(str(u["Key"]) for u in resp.get("Uploads", []))

    @_guarded
    def abort_stale_uploads(self, older_than_s: float) -> int:
        """Abort multipart uploads begun more than `older_than_s` ago and never completed (a
        server killed mid-upload, or an abort that failed while the store was down): their
        parts are footage no object shows. Returns how many."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        resp = self._client.list_multipart_uploads(Bucket=self.bucket)
        aborted = 0
        for u in resp.get("Uploads", []):
            began = u.get("Initiated")
            if isinstance(began, datetime) and began < cutoff:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"],
                                                    UploadId=u["UploadId"])
                aborted += 1
        return aborted

    @_guarded
    def presigned_url(self, key: str, expires_s: int = 3600) -> str:
        """A time-limited URL to read an object."""
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url


class OriginalUpload:
    """An original sent to originals/<sha256> in parts while its bytes arrive.

    The bytes are hashed as they are written and sent a part at a time, UPLOAD_THREADS
    parts at once (at most that many held in memory). `finish` completes the multipart upload
    only when they hash to the key's SHA-256: until then nothing is visible, so nothing
    stands under originals/ that is not the bytes its key names. `abort` (after any failure,
    or when the caller refuses the file) leaves nothing behind.

    An original already stored is not replaced, but its bytes are sent all the same, to a
    multipart upload under RESENT/ that `finish` drops once they hashed to the key (its
    bytes were checked when it was stored). An upload of bytes some other case holds thus
    takes as long as any other: were it quicker, any uploader could tell by the clock what
    the store holds, and with a declared SHA-256 without even having the bytes.

    One writer at a time; `write` blocks while UPLOAD_THREADS parts are still in flight.
    """

    def __init__(self, store: ObjectStore, sha256: str, max_bytes: int) -> None:
        self.store = store
        self.sha256 = sha256
        self.key = original_key(sha256)
        self.max_bytes = max_bytes
        self.part_bytes = max(PART_BYTES, -(-max_bytes // MAX_PARTS))
        self.size = 0
        self._digest = hashlib.sha256()
        self._pending: list[bytes] = []  # written, not yet sent: less than a part
        self._pending_len = 0
        self._sent: list[Future[dict[str, Any]]] = []
        self._done = False
        self._stored_size = store._size(self.key)
        self._send_key = (self.key if self._stored_size is None
                          else f"{RESENT}{sha256}-{uuid.uuid4().hex}")
        self._upload_id: str = store._client.create_multipart_upload(
            Bucket=store.bucket, Key=self._send_key, Metadata={"sha256": sha256})["UploadId"]
        self._pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="s3-part")

    @_guarded
    def write(self, data: bytes) -> None:
        """Hash and queue the next bytes; ValueError once they pass max_bytes."""
        if self._done:
            raise RuntimeError("write after finish or abort")
        self.size += len(data)
        if self.size > self.max_bytes:
            raise ValueError(f"larger than the {self.max_bytes}-byte limit")
        self._digest.update(data)
        self._pending.append(data)
        self._pending_len += len(data)
        part = self.part_bytes
        if self._pending_len >= part:  # blocks arrive far smaller than a part
            # Neither the join of one block nor a slice of all of it copies (CPython).
            joined = b"".join(self._pending)
            whole = len(joined) - len(joined) % part
            for at in range(0, whole, part):
                self._send(joined[at:at + part])
            rest = joined[whole:]
            self._pending, self._pending_len = ([rest] if rest else []), len(rest)

    def _send(self, part: bytes) -> None:
        if len(self._sent) >= UPLOAD_THREADS:  # at most this many parts held in memory
            self._sent[-UPLOAD_THREADS].result()
        self._sent.append(self._pool.submit(self.store._part, self._send_key,
                                            self._upload_id, len(self._sent) + 1, part))

    @_guarded
    def finish(self) -> StoredObject:
        """Complete the upload if the bytes written hash to the key's SHA-256; TransientError
        (and nothing stored) if not."""
        if self._done:
            raise RuntimeError("finish after finish or abort")
        got = self._digest.hexdigest()
        if got != self.sha256:
            self.abort()
            raise TransientError(f"the file changed while it was stored (SHA-256 {got}, "
                                 f"expected {self.sha256})")
        try:
            if self._pending_len or not self._sent:  # the last part (an empty file: one)
                self._send(b"".join(self._pending))
                self._pending, self._pending_len = [], 0
            parts = [f.result() for f in self._sent]
            if self._stored_size is not None:  # stored before: these bytes are dropped
                self.abort()
                return StoredObject(key=self.key, size_bytes=self._stored_size,
                                    sha256=self.sha256)
            self.store._client.complete_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, UploadId=self._upload_id,
                MultipartUpload={"Parts": parts})
        except BaseException:
            self.abort()
            raise
        self._close()
        return StoredObject(key=self.key, size_bytes=self.size, sha256=self.sha256)

    def abort(self) -> None:
        """Drop the upload (idempotent): parts in flight are cancelled or awaited, and the
        multipart upload aborted. A store that fails the abort too cleans unfinished uploads
        itself; the error that matters is the one that led here."""
        if self._done:
            return
        self._close()
        with contextlib.suppress(BotoCoreError, ClientError):
            self.store._client.abort_multipart_upload(Bucket=self.store.bucket,
                                                      Key=self._send_key,
                                                      UploadId=self._upload_id)

    def _close(self) -> None:
        self._done = True
        self._pending, self._pending_len = [], 0
        for f in self._sent:
            f.cancel()
        self._pool.shutdown(wait=True)
