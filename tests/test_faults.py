"""Fault injection: every stage x {kill -9 mid-publish then rerun, object store stopped mid-run then restarted,
credentials removed, read-only output location, corrupt newest checkpoint (train), a second concurrent
writer}. Each cell must complete on rerun with the output of an undisturbed run, or fail with its one-line
error (no traceback) and its exit status; in every case no partial output is visible to readers and no input
is modified. The module prints the matrix at the end; README.md shows it as the reliability table.

Inputs and outputs are on an S3 server (moto) of this module's own on loopback, so it can be stopped and
restarted; the read-only cell writes to a local folder that is mounted read-only.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from processes import free_port

from msenc_lib import storage
from msenc_lib.errors import EXIT_ENVIRONMENT, EXIT_TRANSIENT, IncompleteOutputError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--progress", "false"]
# one task, feature set and model: the faults do not depend on how much evaluate computes
EVALUATE = ["--plots", "false", "--first-cycles", "20", "--horizon", "5", "--cv-folds", "2", "--tasks", "cycle_life",
            "--rows", "embedding/elastic_net", "--seeds", "1", "--en-alphas", "0.1"]
TRAIN = ["--preset", "tiny", "--context-length", "256", "--max-steps", "4", "--save-every", "2", "--eval-every",
         "0", "--log-every", "1", "--precision", "fp32", "--batch-size", "2"]
STAGES = ("generate-data", "ingest", "preprocess", "split", "train", "embed", "evaluate", "export")
FAULTS = ("kill -9, rerun", "S3 down, restarted", "no credentials", "read-only output", "corrupt checkpoint",
          "concurrent writer")
# What differs between two runs of a stage on the same inputs (everything else is byte-identical): train's
# metrics.jsonl (tokens_per_s) and its checkpoints' metric rows, which carry the same timing; the minute
# evaluate's report.html was generated at (and so that file's checksum in the published marker).
TIMING_FILES = {"train": ("metrics.jsonl", "checkpoints/"), "evaluate": (storage.PUBLISHED_MARKER,)}
GENERATED_AT = re.compile(rb"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC")
FIT_SECONDS = re.compile(rb'"seconds": [0-9.eE+-]+')  # evaluate's per-row fitting time


# ------------------------------------------------------------------------------------------- the server
class Server:
    """A moto S3 server on a fixed loopback port that can be stopped and started again (its buckets live in
    this process, so they survive a restart)."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self):
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture(scope="module")
def server():
    s = Server()
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def env(server):
    """The env of every run here: the module's server, two attempts per request (fast failures)."""
    values = {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
              "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2", "AWS_EC2_METADATA_DISABLED": "true",
              "OMP_NUM_THREADS": "1"}
    import torch

    threads = torch.get_num_threads()
    # one thread here as in the subprocesses (OMP_NUM_THREADS): a run resumed here from a checkpoint written
    # there must compute its float reductions alike to end bit-identical
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in values.items():
            mp.setenv(key, value)
        for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(key, raising=False)
        yield dict(values)
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- the stages
@pytest.fixture(scope="module")
def inputs(env, tmp_path_factory):
    """Every stage's inputs, made once with the CLI on the tiny data and copied to the bucket ``in/``."""
    from msenc_cli.main import main

    root = tmp_path_factory.mktemp("fault-inputs")
    steps = [
        ["generate-data", "--size", "tiny", "--n-cells", "6", "--last-cycle", "30", "--output-dir",
         str(root / "unified")],
        ["preprocess", "--input", str(root / "unified"), "--output-dir", str(root / "pre")],
        ["preprocess", "--input", str(root / "unified"), "--output-dir", str(root / "pre-emb"),
         "--is-training-shuffled", "false"],
        ["split", "--input", str(root / "pre"), "--output-dir", str(root / "split"), "--ratio-train", "0.5",
         "--ratio-validation", "0.17"],
        ["train", "--data-dir", str(root / "split"), "--output-dir", str(root / "model"), *TRAIN],
        ["embed", "--data-dir", str(root / "pre-emb"), "--model-dir", str(root / "model"), "--unified-dir",
         str(root / "unified"), "--output-dir", str(root / "emb")],
        ["evaluate", "--embeddings-dir", str(root / "emb"), "--unified-dir", str(root / "unified"),
         "--split-config", str(root / "split"), "--output-dir", str(root / "eval"), *EVALUATE],
    ]
    for argv in steps:
        assert main([*argv, *QUIET]) == 0, argv
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    storage.s3_client().create_bucket(Bucket=bucket)
    uris = {"root": root, "bucket": bucket}
    for name in ("unified", "pre", "pre-emb", "split", "model", "emb"):
        uris[name] = f"s3://{bucket}/in/{name}"
        storage.copy_tree(str(root / name), uris[name])
    return uris


