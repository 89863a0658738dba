"""Cluster launchers of the training entry point (``msenc launch <backend> ...``).

Backends: ``pytorchjob`` (Kubeflow Training Operator, :mod:`msenc_lib.launch.pytorchjob`). A Kubeflow
Trainer v2 ``TrainJob`` backend would be one more module implementing :class:`base.TrainLauncher` and
listed in :data:`LAUNCHER_MODULES`; such a module exposes ``CONFIG_CLASS`` and ``LAUNCHER_CLASS`` (its
command line is in ``msenc_cli.launch``). Heavy imports (kubernetes, kubeflow-training) happen inside functions.
"""

from __future__ import annotations

import importlib

from msenc_lib.launch.base import LaunchCancelled, LaunchConfig, LaunchError, LaunchResult, TrainLauncher

LAUNCHER_MODULES: dict[str, str] = {"pytorchjob": "msenc_lib.launch.pytorchjob"}

__all__ = ["LAUNCHER_MODULES", "LaunchCancelled", "LaunchConfig", "LaunchError", "LaunchResult",
           "TrainLauncher", "get_launcher"]


def get_launcher(backend: str, config, **kwargs) -> TrainLauncher:
    """The launcher of ``backend`` for a config (dict, path/URI or config object of that backend)."""
    if backend not in LAUNCHER_MODULES:
        raise LaunchError(f"unknown launch backend {backend!r} (have: {', '.join(sorted(LAUNCHER_MODULES))})")
    module = importlib.import_module(LAUNCHER_MODULES[backend])
    if not isinstance(config, module.CONFIG_CLASS):
        config = module.CONFIG_CLASS.load(config)
    return module.LAUNCHER_CLASS(config, **kwargs)
