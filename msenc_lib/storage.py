"""One small URI layer: local paths and ``s3://bucket/prefix`` (boto3).

The S3 endpoint comes from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (so MinIO and other S3-protocol
servers work); credentials come from the usual boto3 chain (env, profile, pod identity), never from files
of ours.

Outputs are written through :func:`publish`: the stage fills a local staging folder, and only when it
finishes without error is the folder moved (local) or uploaded (S3) to its URI. A failed or killed stage
leaves no partial output:

- locally the staging folder, with the published marker ``.msenc-published.json`` (the file list with sizes
  and SHA-256) in it, is a hidden sibling renamed into place (atomic; a second run that finishes later finds
  the output there and fails instead of mixing files);
- on S3, where objects appear one by one, the writer first claims the prefix (``.msenc-writing.json``, a
  conditional PUT that only one run wins), uploads, writes the published marker ``.msenc-published.json``
  (the file list with sizes and SHA-256) last and then drops the claim. A prefix holding a claim but no
  marker is an unfinished output: readers refuse it, and the next writer takes it over when the claiming
  process is gone (same host, dead pid) or with ``overwrite``. Multipart uploads are aborted on failure
  (s3transfer) and the leftovers of killed writers are aborted when the prefix is taken over.

Object-storage faults become one-line :class:`~msenc_lib.errors.StorageError` messages naming the URI and
what to do (:func:`classify_s3_error`): unreachable endpoint (after botocore's bounded retries with
backoff: ``AWS_MAX_ATTEMPTS``, default 5, ``AWS_RETRY_MODE``, default standard), missing or rejected
credentials, missing bucket, access denied, throttling and server errors. Temporary ones carry exit status 138.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import glob as _glob
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Iterator

from wcmatch import glob as wcglob

from msenc_lib.errors import (ConfigError, IncompleteOutputError, OutputExistsError, StorageError,
                              TransientStorageError)

log = logging.getLogger(__name__)

S3_PREFIX = "s3://"
MINIO_PREFIX = "minio://"  # how Kubeflow Pipelines names artifacts in its own MinIO (an S3 server)
# Where KFP's launcher mirrors artifacts inside a step pod: /minio/<bucket>/<key> is minio://<bucket>/<key>.
KFP_LOCAL_MOUNTS = {"/minio/": MINIO_PREFIX, "/s3/": S3_PREFIX, "/gcs/": "gs://"}
_GLOB_CHARS = set("*?[")


def object_uri(uri: str | os.PathLike) -> str:
    """The ``s3://`` URI of an object-storage location, as boto3 and every other pod must be given it.

    ``minio://b/k`` (a KFP artifact URI) and the launcher's local mirror paths ``/minio/b/k`` and ``/s3/b/k``
    become ``s3://b/k``; ``s3://`` URIs and other local paths are returned unchanged. Google Cloud Storage
    (``gs://``, ``/gcs/``) has no S3 endpoint here and is refused.
    """
    text = str(uri)
    for mount, scheme in KFP_LOCAL_MOUNTS.items():
        if text.startswith(mount):
            text = scheme + text[len(mount):]
            break
    if text.startswith(MINIO_PREFIX):
        text = S3_PREFIX + text[len(MINIO_PREFIX):]
    if text.startswith("gs://"):
        raise StorageError(f"{uri}: Google Cloud Storage is not supported (use an s3:// or minio:// location)")
    return text


def is_s3(uri: str | os.PathLike) -> bool:
    """An object-storage URI: ``s3://`` or KFP's ``minio://`` (the same S3 protocol)."""
    return str(uri).startswith((S3_PREFIX, MINIO_PREFIX))


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` (or ``minio://bucket/a/b``) -> ``("bucket", "a/b")``."""
    if not is_s3(uri):
        raise StorageError(f"not an s3:// URI: {uri}")
    bucket, _, key = object_uri(uri)[len(S3_PREFIX):].partition("/")
    if not bucket:
        raise StorageError(f"s3 URI without a bucket: {uri}")
    return bucket, key


def join(base: str | os.PathLike, *parts: str) -> str:
    base = str(base)
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])
    return os.path.join(base, *parts)


def basename(uri: str | os.PathLike) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------- S3 client
_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _max_attempts() -> int:
    raw = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
    try:
        return max(1, int(raw)) if raw else 5
    except ValueError:
        raise ConfigError(f"environment variable AWS_MAX_ATTEMPTS={raw!r} is not an integer") from None


def _retry_mode() -> str:
    mode = os.environ.get("AWS_RETRY_MODE", "").strip() or "standard"
    if mode not in ("standard", "adaptive", "legacy"):
        raise ConfigError(f"environment variable AWS_RETRY_MODE={mode!r}: expected standard, adaptive or legacy")
    return mode


def s3_client():
    """A boto3 S3 client for the current endpoint and credentials (cached; clients are thread-safe).

    Every request is retried by botocore (``AWS_MAX_ATTEMPTS`` attempts, default 5, exponential backoff with
    jitter in its ``standard`` mode) on connection errors, throttling and server errors; connecting times out
    after 10 s and reading after 60 s, so an unreachable endpoint fails in bounded time.
    """
    endpoint = s3_endpoint()
    attempts, mode = _max_attempts(), _retry_mode()
    key = (endpoint, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_DEFAULT_REGION"), attempts, mode)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            cfg = Config(
                retries={"max_attempts": attempts, "mode": mode},
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                s3={"addressing_style": "path"} if endpoint else {},
            )
            try:
                client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=endpoint,
                    region_name=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
                    config=cfg,
                )
            except ValueError as e:  # e.g. an endpoint that is not a URL
                raise ConfigError(f"object storage client: {e} (check AWS_ENDPOINT_URL={endpoint!r})") from None
            _clients[key] = client
    return client


def _transfer_config():
    """s3transfer's settings for upload_file/download_file (multipart above 8 MiB, aborted on failure)."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig()


# ------------------------------------------------------------------------------ object-storage faults
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                     "InvalidClientTokenId", "TokenRefreshRequired", "UnrecognizedClientException"}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "Forbidden", "403", "AccountProblem"}
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                   "RequestThrottled", "RequestThrottledException", "429"}
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


def _where() -> str:
    return s3_endpoint() or "AWS S3"


def _botocore_error(error: BaseException) -> BaseException | None:
    """The botocore/urllib3 error behind ``error`` (boto3's transfer errors wrap it), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        module = type(error).__module__
        if module.startswith(("botocore", "urllib3", "s3transfer")):
            return error
        if module.startswith("boto3"):
            nested = error.__cause__ or error.__context__
            if nested is None:
                return error
            error = nested
            continue
        return None
    return None


def classify_s3_error(error: BaseException, uri: str, action: str) -> StorageError | None:
    """One-line :class:`StorageError` for an object-storage failure (``None``: not one).

    ``uri`` names the object or prefix, ``action`` what was being done ("read", "write", "list", ...).
    Connection failures, throttling and server errors (after botocore's own retries) are temporary
    (:class:`TransientStorageError`, exit 138); credentials, permissions, a missing bucket and other
    client errors need a fix (exit 4). A missing key is left to the caller (it is bad input or an absence).
    """
    cause = _botocore_error(error)
    if cause is None:
        return None
    from botocore import exceptions as bx

    here = f"{uri}: " if uri else ""
    attempts = _max_attempts()
    if isinstance(cause, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        return StorageError(f"{here}no object-storage credentials to {action} with: set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE); in a pipeline, check that the step gets the "
                            "storage Secret (README, Kubeflow)")
    if isinstance(cause, bx.ClientError):
        err = cause.response.get("Error", {}) or {}
        meta = cause.response.get("ResponseMetadata", {}) or {}
        code = str(err.get("Code") or meta.get("HTTPStatusCode") or "")
        status = int(meta.get("HTTPStatusCode") or 0)
        tries = int(meta.get("RetryAttempts") or 0) + 1
        bucket = err.get("BucketName") or (split_s3(uri)[0] if uri and is_s3(uri) else "")
        if code in _NOT_FOUND_CODES:
            return None
        if code in _CREDENTIAL_CODES:
            return StorageError(f"{here}the object store at {_where()} rejected the credentials ({code}): check "
                                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (in a pipeline, the storage Secret)")
        if code == "NoSuchBucket":
            return StorageError(f"{here}bucket {bucket!r} does not exist at {_where()}: create it, or fix the URI "
                                "or AWS_ENDPOINT_URL")
        if code in _DENIED_CODES or status == 403:
            return StorageError(f"{here}access denied to {action} ({code}): give these credentials that permission "
                                "on the bucket, or use another location")
        if code in _THROTTLE_CODES or status in (429, 503):
            return TransientStorageError(f"{here}the object store at {_where()} is throttling requests ({code}) "
                                         f"after {tries} attempts: rerun later (the step is safe to retry)")
        if status >= 500:
            return TransientStorageError(f"{here}the object store at {_where()} failed to {action} ({code}, HTTP "
                                         f"{status}) after {tries} attempts: rerun later (the step is safe to retry)")
        text = str(err.get("Message") or cause).replace("\n", " ")
        return StorageError(f"{here}cannot {action}: {code}: {text}")
    if isinstance(cause, (bx.ConnectionError, bx.HTTPClientError, bx.ResponseStreamingError,
                          bx.IncompleteReadError)) or type(cause).__module__.startswith("urllib3"):
        return TransientStorageError(f"{here}cannot reach the object store at {_where()} to {action} after "
                                     f"{attempts} attempts ({type(cause).__name__}): check AWS_ENDPOINT_URL and that "
                                     "the server is up, then rerun (the step is safe to retry)")
    if type(cause).__module__.startswith("s3transfer"):  # e.g. RetriesExceededError of a download
        return TransientStorageError(f"{here}transfer to {action} failed after retries: {cause}: rerun later")
    if isinstance(cause, bx.ParamValidationError):
        return None  # a programming error
    text = str(cause).replace("\n", " ")
    return StorageError(f"{here}cannot {action}: {type(cause).__name__}: {text}")


@contextlib.contextmanager
def _s3_errors(uri: str, action: str) -> Iterator[None]:
    """Turn object-storage failures inside the block into one-line StorageErrors."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        mapped = classify_s3_error(e, uri, action)
        if mapped is None:
            raise
        raise mapped from e


def _error_code(error: BaseException) -> str:
    """The S3 error code (or HTTP status) behind ``error``, also when it was mapped to a StorageError."""
    cause = _botocore_error(error.__cause__ if isinstance(error, StorageError) else error)
    response = getattr(cause, "response", None) or {}
    return str((response.get("Error") or {}).get("Code") or (response.get("ResponseMetadata") or {}).get(
        "HTTPStatusCode") or "")


def _s3_keys(bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    with _s3_errors(f"{S3_PREFIX}{bucket}/{prefix}", "list"):
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)


def _s3_object_exists(bucket: str, key: str) -> bool:
    try:
        with _s3_errors(f"{S3_PREFIX}{bucket}/{key}", "read"):
            s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except Exception as e:
        if _error_code(e) in _NOT_FOUND_CODES:
            return False
        raise


def _s3_dir_keys(uri: str) -> tuple[str, str, list[str]]:
    """(bucket, prefix-with-slash, keys under it) for a URI naming a 'folder'."""
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    return bucket, prefix, _s3_keys(bucket, prefix)


# ---------------------------------------------------------------------- claims and the published marker
CLAIM = ".msenc-writing.json"
PUBLISHED_MARKER = ".msenc-published.json"


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: gone for our purpose
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


_active_claims: set[str] = set()  # tokens of the claims this process holds


def _is_stale(holder: dict | None) -> bool:
    """A claim whose writer is gone: on this host, its pid is not running (or is this process, which no longer
    holds it). Another host's claim is never judged stale."""
    if not holder:
        return True
    try:
        if holder.get("host") != socket.gethostname():
            return False
        pid = int(holder.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if pid == os.getpid():
        return holder.get("token") not in _active_claims
    return not _pid_alive(pid)


def _describe_holder(holder: dict | None) -> str:
    if not holder:
        return "unknown writer"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('since', '?')}"


def _read_claim(uri: str) -> dict | None:
    try:
        return json.loads(read_bytes(join(uri, CLAIM)))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}


def _busy(uri: str, holder: dict | None) -> OutputExistsError:
    return OutputExistsError(f"{uri}: another run is writing this output ({_describe_holder(holder)}) or was "
                             "interrupted while writing it: wait for it to finish, or rerun with --overwrite to "
                             "replace its unfinished output")


def _try_create_claim(uri: str, holder: dict) -> bool:
    """Create the claim object/file unless one exists (atomic: a conditional PUT, O_EXCL locally)."""
    body = json.dumps(holder).encode()
    if is_s3(uri):
        bucket, key = split_s3(join(uri, CLAIM))
        try:
            with _s3_errors(uri, "claim the output"):
                s3_client().put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
            return True
        except StorageError as e:
            if _error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise
    path = Path(uri)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / CLAIM, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except OSError as e:
        raise _local_write_error(uri, e) from None
    with os.fdopen(fd, "wb") as f:
        f.write(body)
    return True


def _remove_claim(uri: str, holder: dict | None = None) -> None:
    """Drop the claim (only ours when ``holder`` is given)."""
    if holder is not None:
        current = _read_claim(uri)
        if current is not None and current.get("token") not in (None, holder["token"]):
            return
    if is_s3(uri):
        bucket, key = split_s3(join(uri, CLAIM))
        with _s3_errors(uri, "release the output"):
            s3_client().delete_object(Bucket=bucket, Key=key)
    else:
        Path(uri, CLAIM).unlink(missing_ok=True)


def acquire_claim(uri: str | os.PathLike, takeover: bool = False) -> tuple[dict, bool]:
    """Claim the output ``uri`` for this process: ``(holder, took_over)``.

    An existing claim is taken over when its process is gone (same host, dead pid) or with ``takeover``;
    otherwise :class:`OutputExistsError` names its holder. ``took_over`` says that what lies at ``uri`` is
    the unfinished output of an earlier writer.
    """
    uri = str(uri).rstrip("/")
    holder = _holder()
    took_over = False
    for _ in range(5):
        if _try_create_claim(uri, holder):
            _active_claims.add(holder["token"])
            return holder, took_over
        current = _read_claim(uri)
        if current is None:
            continue  # released meanwhile
        if not (takeover or _is_stale(current)):
            raise _busy(uri, current)
        log.warning("%s: taking over the unfinished output of an interrupted run (%s)", uri, _describe_holder(current))
        _remove_claim(uri)
        took_over = True
    raise _busy(uri, _read_claim(uri))


def release_claim(uri: str | os.PathLike, holder: dict) -> None:
    """Drop this process's claim of ``uri`` (from here on the output reads as complete)."""
    _active_claims.discard(holder["token"])
    _remove_claim(str(uri).rstrip("/"), holder)


def abandon_claim(holder: dict) -> None:
    """Stop holding a claim without removing it: the output stays marked unfinished, for the next writer."""
    _active_claims.discard(holder["token"])


@contextlib.contextmanager
def claimed(uri: str | os.PathLike, takeover: bool = False) -> Iterator[tuple[dict, bool]]:
    """Hold the claim of ``uri`` while the block runs; it stays when the block fails, marking the output as
    unfinished for readers (the next writer takes it over)."""
    holder, took_over = acquire_claim(uri, takeover)
    try:
        yield holder, took_over
    except BaseException:
        abandon_claim(holder)
        raise
    release_claim(uri, holder)


def _check_complete(uri: str, names: set[str] | None = None) -> None:
    """Refuse a folder holding a claim but no published marker: the unfinished output of another run."""
    if names is None:
        names = {n for n in (CLAIM, PUBLISHED_MARKER) if os.path.exists(os.path.join(uri, n))}
    if CLAIM in names and PUBLISHED_MARKER not in names:
        raise IncompleteOutputError(
            f"{uri}: unfinished output ({_describe_holder(_read_claim(uri))} is writing it, or was interrupted): "
            "rerun the stage that writes it, then this one")


def _manifest(staging: Path) -> bytes:
    """The published marker's content: every file's size and SHA-256 (deterministic: no time, no host)."""
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file() and p.name != PUBLISHED_MARKER):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        files[path.relative_to(staging).as_posix()] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    return json.dumps({"files": files}, indent=1, sort_keys=True).encode()


def published_files(uri: str | os.PathLike) -> dict[str, dict]:
    """The files of the published output ``uri`` with their ``size`` and ``sha256``, from its published
    marker; :class:`IncompleteOutputError` when it has none (unfinished, or not written by :func:`publish`)."""
    uri = str(uri).rstrip("/")
    try:
        files = json.loads(read_bytes(join(uri, PUBLISHED_MARKER)))["files"]
        if not isinstance(files, dict):
            raise TypeError(type(files).__name__)
        return files
    except FileNotFoundError:
        raise IncompleteOutputError(f"{uri}: no published marker {PUBLISHED_MARKER} (an unfinished output)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise IncompleteOutputError(f"{uri}: unreadable published marker {PUBLISHED_MARKER} ({e})") from None


def check_published_bytes(uri: str | os.PathLike, name: str, data: bytes, files: dict[str, dict]) -> str | None:
    """What is wrong with ``data``, read from the file ``name`` of the output ``uri``, against that output's
    published ``files`` (:func:`published_files`); ``None`` when its size and SHA-256 match."""
    want = files.get(name)
    where = join(str(uri).rstrip("/"), name)
    if want is None:
        return f"{where} is not in the output's published marker"
    if len(data) != want.get("size"):
        return f"{where} has {len(data)} bytes, the published marker says {want.get('size')} (truncated or rewritten)"
    if hashlib.sha256(data).hexdigest() != want.get("sha256"):
        return f"{where} does not match its published SHA-256 (corrupted)"
    return None


def _abort_multipart_uploads(bucket: str, prefix: str) -> None:
    """Abort the multipart uploads under ``prefix`` that a killed writer left (invisible, but billed)."""
    client = s3_client()
    with _s3_errors(f"{S3_PREFIX}{bucket}/{prefix}", "abort unfinished uploads"):
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
            for up in page.get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                log.info("aborted the unfinished multipart upload of s3://%s/%s", bucket, up["Key"])
# ----------------------------------------------------------------------------------------------- queries
def exists(uri: str | os.PathLike) -> bool:
    """A file/object, or a non-empty S3 prefix / existing local folder."""
    uri = str(uri)
    if not is_s3(uri):
        return os.path.exists(uri)
    bucket, key = split_s3(uri)
    if key and not key.endswith("/") and _s3_object_exists(bucket, key):
        return True
    return bool(_s3_dir_keys(uri)[2])


def is_dir(uri: str | os.PathLike) -> bool:
    uri = str(uri)
    if not is_s3(uri):
        return os.path.isdir(uri)
    bucket, key = split_s3(uri)
    if key and not key.endswith("/") and _s3_object_exists(bucket, key):
        return False
    return bool(_s3_dir_keys(uri)[2])


def list_files(uri: str | os.PathLike, suffix: str | None = None) -> list[str]:
    """All files under a folder/prefix (recursive, sorted), or ``[uri]`` for a single file.

    Names starting with ``.`` (staging folders, markers, hidden files) are skipped. A folder that is the
    unfinished output of another run (a claim without the published marker) is refused.
    """
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        if key and not key.endswith("/") and _s3_object_exists(bucket, key):
            found = [uri]
        else:
            _, prefix, keys = _s3_dir_keys(uri)
            _check_complete(uri.rstrip("/"), {k[len(prefix):] for k in keys if "/" not in k[len(prefix):]})
            found = [
                f"{S3_PREFIX}{bucket}/{k}"
                for k in keys
                if not any(part.startswith(".") for part in k[len(prefix):].split("/"))
            ]
    elif os.path.isfile(uri):
        found = [uri]
    elif os.path.isdir(uri):
        _check_complete(uri)
        found = []
        for root, dirs, files in os.walk(uri):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(os.path.join(root, f) for f in files if not f.startswith("."))
        found.sort()
    else:
        return []
    if suffix:
        found = [f for f in found if f.endswith(suffix)]
    return found


def expand(pattern: str | os.PathLike, suffix: str | None = None) -> list[str]:
    """Files named by a path, a folder (recursive), or a glob (``*``, ``?``, ``[...]``; ``**`` locally)."""
    pattern = str(pattern)
    if not (_GLOB_CHARS & set(pattern)):
        return list_files(pattern, suffix)
    if is_s3(pattern):
        bucket, key = split_s3(pattern)
        fixed = key[: min(key.index(c) for c in _GLOB_CHARS if c in key)]
        # local glob's rules (* and ? within one segment, ** across), but * also matches dot names as before
        matches = [f"{S3_PREFIX}{bucket}/{k}" for k in _s3_keys(bucket, fixed)
                   if wcglob.globmatch(k, key, flags=wcglob.GLOBSTAR | wcglob.DOTGLOB)
                   and storage_name(k) not in (CLAIM, PUBLISHED_MARKER)]
    else:
        matches = []
        for m in sorted(_glob.glob(pattern, recursive=True)):
            matches.extend(list_files(m) if os.path.isdir(m) else [m])
    if suffix:
        matches = [m for m in matches if m.endswith(suffix)]
    return sorted(set(matches))


def storage_name(key: str) -> str:
    """The last segment of a key or path."""
    return key.rstrip("/").rsplit("/", 1)[-1]


def stat(uri: str | os.PathLike) -> dict:
    """Size and a change token (S3 ETag, local mtime in ns): a cheap input fingerprint."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "read"):
            head = s3_client().head_object(Bucket=bucket, Key=key)
        return {"uri": uri, "size": head["ContentLength"], "etag": head["ETag"].strip('"')}
    st = os.stat(uri)
    return {"uri": uri, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def content_fingerprint(uri: str | os.PathLike) -> str:
    """A short hash of the size and change token of every file named by ``uri`` (file, folder/prefix or
    glob): it changes when the content does. ``""`` for an empty URI."""
    if not str(uri).strip():
        return ""
    files = expand(uri)
    if not files:
        raise FileNotFoundError(f"no files at {uri}")
    digest = hashlib.sha256()
    for f in files:
        digest.update(json.dumps(stat(f), sort_keys=True).encode() + b"\n")
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------- reads / writes
def read_bytes(uri: str | os.PathLike) -> bytes:
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            with _s3_errors(uri, "read"):
                return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as e:
            if _error_code(e) in _NOT_FOUND_CODES:
                raise FileNotFoundError(uri) from None
            raise
    return Path(uri).read_bytes()


def read_head(uri: str | os.PathLike, n: int) -> bytes:
    """The first ``n`` bytes (fewer if the object is shorter); on S3 a ranged GET, not a download."""
    uri = str(uri)
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            return s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{n - 1}")["Body"].read()
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code == "InvalidRange":  # an empty object
                return b""
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(uri) from None
            raise
    with open(uri, "rb") as fh:
        return fh.read(n)


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def parquet_file(uri: str | os.PathLike):
    """A ``pyarrow.parquet.ParquetFile`` of a local file, or of an S3 object read into memory."""
    import pyarrow.parquet as pq

    uri = str(uri)
    return pq.ParquetFile(io.BytesIO(read_bytes(uri)) if is_s3(uri) else uri)


def read_parquet(uri: str | os.PathLike, columns: list[str] | None = None):
    """One Parquet file (local or S3) as an Arrow table, optionally only some columns."""
    import pyarrow.parquet as pq

    uri = str(uri)
    return pq.read_table(io.BytesIO(read_bytes(uri)) if is_s3(uri) else uri, columns=columns)


def _local_write_error(uri: str, error: OSError) -> StorageError:
    hint = ("free some space or choose another location" if error.errno in (errno.ENOSPC, errno.EDQUOT)
            else "choose another output location or fix its permissions")
    return StorageError(f"{uri}: cannot write here: {error.strerror or error} ({hint})")


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write a whole file atomically (temp name + rename locally; one PUT on S3)."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "write"):
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise _local_write_error(uri, e) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_text(uri: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def download(uri: str, dest: str | os.PathLike) -> Path:
    """Copy one S3 object or a whole prefix to a local file/folder; returns the local path. An unfinished
    output (see :func:`publish`) is refused; the markers are not copied."""
    dest = Path(dest)
    bucket, key = split_s3(uri)
    client = s3_client()
    if key and not key.endswith("/") and _s3_object_exists(bucket, key):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _s3_errors(uri, "download"):
            client.download_file(bucket, key, str(dest), Config=_transfer_config())
        return dest
    _, prefix, keys = _s3_dir_keys(uri)
    if not keys:
        raise FileNotFoundError(uri)
    top = {k[len(prefix):] for k in keys if "/" not in k[len(prefix):]}
    _check_complete(uri.rstrip("/"), top)
    for k in keys:
        if k[len(prefix):] in (CLAIM, PUBLISHED_MARKER):
            continue
        target = dest / k[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        with _s3_errors(f"{S3_PREFIX}{bucket}/{k}", "download"):
            client.download_file(bucket, k, str(target), Config=_transfer_config())
    return dest


def upload_dir(local_dir: str | os.PathLike, uri: str) -> list[str]:
    """Upload every file under ``local_dir`` below the prefix ``uri``; returns the keys written.

    Files above the multipart threshold go up in parts; a failed multipart upload is aborted. On failure the
    objects already uploaded are deleted again (best effort) and the error is re-raised.
    """
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    client = s3_client()
    written: list[str] = []
    try:
        for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            k = prefix + path.relative_to(local_dir).as_posix()
            with _s3_errors(f"{S3_PREFIX}{bucket}/{k}", "write"):
                client.upload_file(str(path), bucket, k, Config=_transfer_config())
            written.append(k)
    except BaseException:
        with contextlib.suppress(Exception):
            _s3_delete(bucket, written)
        raise
    return written


def _s3_delete(bucket: str, keys: list[str]) -> None:
    client = s3_client()
    for i in range(0, len(keys), 1000):
        chunk = keys[i : i + 1000]
        if chunk:
            with _s3_errors(f"{S3_PREFIX}{bucket}/{chunk[0]}", "delete"):
                client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk]})


def remove(uri: str | os.PathLike) -> None:
    """Delete a local folder (or file) / every object under an S3 prefix; nothing there is not an error."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _s3_delete(bucket, _s3_keys(bucket, key.rstrip("/") + "/"))  # never a whole bucket: "s3://b" is "/"
    elif os.path.isdir(uri):
        shutil.rmtree(uri, ignore_errors=True)
    elif os.path.exists(uri):
        os.remove(uri)


@contextlib.contextmanager
def local_copy(uri: str | os.PathLike) -> Iterator[Path]:
    """A local path holding ``uri``: the path itself when local, else a temporary download."""
    uri = str(uri)
    if not is_s3(uri):
        if not os.path.exists(uri):
            raise FileNotFoundError(uri)
        if os.path.isdir(uri):
            _check_complete(uri)
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="msenc-in-") as tmp:
        yield download(uri, Path(tmp) / (basename(uri) or "data"))


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> list[str]:
    """Copy a file or folder/prefix to the folder/prefix ``dst`` (any mix of local and s3://), atomically
    like every output. Returns the copied files' paths relative to ``dst``."""
    with publish(dst, overwrite=overwrite) as staging:
        stage_copy(src, staging)
        return sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())


def stage_copy(src: str | os.PathLike, dest: Path) -> None:
    """Copy the file or folder/prefix ``src`` into the local folder ``dest`` (a file keeps its name), without
    its claim or published marker."""
    with local_copy(src) as here:
        dest.mkdir(parents=True, exist_ok=True)
        if here.is_dir():
            shutil.copytree(here, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(CLAIM, PUBLISHED_MARKER))
        else:
            shutil.copy2(here, dest / here.name)


# ----------------------------------------------------------------------------------------------- publish
def check_output_free(uri: str, overwrite: bool) -> None:
    """Before a stage starts: refuse an existing output (unless ``overwrite``) or one another live run is
    writing; the unfinished output of a writer that is gone will be replaced."""
    if is_s3(uri):
        _, prefix, keys = _s3_dir_keys(uri)
        names = {k[len(prefix):] for k in keys}
        if CLAIM in names:
            holder = _read_claim(uri)
            if not (overwrite or _is_stale(holder) or PUBLISHED_MARKER in names):
                raise _busy(uri, holder)
            if PUBLISHED_MARKER not in names or overwrite:
                return
        if keys and not overwrite:
            raise OutputExistsError(f"output already exists and is not empty: {uri} (choose another output or "
                                    "overwrite)")
        return
    p = Path(uri)
    if not overwrite and p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise OutputExistsError(f"output already exists and is not empty: {uri} (choose another output or overwrite)")


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _remove_stale_staging(target: Path) -> None:
    """Delete the staging folders that killed runs on this host left beside ``target``."""
    host = socket.gethostname()
    pattern = re.compile(re.escape(_staging_prefix(target)) + r"(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")
    with contextlib.suppress(OSError):
        for sibling in target.parent.iterdir():
            m = pattern.match(sibling.name)
            if m and m["host"] == host and not _pid_alive(int(m["pid"])):
                shutil.rmtree(sibling, ignore_errors=True)


@contextlib.contextmanager
def publish(uri: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty local staging folder; on success it becomes the folder/prefix ``uri``.

    Locally the staging folder is a hidden sibling of the target, renamed into place at the end with the
    published marker (:func:`published_files`) in it. On S3 it
    is a temporary folder uploaded at the end under a claim, with the published marker last (module doc).
    An existing non-empty output is an error unless ``overwrite``; then it is replaced as a whole. A second
    run that finishes after the first finds the output there and fails (:class:`OutputExistsError`).
    """
    uri = str(uri).rstrip("/") or str(uri)
    check_output_free(uri, overwrite)
    if is_s3(uri):
        with tempfile.TemporaryDirectory(prefix="msenc-out-") as tmp:
            staging = Path(tmp) / "out"
            staging.mkdir()
            yield staging
            _commit_s3(staging, uri, overwrite)
        return

    target = Path(uri)
    staging = target.parent / f"{_staging_prefix(target)}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(target)
        staging.mkdir()
    except OSError as e:
        raise _local_write_error(uri, e) from None
    try:
        yield staging
        (staging / PUBLISHED_MARKER).write_bytes(_manifest(staging))  # renamed into place with the files
        _commit_local(staging, target, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _commit_local(staging: Path, target: Path, overwrite: bool) -> None:
    """Rename ``staging`` to ``target``: atomic, and it fails when another run put a non-empty folder there."""
    for _ in range(5):
        try:
            os.rename(staging, target)  # replaces an empty folder, fails on a non-empty one
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise _local_write_error(str(target), e) from None
        if not overwrite:
            raise OutputExistsError(f"{target}: another run published this output while this one ran; its output "
                                    "is kept (rerun with --overwrite to replace it)")
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(target, old)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
    raise OutputExistsError(f"{target}: other runs keep replacing this output; run one at a time")


def _commit_s3(staging: Path, uri: str, overwrite: bool) -> None:
    """Upload ``staging`` to the prefix ``uri``: claim, upload, published marker last, release."""
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    holder, took_over = acquire_claim(uri, takeover=overwrite)
    old: list[str] = []
    try:
        old = [k for k in _s3_keys(bucket, prefix) if k != prefix + CLAIM]
        if old and not (overwrite or took_over):
            raise OutputExistsError(f"{uri}: another run published this output while this one ran; its output is "
                                    "kept (rerun with --overwrite to replace it)")
        _abort_multipart_uploads(bucket, prefix)
        if prefix + PUBLISHED_MARKER in old:  # readers see an unfinished output from here on
            _s3_delete(bucket, [prefix + PUBLISHED_MARKER])
        written = set(upload_dir(staging, uri))  # deletes what it wrote when it fails
        _s3_delete(bucket, [k for k in old if k not in written and k != prefix + PUBLISHED_MARKER])
        with _s3_errors(uri, "publish"):
            s3_client().put_object(Bucket=bucket, Key=prefix + PUBLISHED_MARKER, Body=_manifest(staging))
    except BaseException as failure:
        abandon_claim(holder)
        with contextlib.suppress(Exception):  # nothing of this run's left: no need to mark the prefix unfinished
            left = [k for k in _s3_keys(bucket, prefix) if k != prefix + CLAIM]
            if isinstance(failure, OutputExistsError) or not left:
                _remove_claim(uri, holder)
        raise
    with contextlib.suppress(StorageError):  # published; a claim left behind is taken over by the next writer
        release_claim(uri, holder)
    abandon_claim(holder)
