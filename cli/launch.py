"""``msenc launch pytorchjob``: the training entry point as a Kubeflow PyTorchJob on a cluster."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from msenc_cli.options import add_config_options, config_from_args
from msenc_lib.errors import ConfigError


def add_launch_command(subparsers) -> None:
    p = subparsers.add_parser(
        "launch", help="run training on a Kubernetes cluster (Kubeflow PyTorchJob)",
        description="Run the training entry point (python -m msenc_cli train) on a Kubernetes cluster.")
    sub = p.add_subparsers(dest="backend", metavar="<backend>", required=True)
    _add_pytorchjob(sub)


def _add_pytorchjob(subparsers) -> None:
    from msenc_lib.launch.pytorchjob import PyTorchJobConfig

    p = subparsers.add_parser(
        "pytorchjob",
        help="train on a Kubernetes cluster as a Kubeflow PyTorchJob (1 master + workers, GPUs)",
        description="Run `python -m msenc_cli train` as a Kubeflow Training Operator PyTorchJob: WORKERS pods "
        "(1 Master + WORKERS-1 Workers) with GPUS_PER_WORKER GPUs each, reading the dataset from and writing "
        "the model to s3:// URIs with the credentials of a Kubernetes Secret. Waits for the job, streams the "
        "master's log, fails with the job's reason and deletes the job at the end (unless --keep). "
        "Kubernetes access: in-cluster config in a pod, else KUBECONFIG / ~/.kube/config.",
        epilog="Example: msenc launch pytorchjob --workers 2 --gpus-per-worker 1 --image REGISTRY/msenc-cuda:0.1 "
        "--data-uri s3://bucket/split --output-uri s3://bucket/models/run1 --preset tiny "
        "--node-selector nvidia.com/gpu.present=true --toleration nvidia.com/gpu:NoSchedule --render",
    )
    p.add_argument("--render", action="store_true", help="print the PyTorchJob as YAML and exit (creates nothing)")
    p.add_argument("--node-selector", dest="node_selector_kv", metavar="KEY=VALUE", nargs="+",
                   action="extend", help="nodeSelector entry of the pods (repeatable)")
    p.add_argument("--toleration", dest="toleration_specs", metavar="KEY[=VALUE][:EFFECT]", nargs="+",
                   action="extend", help="toleration of the pods, e.g. nvidia.com/gpu:NoSchedule (repeatable)")
    add_config_options(p, PyTorchJobConfig, exclude=("node_selector", "tolerations"))
    p.set_defaults(func=_run_pytorchjob)


def _run_pytorchjob(args: argparse.Namespace):
    from msenc_lib.launch.base import parse_key_value, parse_toleration
    from msenc_lib.launch.pytorchjob import PyTorchJobConfig, PyTorchJobLauncher, render_yaml

    cfg = config_from_args(PyTorchJobConfig, args)
    updates: dict[str, Any] = {}
    try:
        if args.node_selector_kv:
            given = dict(parse_key_value(kv) for kv in args.node_selector_kv)
            updates["node_selector"] = {**cfg.node_selector, **given}
        if args.toleration_specs:
            for t in args.toleration_specs:
                parse_toleration(t)
            updates["tolerations"] = [*cfg.tolerations, *args.toleration_specs]
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if updates:
        cfg = PyTorchJobConfig.load(cfg.model_dump(), overrides=updates, environ={})
    launcher = PyTorchJobLauncher(cfg)
    if args.render:
        sys.stdout.write(render_yaml(launcher.render()))
        return None
    return launcher.launch()  # SIGTERM/Ctrl-C: LaunchCancelled is a KeyboardInterrupt (exit status 130)