def stage_spec(stage: str, inputs: dict, out: str) -> dict:
    """The stage reading ``inputs`` and writing ``out`` (S3 or local): CLI arguments, or the export component's
    artifacts (local, as KFP's launcher hands them to the step) and location ``out``'s parent."""
    i = inputs
    argv = {
        "generate-data": ["generate-data", "--size", "tiny", "--n-cells", "2", "--last-cycle", "3"],
        "ingest": ["ingest", "--input-path", i["unified"], "--format", "parquet"],
        "preprocess": ["preprocess", "--input", i["unified"]],
        "split": ["split", "--input", i["pre"], "--ratio-train", "0.5", "--ratio-validation", "0.17"],
        "train": ["train", "--data-dir", i["split"], *TRAIN],
        "embed": ["embed", "--data-dir", i["pre-emb"], "--model-dir", i["model"], "--unified-dir", i["unified"]],
        "evaluate": ["evaluate", "--embeddings-dir", i["emb"], "--unified-dir", i["unified"], "--split-config",
                     i["split"], *EVALUATE],
    }.get(stage)
    if argv is not None:
        return {"argv": [*argv, "--output-dir", out, *QUIET]}
    root = i["root"]
    parent, _, run = out.rstrip("/").rpartition("/")
    return {"export": {"model": str(root / "model"), "embeddings": str(root / "emb"), "evaluation": str(root / "eval"),
                       "export_uri": parent, "run_name": run}}


def run_in_process(spec: dict) -> tuple[int, str]:
    """(exit status, stderr) of the stage run here."""
    from fault_runner import run_stage

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_stage(spec)
    return code, err.getvalue()


def rerun(stage: str, spec: dict) -> dict:
    """The same run again: train continues its checkpoints (--resume), the others start over."""
    return {"argv": [*spec["argv"], "--resume"]} if stage == "train" else spec


def completes(stage: str) -> str:
    return "--resume completes" if stage == "train" else "rerun completes"


