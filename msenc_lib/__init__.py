"""msenc: the Multiscale Encoder workflow for battery (and any long time-series) data.

Every stage is one function here (``run_<stage>``); the ``msenc`` CLI (``msenc_cli``), the Kubeflow
components and the tests all call those functions. Importing ``msenc_lib`` does nothing else: the encoder
registers with transformers' Auto* classes when ``msenc_lib.model`` is imported.
"""

__version__ = "0.1.0"
