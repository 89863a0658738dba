"""Environment faults end in one line naming the URI and what to do, with the exit status of their kind, from
the CLI and from a component; the published marker, claims and leftover multipart uploads on S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from processes import free_port

from msenc_cli.main import main as cli_main
from msenc_lib import storage
from msenc_lib.errors import (EXIT_CONFIG, EXIT_ENVIRONMENT, EXIT_INPUT, EXIT_TRANSIENT, ConfigError,
                              InputDataError, StorageError, describe)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def closed_endpoint(monkeypatch):
    """An endpoint nobody listens on, two attempts per request."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")


@pytest.fixture
def no_credentials(s3, monkeypatch, tmp_path):
    """The loopback server, but no credentials anywhere (a step pod without the storage Secret)."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3


def one_line(stderr: str, command: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1 and lines[0].startswith(f"msenc {command}: error: "), stderr
    return lines[0]


def data_component(source_uri: str, out: Path) -> int:
    """The data component's body, as KFP's executor runs it: its exit status."""
    from kfp.dsl import Dataset

    from msenc_components.data.component import data

    try:
        data(unified=Dataset(uri=str(out)), source_uri=source_uri)
    except SystemExit as e:
        return int(e.code)
    return 0


def test_unreachable_endpoint_cli_and_component(closed_endpoint, tmp_path, capsys):
    assert cli_main(["ingest", "--input-path", "s3://bucket/raw/", "--output-dir", str(tmp_path / "o")]) \
        == EXIT_TRANSIENT
    line = one_line(capsys.readouterr().err, "ingest")
    assert "s3://bucket/raw" in line and "cannot reach the object store" in line
    assert "after 2 attempts" in line and "AWS_ENDPOINT_URL" in line
    assert data_component("s3://bucket/raw/", tmp_path / "u") == EXIT_TRANSIENT
    assert "cannot reach" in one_line(capsys.readouterr().err, "data")
    assert not (tmp_path / "o").exists() and not (tmp_path / "u").exists()


def test_no_credentials_cli_and_component(no_credentials, tmp_path, capsys):
    uri = no_credentials.uri("raw")
    assert cli_main(["ingest", "--input-path", uri, "--output-dir", str(tmp_path / "o")]) == EXIT_ENVIRONMENT
    line = one_line(capsys.readouterr().err, "ingest")
    assert uri in line and "no object-storage credentials" in line and "storage Secret" in line
    assert data_component(uri, tmp_path / "u") == EXIT_ENVIRONMENT
    assert "AWS_ACCESS_KEY_ID" in one_line(capsys.readouterr().err, "data")


def test_missing_bucket(s3, tmp_path, capsys):
    assert cli_main(["ingest", "--input-path", "s3://no-such-bucket-here/raw/", "--output-dir",
                     str(tmp_path / "o")]) == EXIT_ENVIRONMENT
    line = one_line(capsys.readouterr().err, "ingest")
    assert "bucket 'no-such-bucket-here' does not exist" in line and s3.endpoint in line


def test_component_process_ends_with_the_line_and_status(closed_endpoint, tmp_path):
    """A real process, as KFP's executor runs a component body: status 138 and one line on stderr."""
    code = ("from kfp.dsl import Dataset; from msenc_components.data.component import data; "
            f"data(unified=Dataset(uri={str(tmp_path / 'u')!r}), source_uri='s3://bucket/raw/')")
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == EXIT_TRANSIENT
    assert "s3://bucket/raw" in one_line(proc.stderr, "data")


def client_error(code: str, status: int, retries: int = 0) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} message"},
                        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": retries}}, "GetObject")


