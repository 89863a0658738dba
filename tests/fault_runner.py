"""Run one msenc stage in this process with a fault injected at a given point (the fault-injection suite).

    python tests/fault_runner.py kill-after-upload N STAGE-JSON
    python tests/fault_runner.py stages STAGES-JSON

``kill-after-upload N``: the process SIGKILLs itself right after its N-th file upload to object storage
completes (mid-publish: some files up, no published marker). ``stages``: run each stage in turn (used under a
read-only output location) and print one JSON line per stage: its exit status and its stderr's last line.
A stage is ``{"argv": [...]}`` (the msenc CLI) or ``{"export": {...}}`` (the export component's body).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys


def run_stage(stage: dict) -> int:
    """Run a stage as the CLI or the component would; its exit status."""
    if "argv" in stage:
        from msenc_cli.main import main

        return main(stage["argv"])
    from kfp.dsl import Dataset, Model

    from msenc_components.export.component import export

    spec = stage["export"]
    try:
        export(model=Model(uri=spec["model"]), embeddings=Dataset(uri=spec["embeddings"]),
               evaluation=Dataset(uri=spec["evaluation"]), export_uri=spec["export_uri"], run_name=spec["run_name"])
    except SystemExit as e:
        return int(e.code)
    return 0


def kill_after_upload(n: int) -> None:
    from msenc_lib import storage

    client = storage.s3_client()
    real = client.upload_file
    calls = {"n": 0}

    def upload_file(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    client.upload_file = upload_file


def main(argv: list[str]) -> int:
    if argv[0] == "kill-after-upload":
        kill_after_upload(int(argv[1]))
        return run_stage(json.loads(argv[2]))
    if argv[0] == "stages":
        for stage in json.loads(argv[1]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = run_stage(stage)
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            print(json.dumps({"code": code, "last": lines[-1] if lines else "", "stderr": err.getvalue()[-3000:]}),
                  flush=True)
        return 0
    raise SystemExit(f"unknown fault {argv[0]!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
