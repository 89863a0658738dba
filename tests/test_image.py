"""images/: the Dockerfiles' structure (both, no engine needed) and the CPU image for real (tests marked
``container``: built and run through a Docker-API socket, see container_fixtures.py; skipped with the reason
printed where no socket can be made). images/Dockerfile.cuda cannot be built here (no registry for its CUDA
base), so its structure is checked against the CPU file: CUDA runtime base, non-root, same install steps.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"


# -------------------------------------------------------------------------------- Dockerfile structure
def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending += (" " if pending else "") + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
            pending = ""
    assert not pending, f"{path}: dangling line continuation"
    return out


def arg_default(instrs, name: str) -> str | None:
    for word, rest in instrs:
        if word == "ARG" and rest.split("=", 1)[0] == name:
            return rest.split("=", 1)[1].strip('"') if "=" in rest else None
    return None


@pytest.fixture(scope="module")
def cpu():
    return instructions(IMAGES / "Dockerfile")


@pytest.fixture(scope="module")
def cuda():
    return instructions(IMAGES / "Dockerfile.cuda")


def test_base_image_is_a_build_argument(cpu, cuda):
    for instrs in (cpu, cuda):
        froms = [rest for word, rest in instrs if word == "FROM"]
        assert froms == ["${BASE_IMAGE}"]
        before_from = instrs[: [w for w, _ in instrs].index("FROM")]
        assert [w for w, _ in before_from] == ["ARG"] and before_from[0][1].startswith("BASE_IMAGE=")
    assert re.fullmatch(r"docker\.io/library/python:3\.1[1-9]-slim(-\w+)?", arg_default(cpu, "BASE_IMAGE"))
    assert re.fullmatch(r"docker\.io/nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d\d\.04",
                        arg_default(cuda, "BASE_IMAGE"))


def test_images_run_as_a_non_root_user(cpu, cuda):
    for instrs in (cpu, cuda):
        users = [rest for word, rest in instrs if word == "USER"]
        assert users == ["${MSENC_UID}:${MSENC_UID}"]
        uid = arg_default(instrs, "MSENC_UID")
        assert uid and uid.isdigit() and int(uid) > 0  # numeric, so runAsNonRoot can verify it
        words = [w for w, _ in instrs]
        assert "RUN" not in words[words.index("USER"):], "nothing may run after switching to the user"
        assert any(w == "RUN" and "useradd --uid \"${MSENC_UID}\"" in r for w, r in instrs)
        assert any(w == "ENV" and "PATH=/opt/msenc/bin:" in r for w, r in instrs)


def test_cuda_image_installs_the_same_way(cpu, cuda):
    def install_steps(instrs):
        return [(w, r) for w, r in instrs if w == "COPY" or (w == "RUN" and "pip install" in r)] + \
               [(w, r) for w, r in instrs if w in ("CMD", "WORKDIR")]

    assert install_steps(cuda) == install_steps(cpu)
    steps = [r for w, r in install_steps(cpu) if w == "RUN"]
    assert len(steps) == 3
    torch_step, deps_step, pkg_step = steps
    assert '"${TORCH_SPEC}"' in torch_step and "--find-links /tmp/wheels" in torch_step
    assert "--extra pipeline --skip torch" in deps_step
    assert "--no-deps" in pkg_step and "pip check" in pkg_step and "msenc --help" in pkg_step
    for step in (torch_step, deps_step):  # downloads: the CA bundle comes in as a build secret only
        assert "--mount=type=secret,id=pipcert" in step
    assert "+cpu" in arg_default(cpu, "TORCH_SPEC") and "+cpu" not in arg_default(cuda, "TORCH_SPEC")
    for instrs in (cpu, cuda):
        assert not any(w == "COPY" and r.split()[0] == "." for w, r in instrs), "copy only what is needed"
        assert not any(w in ("ENV", "ARG") and "PIP_CERT" in r for w, r in instrs)


def test_requirements_script_reads_the_pipeline_extra():
    out = subprocess.run([sys.executable, str(IMAGES / "pyproject_requirements.py"), str(REPO / "pyproject.toml"),
                          "--extra", "pipeline", "--skip", "torch"], capture_output=True, text=True, check=True)
    reqs = out.stdout.split()
    names = {re.split(r"[<>=!~\[;]", r)[0].lower() for r in reqs}
    assert "torch" not in names and {"kfp", "kubeflow-training", "kubernetes", "transformers", "boto3"} <= names
    bad = subprocess.run([sys.executable, str(IMAGES / "pyproject_requirements.py"), str(REPO / "pyproject.toml"),
                          "--extra", "gpu"], capture_output=True, text=True)
    assert bad.returncode != 0 and "no optional-dependencies group 'gpu'" in bad.stderr


# ------------------------------------------------------------------------------ the image, for real
def run_container(client, image: str, command: list[str], **kwargs) -> tuple[int, str]:
    """Run to completion; (exit code, output). No auto-remove: podman removes too early for logs/wait."""
    container = client.containers.run(image, command, detach=True, **kwargs)
    try:
        code = container.wait(timeout=300)["StatusCode"]
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


@pytest.mark.container
def test_image_runs_msenc_as_non_root_with_a_mounted_output(docker_api, msenc_image, tmp_path):
    import kfp

    from msenc_lib import __version__
    from msenc_lib.launch.pytorchjob import PyTorchJobConfig, render_pytorchjob

    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the image's user (UID 1000) writes here
    job_args = ["--name", "msenc-img", "--image", "reg/msenc:1", "--workers", "2", "--data-uri", "s3://b/split",
                "--output-uri", "s3://b/model", "--preset", "tiny"]
    publish = ("import json, torch, kfp; from msenc_lib import storage\n"
               "with storage.publish('/out/published') as d:\n"
               "    (d / 'versions.json').write_text(json.dumps({'torch': torch.__version__, "
               "'cuda': torch.version.cuda, 'kfp': kfp.__version__}))")
    script = ("set -e; id -u > /out/uid; msenc --version > /out/version; "
              f"msenc launch pytorchjob --render {' '.join(job_args)} > /out/job.yaml; "
              f"python -c \"{publish}\"")
    code, logs = run_container(docker_api.client, msenc_image, ["sh", "-c", script],
                               volumes={str(out): {"bind": "/out", "mode": "rw"}})
    assert code == 0, logs
    assert int((out / "uid").read_text()) != 0
    assert (out / "version").read_text().strip() == f"msenc {__version__}"
    expected = render_pytorchjob(PyTorchJobConfig.load(
        {"name": "msenc-img", "image": "reg/msenc:1", "workers": 2, "data_uri": "s3://b/split",
         "output_uri": "s3://b/model", "preset": "tiny"}, environ={}))
    assert yaml.safe_load((out / "job.yaml").read_text()) == expected  # the image carries these sources
    versions = json.loads((out / "published" / "versions.json").read_text())
    assert versions["cuda"] is None and versions["torch"].startswith("2.")
    assert versions["kfp"] == kfp.__version__
    assert not list(out.glob(".published.tmp-*"))  # publish left no staging folder


@pytest.mark.container
def test_image_reports_bad_input_with_exit_code_2(docker_api, msenc_image):
    code, logs = run_container(docker_api.client, msenc_image,
                               ["msenc", "launch", "pytorchjob", "--render", "--image", "x", "--data-uri",
                                "/data/split", "--output-uri", "s3://b/m"])
    assert code == 2, logs
    assert "data_uri" in logs and "must be an s3:// (or minio://) URI" in logs


@pytest.mark.container
def test_image_reads_and_writes_s3(docker_api, msenc_image, s3):
    """The image's boto3 path: the container (host network) talks to the loopback S3 server of the test."""
    s3.client().put_object(Bucket=s3.bucket, Key="in/data.txt", Body=b"cell-1,cell-2")
    env = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    code_py = (f"from msenc_lib import storage; t = storage.read_text('{s3.uri('in', 'data.txt')}'); "
               f"storage.write_text('{s3.uri('out', 'upper.txt')}', t.upper())")
    code, logs = run_container(docker_api.client, msenc_image, ["python", "-c", code_py], environment=env,
                               network_mode="host")
    assert code == 0, logs
    body = s3.client().get_object(Bucket=s3.bucket, Key="out/upper.txt")["Body"].read()
    assert body == b"CELL-1,CELL-2"
