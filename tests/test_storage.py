import os

import pytest

from msenc_lib import storage
from msenc_lib.errors import StorageError


def _fill(folder, files):
    for rel, data in files.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


FILES = {"a.parquet": b"A", "sub/b.parquet": b"BB", "c.json": b"{}"}


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3").uri("root")


def test_publish_then_list_read(base):
    with storage.publish(storage.join(base, "out")) as stage:
        _fill(stage, FILES)
        assert not storage.exists(storage.join(base, "out"))  # nothing visible before commit
    out = storage.join(base, "out")
    assert [storage.basename(f) for f in storage.list_files(out)] == ["a.parquet", "c.json", "b.parquet"]
    assert storage.list_files(out, suffix=".parquet")[-1].endswith("sub/b.parquet")
    assert storage.read_bytes(storage.join(out, "sub/b.parquet")) == b"BB"
    assert storage.is_dir(out) and not storage.is_dir(storage.join(out, "c.json"))
    assert storage.expand(storage.join(out, "*.parquet")) == [storage.join(out, "a.parquet")]
    assert storage.stat(storage.join(out, "sub/b.parquet"))["size"] == 2


@pytest.mark.parametrize("pattern, expected", [
    ("raw/*.csv", ["raw/a.csv", "raw/b1.csv"]),
    ("raw/b?.csv", ["raw/b1.csv"]),
    ("raw/[ab]*.csv", ["raw/a.csv", "raw/b1.csv"]),
    ("raw/**/*.csv", ["raw/a.csv", "raw/b1.csv", "raw/sub/c.csv", "raw/sub/deep/d.csv"]),
    ("raw/*/*.csv", ["raw/sub/c.csv"]),
    ("raw/**/d.csv", ["raw/sub/deep/d.csv"]),
])
def test_globs_mean_the_same_locally_and_on_s3(base, pattern, expected):
    files = {rel: b"x" for rel in ("raw/a.csv", "raw/b1.csv", "raw/sub/c.csv", "raw/sub/deep/d.csv", "raw/e.json")}
    with storage.publish(base) as stage:
        _fill(stage, files)
    assert storage.expand(storage.join(base, pattern)) == [storage.join(base, rel) for rel in expected]


def test_failed_stage_leaves_nothing(base):
    out = storage.join(base, "out")
    with pytest.raises(RuntimeError):
        with storage.publish(out) as stage:
            _fill(stage, FILES)
            raise RuntimeError("stage failed")
    assert not storage.exists(out)
    assert storage.list_files(base) == []


def test_existing_output_needs_overwrite(base):
    out = storage.join(base, "out")
    with storage.publish(out) as stage:
        _fill(stage, FILES)
    with pytest.raises(StorageError, match="already exists"):
        with storage.publish(out) as stage:
            pass
    with storage.publish(out, overwrite=True) as stage:
        _fill(stage, {"new.txt": b"n"})
    assert [storage.basename(f) for f in storage.list_files(out)] == ["new.txt"]


def test_failed_upload_removes_partial_objects(s3, tmp_path, monkeypatch):
    out = s3.uri("partial")
    real_upload = storage.s3_client().upload_file
    calls = {"n": 0}

    def flaky(path, bucket, key, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("connection reset")
        return real_upload(path, bucket, key, **kwargs)

    monkeypatch.setattr(storage.s3_client(), "upload_file", flaky)
    with pytest.raises(OSError):
        with storage.publish(out) as stage:
            _fill(stage, FILES)
    assert s3.keys("partial") == []


def test_atomic_write_and_local_copy(base, tmp_path):
    f = storage.join(base, "x/y.txt")
    storage.write_text(f, "hello")
    assert storage.read_text(f) == "hello"
    with storage.local_copy(f) as p:
        assert p.read_text() == "hello"
    with storage.local_copy(storage.join(base, "x")) as d:
        assert (d / "y.txt").read_text() == "hello"
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(base, "missing.txt"))
    if not storage.is_s3(base):
        assert [n for n in os.listdir(os.path.dirname(f)) if n.startswith(".")] == []


def test_join_and_split():
    assert storage.join("s3://b/p/", "q", "r.txt") == "s3://b/p/q/r.txt"
    assert storage.split_s3("s3://b/p/q") == ("b", "p/q")
    with pytest.raises(StorageError):
        storage.split_s3("/local/path")


def test_remove_deletes_the_folder_and_only_it(base):
    with storage.publish(storage.join(base, "run")) as staging:
        _fill(staging, FILES)
    with storage.publish(storage.join(base, "run-2")) as staging:  # shares the name's start: must stay
        _fill(staging, {"x.json": b"1"})
    storage.remove(storage.join(base, "run"))
    assert not storage.exists(storage.join(base, "run"))
    assert storage.read_bytes(storage.join(base, "run-2", "x.json")) == b"1"
    storage.remove(storage.join(base, "run"))  # nothing there: no error


def test_object_uri_normalises_kfp_artifact_uris_and_mirror_paths(s3):
    assert storage.object_uri("minio://mlpipeline/v2/artifacts/p/r/t/model") == "s3://mlpipeline/v2/artifacts/p/r/t/model"
    assert storage.object_uri("/minio/mlpipeline/v2/artifacts/x") == "s3://mlpipeline/v2/artifacts/x"
    assert storage.object_uri("/s3/bucket/prefix/a.csv") == "s3://bucket/prefix/a.csv"
    assert storage.object_uri("s3://bucket/k") == "s3://bucket/k"
    assert storage.object_uri("/data/local/split") == "/data/local/split"  # a plain path stays a path
    assert storage.object_uri("/minions/x") == "/minions/x"
    for gcs in ("gs://bucket/k", "/gcs/bucket/k"):
        with pytest.raises(StorageError, match="Google Cloud Storage is not supported"):
            storage.object_uri(gcs)
    # minio:// is the same S3 protocol: readable and writable directly
    storage.write_text(f"minio://{s3.bucket}/kfp/a.txt", "via minio")
    assert storage.read_text(s3.uri("kfp", "a.txt")) == "via minio"
    assert storage.list_files(f"minio://{s3.bucket}/kfp") == [s3.uri("kfp", "a.txt")]