@pytest.mark.parametrize("code,status,kind,text", [
    ("AccessDenied", 403, EXIT_ENVIRONMENT, "access denied to read (AccessDenied): give these credentials"),
    ("InvalidAccessKeyId", 403, EXIT_ENVIRONMENT, "rejected the credentials (InvalidAccessKeyId)"),
    ("SignatureDoesNotMatch", 403, EXIT_ENVIRONMENT, "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    ("NoSuchBucket", 404, EXIT_ENVIRONMENT, "bucket 'b' does not exist"),
    ("SlowDown", 503, EXIT_TRANSIENT, "is throttling requests (SlowDown) after 5 attempts: rerun later"),
    ("InternalError", 500, EXIT_TRANSIENT, "failed to read (InternalError, HTTP 500) after 5 attempts"),
])
def test_object_store_errors_are_classified(code, status, kind, text, monkeypatch):
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    mapped = storage.classify_s3_error(client_error(code, status, retries=4), "s3://b/k", "read")
    assert mapped.exit_code == kind and text in str(mapped) and str(mapped).startswith("s3://b/k: ")
    assert "\n" not in str(mapped)
    assert storage.classify_s3_error(client_error("NoSuchKey", 404), "s3://b/k", "read") is None  # an absence


def test_exit_status_per_kind():
    assert describe(ConfigError("x"))[0] == EXIT_CONFIG == 2
    assert describe(InputDataError("x"))[0] == EXIT_INPUT == 3
    assert describe(StorageError("x"))[0] == EXIT_ENVIRONMENT == 4
    assert describe(FileNotFoundError(2, "No such file", "/a/b")) == (EXIT_INPUT, "not found: /a/b")
    assert describe(PermissionError(13, "Permission denied", "/a"))[0] == EXIT_ENVIRONMENT
    assert describe(KeyError("bug")) is None  # a bug keeps its traceback
    with pytest.raises(ConfigError, match="AWS_MAX_ATTEMPTS='many'"):
        os.environ["AWS_MAX_ATTEMPTS"] = "many"
        try:
            storage.s3_client()
        finally:
            del os.environ["AWS_MAX_ATTEMPTS"]


def test_published_marker_lists_every_file_with_its_checksum(s3, tmp_path):
    for base in (str(tmp_path / "local"), s3.uri("out")):
        with storage.publish(base) as staging:
            (staging / "a.txt").write_text("alpha")
            (staging / "sub").mkdir()
            (staging / "sub" / "b.bin").write_bytes(b"\0" * 10)
        files = storage.published_files(base)
        assert sorted(files) == ["a.txt", "sub/b.bin"] and files["sub/b.bin"]["size"] == 10
        assert storage.check_published_bytes(base, "a.txt", b"alpha", files) is None
        assert "truncated" in storage.check_published_bytes(base, "a.txt", b"alp", files)
        assert "corrupted" in storage.check_published_bytes(base, "a.txt", b"alphA", files)
        assert storage.list_files(base) == [storage.join(base, "a.txt"), storage.join(base, "sub", "b.bin")]
    assert storage.read_bytes(s3.uri("out", storage.PUBLISHED_MARKER)) == \
        (tmp_path / "local" / storage.PUBLISHED_MARKER).read_bytes()


def test_unfinished_s3_output_is_refused_then_taken_over(s3, tmp_path):
    """A claim without the published marker (a killed writer, here a dead pid) and its multipart upload left
    behind: readers refuse the prefix; the next writer aborts the upload and publishes."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = {"host": os.uname().nodename, "pid": int(dead.stdout), "token": "t", "since": "earlier"}
    client = s3.client()
    client.put_object(Bucket=s3.bucket, Key="out/" + storage.CLAIM, Body=json.dumps(holder).encode())
    client.put_object(Bucket=s3.bucket, Key="out/part-0.parquet", Body=b"half")
    client.create_multipart_upload(Bucket=s3.bucket, Key="out/part-1.parquet")
    with pytest.raises(StorageError, match="unfinished output"):
        storage.list_files(s3.uri("out"))
    with storage.publish(s3.uri("out")) as staging:
        (staging / "whole.txt").write_text("whole")
    assert s3.keys("out/") == ["out/" + storage.PUBLISHED_MARKER, "out/whole.txt"]
    assert client.list_multipart_uploads(Bucket=s3.bucket, Prefix="out/").get("Uploads", []) == []


def test_live_writer_claim_stops_a_second_writer(s3):
    holder, took_over = storage.acquire_claim(s3.uri("busy"))
    try:
        assert not took_over
        with pytest.raises(StorageError, match="another run is writing this output"):
            with storage.publish(s3.uri("busy")) as staging:
                (staging / "x").write_text("x")
    finally:
        storage.release_claim(s3.uri("busy"), holder)
    assert s3.keys("busy/") == []


def test_killed_local_publish_leaves_no_output_and_its_staging_is_cleared(tmp_path):
    """SIGKILL after the staging folder is filled, before the rename: nothing at the output; the next publish
    beside it removes the dead writer's staging folder."""
    out = tmp_path / "out"
    code = ("import os, signal; from msenc_lib import storage\n"
            f"with storage.publish({str(out)!r}) as staging:\n"
            "    (staging / 'a.txt').write_text('a')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9 and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]  # the dead writer's staging
    with storage.publish(out) as staging:
        (staging / "b.txt").write_text("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert storage.list_files(out) == [str(out / "b.txt")]
