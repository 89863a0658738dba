"""msenc: the Multiscale Encoder workflow for battery (and any long time-series) data.

Every stage is one function here (``run_<stage>``); the ``msenc`` CLI, the Kubeflow components and the
tests all call those functions.
"""

__version__ = "0.1.0"