def snapshot(uri: str, stage: str = "") -> dict[str, bytes]:
    """Every file of an output (markers included) by relative name, minus the files that carry timings."""
    skip = TIMING_FILES.get(stage, ())
    if storage.is_s3(uri):
        bucket, key = storage.split_s3(uri)
        prefix = key.rstrip("/") + "/"
        keys = [k for k in storage._s3_keys(bucket, prefix)]
        files = {k[len(prefix):]: storage.s3_client().get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
    else:
        base = Path(uri)
        files = {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()} \
            if base.exists() else {}
    timed = {"report.html": (GENERATED_AT, b"generated <time>"), "metrics.json": (FIT_SECONDS, b'"seconds": <t>')}
    return {k: timed[k][0].sub(timed[k][1], v) if k in timed else v for k, v in files.items() if not k.startswith(skip)}


def inputs_snapshot(inputs: dict) -> dict[str, dict[str, bytes]]:
    shots = {name: snapshot(inputs[name]) for name in ("unified", "pre", "pre-emb", "split", "model", "emb")}
    shots["local"] = {p.relative_to(inputs["root"]).as_posix(): p.read_bytes()
                      for p in Path(inputs["root"]).rglob("*") if p.is_file()}
    return shots


def assert_not_visible(uri: str) -> None:
    """Readers see nothing there, or refuse it as unfinished."""
    try:
        files = storage.list_files(uri) if storage.exists(uri) else []
    except IncompleteOutputError:
        return
    assert files == [], f"partial output visible at {uri}: {files[:5]}"


def assert_unfinished_then_rerun(stage: str, spec: dict, out: str, reference: dict[str, bytes]) -> None:
    """The interrupted output is invisible; the rerun completes it as an undisturbed run would have."""
    assert_not_visible(out)
    code, err = run_in_process(rerun(stage, spec))
    assert code == 0, err[-3000:]
    assert snapshot(out, stage) == reference


def assert_one_line(code: int, stderr: str, expected_code: int, *fragments: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("msenc ")]
    assert code == expected_code and "Traceback" not in stderr, (code, stderr[-3000:])
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def references(inputs):
    """Each stage's output from an undisturbed run. Every cell that completes compares its output with this
    one: byte-identical but for ``TIMING_FILES`` (so each such cell also checks that a rerun is idempotent)."""
    refs = {}
    for stage in STAGES:
        out = f"s3://{inputs['bucket']}/ref/{stage}"
        code, err = run_in_process(stage_spec(stage, inputs, out))
        assert code == 0, err[-3000:]
        refs[stage] = snapshot(out, stage)
        assert refs[stage], stage
    return refs


class Matrix:
    def __init__(self):
        self.cells: dict[tuple[str, str], str] = {}

    def table(self) -> str:
        rows = ["| stage | " + " | ".join(FAULTS) + " |", "|---" * (len(FAULTS) + 1) + "|"]
        for stage in STAGES:
            rows.append(f"| {stage} | " + " | ".join(self.cells.get((stage, f), "") for f in FAULTS) + " |")
        return "\n".join(rows)


@pytest.fixture(scope="module")
def matrix(request):
    m = Matrix()
    yield m
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None and m.cells:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line("\nfault matrix (stage x fault -> outcome):\n" + m.table())


def cell(inputs: dict, fault: str, stage: str) -> tuple[dict, str, dict]:
    """The inputs as they are before the cell runs, its output location and the stage run."""
    out = f"s3://{inputs['bucket']}/out/{fault}/{stage}" + ("/run-1" if stage == "export" else "")
    return inputs_snapshot(inputs), out, stage_spec(stage, inputs, out)


# ------------------------------------------------------------------------------------------- the cells
@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_mid_publish_then_rerun(stage, inputs, references, env, matrix):
    """SIGKILL right after the first file (train: the second checkpoint's state) reached the object store."""
    before, out, spec = cell(inputs, "kill", stage)
    n = "2" if stage == "train" else "1"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "fault_runner.py"), "kill-after-upload", n,
                           json.dumps(spec)], env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert_unfinished_then_rerun(stage, spec, out, references[stage])
    assert inputs_snapshot(inputs) == before  # nothing read was changed
    matrix.cells[(stage, "kill -9, rerun")] = completes(stage)


