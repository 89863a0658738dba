"""Container plumbing for tests marked ``container``: a Docker-API socket and the msenc image built on it.

``docker_api`` (session): a Docker-API endpoint that answers, from the first that works of
  1. ``DOCKER_HOST`` if set, 2. the default ``/var/run/docker.sock``, 3. podman's API service started by
  ``images/podman-setup.sh`` (installs and configures podman when missing; the service exits by itself when
  idle, so concurrent sessions never stop each other's). Sets ``DOCKER_HOST`` for the session (kfp's
  DockerRunner and the docker SDK read it). When none can be made the tests are SKIPPED with the reason.
``msenc_image`` (session): the tag of the CPU image (images/Dockerfile) built for the current sources, e.g.
  ``localhost/msenc-python:test-1a2b3c4d5e6f``. The tag is a content hash of everything the image is made of
  (Dockerfile, requirements script, pyproject.toml, README.md, msenc_lib/, the base image's ID, the torch
  wheel), so a re-run with unchanged inputs reuses the image in about a second. On podman the base image is a
  Debian + Python image made locally by ``images/base-image.sh`` (no registry is reachable here); on docker
  it is the Dockerfile's default unless ``MSENC_TEST_BASE_IMAGE`` names one. torch comes from
  a local CPU wheel when one of the installed version lies in pip's find-links (``TORCH_WHEEL`` overrides).

Import both into a conftest (``from container_fixtures import docker_api, msenc_image``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
IMAGE_REPO = "localhost/msenc-python"
LOCAL_BASE_IMAGE = "localhost/msenc-python-base:bookworm"
BUILD_LOG = REPO / ".pytest_cache" / "msenc-image-build.log"


@dataclass
class DockerApi:
    url: str
    engine: str  # "podman" or "docker": which CLI builds images into the store behind the socket
    client: object  # docker.DockerClient


def _skip(reason: str):
    print(f"\n[container tests] SKIPPED: {reason}", file=sys.stderr)
    pytest.skip(reason)


def _ping(url: str):
    """A docker client for ``url`` if the endpoint answers, else None."""
    import docker

    try:
        client = docker.DockerClient(base_url=url, timeout=30)
        client.ping()
        return client
    except Exception:
        return None


def _engine_of(client) -> str:
    components = [c.get("Name", "") for c in (client.version().get("Components") or [])]
    return "podman" if any("podman" in c.lower() for c in components) else "docker"


@pytest.fixture(scope="session")
def docker_api():
    try:
        import docker  # noqa: F401
    except ImportError:
        _skip("the docker Python SDK is not installed (pip install -e '.[pipeline]')")
    tried: list[str] = []
    client = url = None
    for candidate in (os.environ.get("DOCKER_HOST"), "unix:///var/run/docker.sock"):
        if candidate and (candidate.startswith("tcp://") or os.path.exists(candidate.removeprefix("unix://"))):
            client = _ping(candidate)
            if client:
                url = candidate
                break
            tried.append(f"{candidate} does not answer")
    if client is None:
        t0 = time.monotonic()
        out = subprocess.run(["bash", str(IMAGES / "podman-setup.sh")], capture_output=True, text=True, timeout=600)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("export DOCKER_HOST=")), None)
        if out.returncode != 0 or line is None:
            _skip("no Docker-API socket answers (" + "; ".join(tried or ["DOCKER_HOST unset"]) + ") and "
                  f"images/podman-setup.sh could not start podman's (exit {out.returncode}): {out.stderr.strip()[-500:]}")
        url = line.split("=", 1)[1].strip().strip("'\"")
        client = _ping(url)
        if client is None:
            _skip(f"podman's API service on {url} does not answer")
        print(f"\n[container tests] podman API on {url} ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = url
    try:
        yield DockerApi(url=url, engine=_engine_of(client), client=client)
    finally:
        client.close()
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous


def _find_torch_wheel() -> str | None:
    """A local wheel of the installed torch for the image's Python 3.11 (TORCH_WHEEL env wins)."""
    if os.environ.get("TORCH_WHEEL"):
        return os.environ["TORCH_WHEEL"]
    try:
        from importlib.metadata import version

        torch_version = version("torch")
    except Exception:
        return None
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        cfg = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                             capture_output=True, text=True, timeout=60)
        dirs += cfg.stdout.split()
    except Exception:
        pass
    for d in dirs:
        d = d.removeprefix("file://")
        hits = sorted(glob.glob(os.path.join(d, f"torch-{torch_version}-cp311-cp311-*linux*_x86_64.whl")))
        if hits:
            return hits[0]
    return None


