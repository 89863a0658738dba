"""``msenc pipeline ...``: compile, run locally (kfp.local), submit to a Kubeflow host, schedule retraining."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

from msenc_components import DEFAULT_IMAGE

COMMITTED_PACKAGE = Path(__file__).with_name("msenc_pipeline.yaml")


class CompileResult(BaseModel):
    package: str
    image: str
    parameters: list[str]


class RunLocalResult(BaseModel):
    runner: str
    output_dir: str
    pipeline_root: str
    report: str


def compile_pipeline(output: str | Path, image: str = DEFAULT_IMAGE) -> CompileResult:
    from kfp import compiler

    from msenc_pipelines.pipeline import build_pipeline
    from msenc_pipelines.submit import pipeline_parameters

    compiler.Compiler().compile(build_pipeline(image), str(output))
    return CompileResult(package=str(output), image=image, parameters=sorted(pipeline_parameters(output)))


def _package(image: str | None, tmp: str) -> Path:
    """The committed package for the default image, else one compiled for ``image``."""
    if image in (None, DEFAULT_IMAGE) and COMMITTED_PACKAGE.exists():
        return COMMITTED_PACKAGE
    path = Path(tmp) / "msenc_pipeline.yaml"
    compile_pipeline(path, image or DEFAULT_IMAGE)
    return path


def run_pipeline_locally(output_dir: str | Path, runner: str = "subprocess", image: str = DEFAULT_IMAGE,
                         arguments: dict | None = None) -> RunLocalResult:
    """The whole pipeline with kfp.local; artifacts under ``<output_dir>/pipeline_root``, and the report
    also copied to ``<output_dir>/report.html``."""
    from msenc_pipelines.local import run_local
    from msenc_pipelines.pipeline import build_pipeline

    out = Path(output_dir).resolve()
    result = run_local(build_pipeline(image), arguments or {}, out, runner=runner)
    report = out / "report.html"
    shutil.copyfile(result.outputs["Output"], report)
    return RunLocalResult(runner=runner, output_dir=str(out), pipeline_root=result.pipeline_root, report=str(report))


# ------------------------------------------------------------------------------------------------ CLI
def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pipeline", help="the Kubeflow pipeline: compile, run locally, submit, schedule",
        description="The msenc Kubeflow pipeline (data -> preprocess -> split -> train -> embed -> evaluate "
        "[-> export]). Pipeline parameters are set with --param NAME=VALUE (see 'msenc pipeline compile' for "
        "their list); --image is the msenc image every step runs on.")
    sub = p.add_subparsers(dest="pipeline_command", metavar="<action>", required=True)

    c = sub.add_parser("compile", help="write the pipeline package (YAML)")
    c.add_argument("--output", required=True, help="YAML file to write")
    c.add_argument("--image", default=DEFAULT_IMAGE, help="msenc image of every step (default: %(default)s)")
    c.set_defaults(func=lambda a: compile_pipeline(a.output, a.image))

    r = sub.add_parser("run-local", help="run the whole pipeline on this machine with kfp.local",
                       description="Run the pipeline with kfp.local. --runner subprocess runs every step in this "
                       "Python environment; --runner docker runs every step in the msenc image through a "
                       "Docker-API socket (DOCKER_HOST: docker, or podman's 'podman system service'). All "
                       "artifacts land under OUTPUT_DIR/pipeline_root; the report is copied to "
                       "OUTPUT_DIR/report.html.")
    r.add_argument("--runner", choices=["subprocess", "docker"], default="subprocess")
    r.add_argument("--output-dir", required=True)
    r.add_argument("--data-size", choices=["tiny", "demo", "bench"], help="embedded synthetic data size")
    r.add_argument("--data-source-uri", help="ingest this URI (s3:// or path) instead of the embedded data")
    r.add_argument("--preset", help="model preset: tiny, small, seed")
    r.add_argument("--max-steps", type=int, help="training steps")
    r.add_argument("--export-uri", help="also copy model, embeddings and evaluation to EXPORT_URI/<run>/")
    r.add_argument("--image", default=DEFAULT_IMAGE, help="msenc image (docker runner; default: %(default)s)")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="any pipeline parameter")
    r.set_defaults(func=_run_local)

    for name, helptext in (("submit", "start one run on a Kubeflow Pipelines host"),
                           ("schedule", "create a recurring run (scheduled retraining) on a Kubeflow host")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--host", required=True, help="Kubeflow Pipelines API address, e.g. http://localhost:8080")
        s.add_argument("--experiment", default="msenc", help="experiment name (default: %(default)s)")
        s.add_argument("--namespace", help="Kubeflow profile namespace (multi-user Kubeflow)")
        s.add_argument("--token", help="bearer token (else kfp's usual credentials)")
        s.add_argument("--image", help="msenc image of every step (default: the committed package's)")
        s.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
        if name == "submit":
            s.add_argument("--run-name", help="run name (default: msenc-<UTC time>)")
            s.set_defaults(func=_submit)
        else:
            s.add_argument("--cron", required=True,
                           help='cron schedule, 5 fields ("0 3 * * 0" = Sundays 03:00) or 6 with seconds')
            s.add_argument("--job-name", help="recurring run name (default: msenc-retrain-<UTC time>)")
            s.add_argument("--max-concurrency", type=int, default=1, help="runs at once (default: 1)")
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
    with tempfile.TemporaryDirectory() as tmp:
        arguments = _arguments(args, _package(args.image, tmp))
    result = run_pipeline_locally(args.output_dir, args.runner, args.image, arguments)
    print(f"report: {result.report}", file=sys.stderr)
    return result


def _submit(args: argparse.Namespace):
    from msenc_pipelines.submit import submit

    with tempfile.TemporaryDirectory() as tmp:
        package = _package(args.image, tmp)
        return submit(args.host, package, _arguments(args, package), experiment=args.experiment,
                      run_name=args.run_name, namespace=args.namespace, token=args.token)


def _schedule(args: argparse.Namespace):
    from msenc_pipelines.submit import schedule

    with tempfile.TemporaryDirectory() as tmp:
        package = _package(args.image, tmp)
        return schedule(args.host, package, args.cron, _arguments(args, package), experiment=args.experiment,
                        job_name=args.job_name, namespace=args.namespace, token=args.token,
                        max_concurrency=args.max_concurrency)
