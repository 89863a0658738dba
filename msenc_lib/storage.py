"""One small URI layer: local paths and ``s3://bucket/prefix`` (boto3).

The S3 endpoint comes from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (so MinIO and other S3-protocol
servers work); credentials come from the usual boto3 chain (env, profile, pod identity), never from files
of ours.

Outputs are written through :func:`publish`: the stage fills a local staging folder, and only when it
finishes without error is the folder moved (local) or uploaded (S3) to its URI. A failed stage leaves
nothing at the output URI.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import io
import os
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Iterator

from wcmatch import glob as wcglob

from msenc_lib.errors import StorageError

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


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client():
    """A boto3 S3 client for the current endpoint and credentials (cached; clients are thread-safe)."""
    endpoint = s3_endpoint()
    key = (endpoint, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_DEFAULT_REGION"))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            cfg = Config(
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": "path"} if endpoint else {},
            )
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=endpoint,
                region_name=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
                config=cfg,
            )
            _clients[key] = client
    return client


def _s3_keys(bucket: str, prefix: str) -> list[str]:
    paginator = s3_client().get_paginator("list_objects_v2")
    keys: list[str] = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)


def _s3_object_exists(bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def _s3_dir_keys(uri: str) -> tuple[str, str, list[str]]:
    """(bucket, prefix-with-slash, keys under it) for a URI naming a 'folder'."""
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    return bucket, prefix, _s3_keys(bucket, prefix)


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

    Names starting with ``.`` (staging folders, hidden files) are skipped.
    """
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        if key and not key.endswith("/") and _s3_object_exists(bucket, key):
            found = [uri]
        else:
            _, prefix, keys = _s3_dir_keys(uri)
            found = [
                f"{S3_PREFIX}{bucket}/{k}"
                for k in keys
                if not any(part.startswith(".") for part in k[len(prefix):].split("/"))
            ]
    elif os.path.isfile(uri):
        found = [uri]
    elif os.path.isdir(uri):
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
                   if wcglob.globmatch(k, key, flags=wcglob.GLOBSTAR | wcglob.DOTGLOB)]
    else:
        matches = []
        for m in sorted(_glob.glob(pattern, recursive=True)):
            matches.extend(list_files(m) if os.path.isdir(m) else [m])
    if suffix:
        matches = [m for m in matches if m.endswith(suffix)]
    return sorted(set(matches))


def stat(uri: str | os.PathLike) -> dict:
    """Size and a change token (S3 ETag, local mtime in ns): a cheap input fingerprint."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        head = s3_client().head_object(Bucket=bucket, Key=key)
        return {"uri": uri, "size": head["ContentLength"], "etag": head["ETag"].strip('"')}
    st = os.stat(uri)
    return {"uri": uri, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def content_fingerprint(uri: str | os.PathLike) -> str:
    """A short hash of the size and change token of every file named by ``uri`` (file, folder/prefix or
    glob): it changes when the content does. ``""`` for an empty URI."""
    import hashlib
    import json

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
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
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


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write a whole file atomically (temp name + rename locally; one PUT on S3)."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(uri: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def download(uri: str, dest: str | os.PathLike) -> Path:
    """Copy one S3 object or a whole prefix to a local file/folder; returns the local path."""
    dest = Path(dest)
    bucket, key = split_s3(uri)
    client = s3_client()
    if key and not key.endswith("/") and _s3_object_exists(bucket, key):
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(dest))
        return dest
    _, prefix, keys = _s3_dir_keys(uri)
    if not keys:
        raise FileNotFoundError(uri)
    for k in keys:
        target = dest / k[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, k, str(target))
    return dest


def upload_dir(local_dir: str | os.PathLike, uri: str) -> list[str]:
    """Upload every file under ``local_dir`` below the prefix ``uri``; returns the keys written.

    On failure the objects already uploaded are deleted again and the error is re-raised.
    """
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    client = s3_client()
    written: list[str] = []
    try:
        for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            k = prefix + path.relative_to(local_dir).as_posix()
            client.upload_file(str(path), bucket, k)
            written.append(k)
    except BaseException:
        _s3_delete(bucket, written)
        raise
    return written


def _s3_delete(bucket: str, keys: list[str]) -> None:
    client = s3_client()
    for i in range(0, len(keys), 1000):
        chunk = keys[i : i + 1000]
        if chunk:
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
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="msenc-in-") as tmp:
        yield download(uri, Path(tmp) / (basename(uri) or "data"))


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> list[str]:
    """Copy a file or folder/prefix to the folder/prefix ``dst`` (any mix of local and s3://), atomically
    like every output. Returns the copied files' paths relative to ``dst``."""
    with local_copy(src) as here, publish(dst, overwrite=overwrite) as staging:
        if here.is_dir():
            shutil.copytree(here, staging, dirs_exist_ok=True)
        else:
            shutil.copy2(here, staging / here.name)
        return sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())


def _is_nonempty_output(uri: str) -> bool:
    if is_s3(uri):
        return bool(_s3_dir_keys(uri)[2])
    p = Path(uri)
    return p.exists() and (not p.is_dir() or any(p.iterdir()))


@contextlib.contextmanager
def publish(uri: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty local staging folder; on success it becomes the folder/prefix ``uri``.

    Locally the staging folder is a hidden sibling of the target, renamed into place at the end. On S3 it
    is a temporary folder uploaded at the end (objects uploaded before a failure are deleted again).
    An existing non-empty output is an error unless ``overwrite``; then it is replaced as a whole.
    """
    uri = str(uri)
    if not overwrite and _is_nonempty_output(uri):
        raise StorageError(f"output already exists and is not empty: {uri} (choose another output or overwrite)")
    if is_s3(uri):
        with tempfile.TemporaryDirectory(prefix="msenc-out-") as tmp:
            staging = Path(tmp) / "out"
            staging.mkdir()
            yield staging
            bucket, prefix, old_keys = _s3_dir_keys(uri)
            if old_keys and not overwrite:
                raise StorageError(f"output appeared while the stage ran: {uri}")
            written = set(upload_dir(staging, uri))
            _s3_delete(bucket, [k for k in old_keys if k not in written])
        return

    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if target.exists():
            if target.is_dir() and not any(target.iterdir()):
                target.rmdir()
            elif overwrite:
                old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(target, old)
                os.rename(staging, target)
                shutil.rmtree(old, ignore_errors=True)
                return
            else:
                raise StorageError(f"output appeared while the stage ran: {uri}")
        os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
