"""Running the training entry point on a Kubernetes cluster, and the pipeline's train step.

:mod:`msenc_lib.launch.pytorchjob` runs ``python -m msenc_cli train`` as a Kubeflow Training Operator
``PyTorchJob`` (``msenc launch pytorchjob``, in ``msenc_cli.launch``); a Kubeflow Trainer v2 ``TrainJob`` would
be one more :class:`~msenc_lib.launch.base.TrainLauncher`. :mod:`msenc_lib.launch.step` is what the KFP train
component calls: training in the step's pod or as a PyTorchJob. Heavy imports (kubernetes, kubeflow-training)
happen inside functions.
"""

from __future__ import annotations

from msenc_lib.launch.base import LaunchCancelled, LaunchConfig, LaunchError, LaunchResult, TrainLauncher

__all__ = ["LaunchCancelled", "LaunchConfig", "LaunchError", "LaunchResult", "TrainLauncher"]