def image_inputs_hash(*extra: str) -> str:
    """Hash of the files the CPU image is built from (plus ``extra`` strings such as the base image ID)."""
    files = [IMAGES / "Dockerfile", IMAGES / "pyproject_requirements.py", REPO / ".dockerignore",
             REPO / "pyproject.toml", REPO / "setup.py", REPO / "README.md"]
    for package in ("msenc_lib", "cli", "components", "pipelines"):
        files += sorted(p for p in (REPO / package).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    for e in extra:
        h.update(e.encode() + b"\0")
    return h.hexdigest()[:12]


def _image_id(client, ref: str) -> str | None:
    import docker

    try:
        return client.images.get(ref).id
    except docker.errors.ImageNotFound:
        return None


@pytest.fixture(scope="session")
def msenc_image(docker_api: DockerApi) -> str:
    client = docker_api.client
    env = dict(os.environ, ENGINE=docker_api.engine)
    base = os.environ.get("MSENC_TEST_BASE_IMAGE")
    if base is None and docker_api.engine == "podman":
        base = LOCAL_BASE_IMAGE
        if _image_id(client, base) is None:
            t0 = time.monotonic()
            out = subprocess.run(["bash", str(IMAGES / "base-image.sh"), base], capture_output=True, text=True,
                                 timeout=1200)
            if out.returncode != 0:
                pytest.fail(f"images/base-image.sh {base} failed:\n{out.stderr[-3000:]}")
            print(f"\n[container tests] built base image {base} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    wheel = _find_torch_wheel()
    base_id = (_image_id(client, base) if base else None) or "dockerfile-default"
    tag = f"{IMAGE_REPO}:test-{image_inputs_hash(base_id, os.path.basename(wheel or 'index'))}"
    if _image_id(client, tag):
        return tag
    if base:
        env["BASE_IMAGE"] = base
    if wheel:
        env["TORCH_WHEEL"] = wheel
    BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(BUILD_LOG, "w") as log:
        out = subprocess.run(["bash", str(REPO / "images" / "build.sh"), tag], cwd=REPO, env=env, stdout=log,
                             stderr=subprocess.STDOUT, timeout=1800)
    if out.returncode != 0:
        pytest.fail(f"building {tag} failed (log: {BUILD_LOG}):\n" + BUILD_LOG.read_text()[-4000:])
    print(f"\n[container tests] built {tag} in {time.monotonic() - t0:.0f} s (log: {BUILD_LOG})", file=sys.stderr)
    _remove_stale_test_tags(docker_api, keep=tag)
    return tag


def _remove_stale_test_tags(docker_api: DockerApi, keep: str, max_age_h: float = 6.0) -> None:
    """Remove ``test-*`` builds older than ``max_age_h`` (layers shared with newer images stay). Younger ones
    are kept: another checkout on the same machine may be testing with its own build right now."""
    import datetime

    import docker

    now = datetime.datetime.now(datetime.timezone.utc)
    for image in docker_api.client.images.list(name=IMAGE_REPO):
        try:
            created = datetime.datetime.fromisoformat(image.attrs["Created"][:19]).replace(tzinfo=datetime.timezone.utc)
        except (KeyError, TypeError, ValueError):
            continue
        if (now - created).total_seconds() < max_age_h * 3600:
            continue
        for t in image.tags:
            if t.startswith(f"{IMAGE_REPO}:test-") and t != keep:
                try:
                    docker_api.client.images.remove(t)
                except docker.errors.APIError:
                    pass  # in use by a container, or already gone
