"""Run the msenc pipeline on this machine with kfp.local: SubprocessRunner or DockerRunner.

Every artifact of the run lies under ``<output_dir>/pipeline_root``. The Docker runner works against any
Docker-API socket (``DOCKER_HOST``: docker, or podman's ``podman system service``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import BaseModel

from msenc_lib.errors import MsencError


class LocalRunResult(BaseModel):
    runner: str
    pipeline_root: str
    outputs: dict[str, str]  # pipeline output name -> local path of the artifact


def run_container_to_completion(client, image: str, command: list[str], volumes: dict[str, Any],
                                **container_run_args) -> int:
    """kfp.local's container step, made reliable: the container is not auto-removed, so its logs and its
    real exit code can always be read (kfp 2.17 reads them from an auto-removed container and, when the
    container is already gone, reports exit code 0 - a failed step as a success; podman loses that race
    almost always). The container is removed afterwards."""
    import docker

    from kfp.local.docker_task_handler import add_latest_tag_if_not_present

    image = add_latest_tag_if_not_present(image=image)
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        print(f"Pulling image {image!r}")
        client.images.pull(image)
    container_run_args.pop("auto_remove", None)
    container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                      volumes=volumes, auto_remove=False, **container_run_args)
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


@contextlib.contextmanager
def reliable_docker_steps() -> Iterator[None]:
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_container_to_completion
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original


def make_runner(kind: str):
    from kfp import local

    if kind == "subprocess":
        return local.SubprocessRunner(use_venv=False)
    if kind == "docker":
        # the image runs as a non-root user: give it the caller's ids so it can write the pipeline root
        return local.DockerRunner(user=f"{os.getuid()}:{os.getgid()}", network_mode="host")
    raise MsencError(f"unknown runner {kind!r}: subprocess or docker")


def run_local(pipeline_func: Callable, arguments: dict[str, Any], output_dir: str | os.PathLike,
              runner: str = "subprocess") -> LocalRunResult:
    """Run ``pipeline_func(**arguments)`` with kfp.local; the pipeline root is ``<output_dir>/pipeline_root``."""
    from kfp import local

    root = Path(output_dir).resolve() / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=make_runner(runner), pipeline_root=str(root), raise_on_error=True)
    with reliable_docker_steps() if runner == "docker" else contextlib.nullcontext(), warnings.catch_warnings():
        # resources, placement and Secrets are for a cluster: on this machine they do not apply
        warnings.filterwarnings("ignore", message="Task .* have no effect in the current local runner")
        task = pipeline_func(**arguments)
    outputs = {}
    for name, artifact in (task.outputs or {}).items():
        path = getattr(artifact, "path", None)
        if path:
            outputs[name] = path
    return LocalRunResult(runner=runner, pipeline_root=str(root), outputs=outputs)