@pytest.mark.parametrize("stage", STAGES)
def test_object_store_stopped_mid_run_then_restarted(stage, inputs, references, server, matrix):
    before, out, spec = cell(inputs, "down", stage)
    client = storage.s3_client()
    real, calls = client.upload_file, {"n": 0}
    stop_after = 2 if stage == "train" else 1

    def upload_file(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == stop_after:
            server.stop()

    client.upload_file = upload_file
    try:
        code, err = run_in_process(spec)
    finally:
        del client.upload_file
        if calls["n"] >= stop_after:
            server.start()
    assert calls["n"] >= stop_after
    assert_one_line(code, err, EXIT_TRANSIENT, "cannot reach the object store", server.endpoint, "rerun")
    assert_unfinished_then_rerun(stage, spec, out, references[stage])
    assert inputs_snapshot(inputs) == before
    matrix.cells[(stage, "S3 down, restarted")] = "exit 138, one line; " + completes(stage)


@pytest.mark.parametrize("stage", STAGES)
def test_credentials_removed(stage, inputs, monkeypatch, matrix, tmp_path):
    before, out, spec = cell(inputs, "nocreds", stage)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, err = run_in_process(spec)
    line = assert_one_line(code, err, EXIT_ENVIRONMENT, "no object-storage credentials", "AWS_ACCESS_KEY_ID")
    assert "s3://" in line
    monkeypatch.undo()
    assert not storage.exists(out)
    assert inputs_snapshot(inputs) == before
    matrix.cells[(stage, "no credentials")] = "exit 4, one line"


def read_only_runner(folder: Path) -> list[str]:
    """A command prefix under which ``folder`` cannot be written: its permissions for a non-root user; for
    root (who ignores them) a read-only bind mount in a user namespace."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no way to make a folder read-only")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind -o ro {folder} {folder}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root, and no read-only bind mount here: {probe.stderr.strip()}")
    return ["unshare", "-rm", "sh", "-c", f'mount --bind -o ro {folder} {folder} && exec "$@"', "sh"]


def test_read_only_output_location(inputs, env, matrix, tmp_path):
    """All stages in one process (one start-up) under a read-only output folder."""
    before = inputs_snapshot(inputs)
    locked = tmp_path / "locked"
    locked.mkdir()
    specs = [stage_spec(stage, inputs, str(locked / stage)) for stage in STAGES]
    prefix = read_only_runner(locked)
    proc = subprocess.run([*prefix, sys.executable, str(REPO / "tests" / "fault_runner.py"), "stages",
                           json.dumps(specs)], env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(STAGES), proc.stdout[-3000:]
    for stage, result in zip(STAGES, results):
        assert_one_line(result["code"], result["stderr"], EXIT_ENVIRONMENT, str(locked / stage), "cannot write")
        matrix.cells[(stage, "read-only output")] = "exit 4, one line"
    assert list(locked.iterdir()) == []
    assert inputs_snapshot(inputs) == before


def test_corrupt_newest_checkpoint(inputs, references, matrix):
    """train only (the other stages keep no checkpoints): the newest checkpoint's state truncated, then
    --resume continues from the one before and ends with the undisturbed run's model."""
    before, out, spec = cell(inputs, "corrupt", "train")
    code, err = run_in_process({"argv": [*spec["argv"], "--stop-after", "3"]})  # checkpoints 2 and 3
    assert code == 0, err[-3000:]
    bucket, key = storage.split_s3(storage.join(out, "checkpoints", "step-00000003", "state.pt"))
    data = storage.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    storage.s3_client().put_object(Bucket=bucket, Key=key, Body=data[: len(data) // 3])
    assert_not_visible(out)  # stopped early: the model is unfinished
    code, err = run_in_process(rerun("train", spec))
    assert code == 0, err[-3000:]
    assert snapshot(out, "train") == references["train"]
    assert inputs_snapshot(inputs) == before
    matrix.cells[("train", "corrupt checkpoint")] = "resumes from the previous one"
    for stage in STAGES:
        matrix.cells.setdefault((stage, "corrupt checkpoint"), "n/a")


@pytest.mark.parametrize("stage", STAGES)
def test_concurrent_second_writer(stage, inputs, references, matrix):
    """A second run on the same output while the first is uploading: the CLI's second run stops with its
    one-line error (the first completes); the export component, which replaces its own step's earlier
    attempt, lets both complete with the same output."""
    before, out, spec = cell(inputs, "concurrent", stage)
    client = storage.s3_client()
    real = client.upload_file
    uploading, go_on = threading.Event(), threading.Event()
    first = {}

    def upload_file(*args, **kwargs):
        if threading.current_thread().name == "first" and not uploading.is_set():
            uploading.set()
            go_on.wait(300)
        return real(*args, **kwargs)

    def run_first():
        first["result"] = run_in_process(spec)

    client.upload_file = upload_file
    thread = threading.Thread(target=run_first, name="first")
    try:
        thread.start()
        assert uploading.wait(300), "the first run never uploaded"
        code, err = run_in_process(spec)
    finally:
        go_on.set()
        thread.join(300)
        del client.upload_file
    assert first["result"][0] == 0, first["result"][1][-3000:]
    if stage == "export":
        assert code == 0, err[-3000:]
        outcome = "both complete, same output"
    else:
        assert_one_line(code, err, EXIT_ENVIRONMENT, out, "another")
        outcome = "2nd: exit 4, one line; 1st completes"
    assert snapshot(out, stage) == references[stage]
    assert inputs_snapshot(inputs) == before
    matrix.cells[(stage, "concurrent writer")] = outcome


def test_readme_shows_the_matrix(matrix):
    """Last: once every cell ran, README.md's reliability table is this matrix."""
    if len(matrix.cells) < len(STAGES) * len(FAULTS):
        pytest.skip("only part of the matrix ran")
    assert matrix.table() in (REPO / "README.md").read_text(), "README.md's reliability table:\n" + matrix.table()
