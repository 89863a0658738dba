"""``msenc pipeline ...``: compile, run locally (kfp.local), upload to and run on a Kubeflow host, schedule
retraining."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel

from msenc_components import DEFAULT_IMAGE, DEFAULT_JOB_IMAGE, LOCAL_IMAGE
from msenc_lib.errors import ConfigError

COMMITTED_PACKAGE = Path(__file__).with_name("msenc_pipeline.yaml")


class CompileResult(BaseModel):
    package: str
    image: str
    job_image: str
    storage_secret: str
    parameters: list[str]


class RunLocalResult(BaseModel):
    runner: str
    output_dir: str
    pipeline_root: str
    report: str


def compile_pipeline(output: str | Path, options=None) -> CompileResult:
    """Write the package for a cluster: images must be pullable there (no ``localhost/``)."""
    from kfp import compiler

    from msenc_pipelines.pipeline import PipelineOptions, build_pipeline
    from msenc_pipelines.submit import pipeline_parameters

    opts = options or PipelineOptions()
    for flag, ref in (("--image", opts.image), ("--job-image", opts.job_image)):
        if ref.startswith("localhost/"):
            raise ConfigError(f"{flag} {ref}: a cluster pulls its images and cannot resolve localhost/; push the "
                              "image to a registry and give that reference (local runs: msenc pipeline run-local)")
    compiler.Compiler().compile(build_pipeline(opts), str(output))
    return CompileResult(package=str(output), image=opts.image, job_image=opts.job_image,
                         storage_secret=opts.storage_secret, parameters=sorted(pipeline_parameters(output)))


def run_pipeline_locally(output_dir: str | Path, runner: str = "subprocess", image: str = LOCAL_IMAGE,
                         arguments: dict | None = None) -> RunLocalResult:
    """The whole pipeline with kfp.local; artifacts under ``<output_dir>/pipeline_root``, and the report
    also copied to ``<output_dir>/report.html``."""
    from msenc_pipelines.local import run_local
    from msenc_pipelines.pipeline import PipelineOptions, build_pipeline

    out = Path(output_dir).resolve()
    result = run_local(build_pipeline(PipelineOptions(image=image)), arguments or {}, out, runner=runner)
    report = out / "report.html"
    shutil.copyfile(result.outputs["Output"], report)
    return RunLocalResult(runner=runner, output_dir=str(out), pipeline_root=result.pipeline_root, report=str(report))


# ------------------------------------------------------------------------------------- compile options
_COMPILE_FLAGS = ("image", "job_image", "storage_secret", "access_key_key", "secret_key_key", "endpoint_key",
                  "region_key", "s3_endpoint", "cpu", "memory", "node_selector", "toleration", "train_gpus",
                  "accelerator_type", "train_node_selector", "train_toleration", "trainer_service_account")


def add_compile_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "package options (compile time)",
        "Images, the storage Secret, resources and placement are written into the package. Defaults: the "
        "committed package's (placeholder images in registry.example.com: set your own).")
    g.add_argument("--image", help=f"msenc CPU image of every step, as the cluster pulls it (default: {DEFAULT_IMAGE})")
    g.add_argument("--job-image", help="msenc CUDA image of the GPU training pods: default of the job_image run "
                   f"parameter (default: {DEFAULT_JOB_IMAGE})")
    g.add_argument("--storage-secret", metavar="NAME", help="Kubernetes Secret injected as S3 credentials "
                   "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optional AWS_ENDPOINT_URL/AWS_DEFAULT_REGION) into "
                   "every step, and the training pods' Secret by default (default: msenc-storage)")
    g.add_argument("--access-key-key", metavar="KEY", help="key of the access key id in the Secret "
                   "(default: AWS_ACCESS_KEY_ID; KFP's mlpipeline-minio-artifact: accesskey)")
    g.add_argument("--secret-key-key", metavar="KEY", help="key of the secret access key (default: "
                   "AWS_SECRET_ACCESS_KEY; KFP's mlpipeline-minio-artifact: secretkey)")
    g.add_argument("--endpoint-key", metavar="KEY", help="optional key of the S3 endpoint URL in the Secret "
                   "(default: AWS_ENDPOINT_URL; '' for none)")
    g.add_argument("--region-key", metavar="KEY", help="optional key of the region (default: AWS_DEFAULT_REGION; "
                   "'' for none)")
    g.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint set in every pod instead of the Secret's "
                   "endpoint key, e.g. http://minio-service.kubeflow.svc.cluster.local:9000")
    g.add_argument("--cpu", action="append", default=[], metavar="STEP=REQUEST[:LIMIT]",
                   help="CPU of a step's pod (STEP 'all' for every step; repeatable), e.g. train=2:4")
    g.add_argument("--memory", action="append", default=[], metavar="STEP=REQUEST[:LIMIT]",
                   help="memory of a step's pod (repeatable), e.g. embed=8Gi:16Gi")
    g.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE",
                   help="nodeSelector of every step (repeatable)")
    g.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE][:EFFECT]",
                   help="toleration of every step (repeatable)")
    g.add_argument("--train-gpus", type=int, metavar="N", help="GPUs of the train step's own pod "
                   "(backend=local on a GPU node; it then runs on --job-image)")
    g.add_argument("--accelerator-type", help="accelerator resource of a GPU train step (default: nvidia.com/gpu)")
    g.add_argument("--train-node-selector", action="append", default=[], metavar="KEY=VALUE",
                   help="extra nodeSelector of the train step (repeatable)")
    g.add_argument("--train-toleration", action="append", default=[], metavar="KEY[=VALUE][:EFFECT]",
                   help="extra toleration of the train step (repeatable), e.g. nvidia.com/gpu:NoSchedule")
    g.add_argument("--trainer-service-account", metavar="NAME", help="default of the trainer_service_account "
                   "run parameter: the PyTorchJob pods' ServiceAccount (default: msenc-trainer)")


def _resources(cpu: list[str], memory: list[str]) -> dict[str, dict[str, str]]:
    from msenc_pipelines.pipeline import DEFAULT_RESOURCES, STEPS

    out = {step: r.model_dump() for step, r in DEFAULT_RESOURCES.items()}
    for kind, specs in (("cpu", cpu), ("memory", memory)):
        for spec in specs:
            step, sep, value = spec.partition("=")
            if not sep or not value:
                raise ConfigError(f"--{kind} expects STEP=REQUEST[:LIMIT], got {spec!r}")
            steps = STEPS if step == "all" else [step]
            if step != "all" and step not in STEPS:
                raise ConfigError(f"--{kind} {spec}: no step {step!r} (steps: all, {', '.join(STEPS)})")
            request, _, limit = value.partition(":")
            for s in steps:
                out[s][f"{kind}_request"] = request
                out[s][f"{kind}_limit"] = limit or request
    return out


def options_from_args(args: argparse.Namespace):
    """PipelineOptions from the compile flags given (the rest keep their defaults)."""
    from pydantic import ValidationError

    from msenc_pipelines.pipeline import PipelineOptions

    given = {name: getattr(args, name) for name in ("image", "job_image", "storage_secret", "access_key_key",
                                                     "secret_key_key", "endpoint_key", "region_key", "s3_endpoint",
                                                     "train_gpus", "accelerator_type", "trainer_service_account")
             if getattr(args, name, None) is not None}
    given["node_selector"] = ",".join(getattr(args, "node_selector", []))
    given["train_node_selector"] = ",".join(getattr(args, "train_node_selector", []))
    given["tolerations"] = list(getattr(args, "toleration", []))
    given["train_tolerations"] = list(getattr(args, "train_toleration", []))
    try:
        given["resources"] = _resources(getattr(args, "cpu", []), getattr(args, "memory", []))
        return PipelineOptions(**given)
    except (ValidationError, ValueError) as e:
        raise ConfigError(f"package options: {e}") from None


def _compile_flags_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) not in (None, []) for name in _COMPILE_FLAGS)


@contextlib.contextmanager
def _package(args: argparse.Namespace) -> Iterator[Path]:
    """``--package``, else the committed package, else (compile flags given) a package compiled for them."""
    if getattr(args, "package", None):
        if _compile_flags_given(args):
            raise ConfigError("--package is an already compiled package: give either it or package options")
        yield Path(args.package)
        return
    if not _compile_flags_given(args) and COMMITTED_PACKAGE.exists():
        yield COMMITTED_PACKAGE
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "msenc_pipeline.yaml"
        compile_pipeline(path, options_from_args(args))
        yield path


# ------------------------------------------------------------------------------------------------ CLI
def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pipeline", help="the Kubeflow pipeline: compile, run locally, upload, submit, schedule",
        description="The msenc Kubeflow pipeline (data -> preprocess -> split -> train -> embed -> evaluate "
        "[-> export]). Pipeline parameters are set per run with --param NAME=VALUE (see 'msenc pipeline "
        "compile' for their list); images, the storage Secret, resources and placement are package options.")
    sub = p.add_subparsers(dest="pipeline_command", metavar="<action>", required=True)

    c = sub.add_parser("compile", help="write the pipeline package (YAML) for a cluster",
                       description="Write the pipeline package: upload it in the Kubeflow UI, or use 'msenc "
                       "pipeline upload/submit/schedule'.")
    c.add_argument("--output", required=True, help="YAML file to write")
    add_compile_options(c)
    c.set_defaults(func=lambda a: compile_pipeline(a.output, options_from_args(a)))

    r = sub.add_parser("run-local", help="run the whole pipeline on this machine with kfp.local",
                       description="Run the pipeline with kfp.local. --runner subprocess runs every step in this "
                       "Python environment; --runner docker runs every step in the msenc image through a "
                       "Docker-API socket (DOCKER_HOST: docker, or podman's 'podman system service'). All "
                       "artifacts land under OUTPUT_DIR/pipeline_root; the report is copied to "
                       "OUTPUT_DIR/report.html. The evaluation is the full default (every row, 3 fitting seeds); "
                       "--param evaluate_config_yaml='{seeds: 1, rows: [none/dummy, embedding/elastic_net]}' "
                       "sets any 'msenc evaluate' field for a quicker run.")
    r.add_argument("--runner", choices=["subprocess", "docker"], default="subprocess")
    r.add_argument("--output-dir", required=True)
    r.add_argument("--data-size", choices=["tiny", "demo", "bench"], help="embedded synthetic data size")
    r.add_argument("--data-source-uri", help="ingest this URI (s3:// or path) instead of the embedded data")
    r.add_argument("--preset", help="model preset: tiny, small, seed")
    r.add_argument("--max-steps", type=int, help="training steps")
    r.add_argument("--export-uri", help="also copy model, embeddings and evaluation to EXPORT_URI/<run>/")
    r.add_argument("--image", default=LOCAL_IMAGE, help="msenc image (docker runner; default: %(default)s, what "
                   "'make image' builds)")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="any pipeline parameter")
    r.set_defaults(func=_run_local)

    def remote(name: str, helptext: str, description: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=helptext, description=description)
        s.add_argument("--host", required=True, help="Kubeflow Pipelines API address, e.g. http://localhost:8080 "
                       "(kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80)")
        s.add_argument("--namespace", help="Kubeflow profile namespace (multi-user Kubeflow)")
        s.add_argument("--token", help="bearer token (else kfp's usual credentials)")
        s.add_argument("--package", help="an already compiled package (default: the committed one, or one "
                       "compiled for the package options given)")
        add_compile_options(s)
        return s

    u = remote("upload", "upload the package as a pipeline (or a new version of it), as the Kubeflow UI lists them",
               "Upload the package to the Kubeflow Pipelines UI: a new pipeline NAME, or a new version of it when "
               "it exists. Runs can then be started from the UI.")
    u.add_argument("--name", default="msenc", help="pipeline name in the UI (default: %(default)s)")
    u.add_argument("--version", help="version name (default: msenc-<UTC time>)")
    u.add_argument("--description", help="description shown in the UI")
    u.set_defaults(func=_upload)

    for name, helptext in (("submit", "start one run on a Kubeflow Pipelines host"),
                           ("schedule", "create a recurring run (scheduled retraining) on a Kubeflow host")):
        s = remote(name, helptext, helptext[0].upper() + helptext[1:] + ".")
        s.add_argument("--experiment", default="msenc", help="experiment name (default: %(default)s)")
        s.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
        s.add_argument("--pipeline-root", help="object storage for the run's artifacts, e.g. s3://bucket/pipelines "
                       "(default: the installation's, KFP's MinIO)")
        s.add_argument("--no-cache", action="store_true", help="run every step, reusing no earlier outputs")
        s.add_argument("--service-account", help="ServiceAccount of the run's step pods (default: the "
                       "installation's: pipeline-runner, or default-editor in a profile)")
        if name == "submit":
            s.add_argument("--run-name", help="run name (default: msenc-<UTC time>)")
            s.set_defaults(func=_submit)
        else:
            s.add_argument("--cron", required=True,
                           help='cron schedule, 5 fields ("0 3 * * 0" = Sundays 03:00) or 6 with seconds')
            s.add_argument("--job-name", help="recurring run name (default: msenc-retrain-<UTC time>)")
            s.add_argument("--max-concurrency", type=int, default=1, help="runs at once (default: 1)")
            s.add_argument("--catchup", action="store_true", help="also start the runs missed while the schedule "
                           "was paused or the cluster down (default: only the next one)")
            s.set_defaults(func=_schedule)


def _arguments(args: argparse.Namespace, package: Path) -> dict:
    from msenc_pipelines.submit import parse_params

    arguments = parse_params(args.param, package)
    for name in ("data_size", "data_source_uri", "preset", "max_steps", "export_uri"):
        value = getattr(args, name, None)
        if value is not None:
            arguments[name] = value
    return arguments


def _run_local(args: argparse.Namespace) -> RunLocalResult:
    arguments = _arguments(args, COMMITTED_PACKAGE)
    result = run_pipeline_locally(args.output_dir, args.runner, args.image, arguments)
    print(f"report: {result.report}", file=sys.stderr)
    return result


def _upload(args: argparse.Namespace):
    from msenc_pipelines.submit import upload

    with _package(args) as package:
        return upload(args.host, package, name=args.name, version=args.version, description=args.description,
                      namespace=args.namespace, token=args.token)


def _submit(args: argparse.Namespace):
    from msenc_pipelines.submit import submit

    with _package(args) as package:
        return submit(args.host, package, _arguments(args, package), experiment=args.experiment,
                      run_name=args.run_name, namespace=args.namespace, token=args.token,
                      enable_caching=False if args.no_cache else None, pipeline_root=args.pipeline_root,
                      service_account=args.service_account)


def _schedule(args: argparse.Namespace):
    from msenc_pipelines.submit import schedule

    with _package(args) as package:
        return schedule(args.host, package, args.cron, _arguments(args, package), experiment=args.experiment,
                        job_name=args.job_name, namespace=args.namespace, token=args.token,
                        max_concurrency=args.max_concurrency, no_catchup=not args.catchup,
                        enable_caching=False if args.no_cache else None, pipeline_root=args.pipeline_root,
                        service_account=args.service_account)
