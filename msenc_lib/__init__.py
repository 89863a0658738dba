"""msenc: the Multiscale Encoder workflow for battery (and any long time-series) data.

Every stage is one function here (``run_<stage>``); the ``msenc`` CLI, the Kubeflow components and the
tests all call those functions.

Importing ``msenc_lib`` registers the encoder with transformers' ``AutoConfig``/``AutoModel``/
``AutoModelForMaskedLM`` (``model_type: msenc``). The registration happens as soon as transformers is
imported (at once if it already is), so ``import msenc_lib`` alone stays fast for the CLI.
"""

import importlib.abc
import importlib.util
import os
import sys

__version__ = "0.1.0"

# CPU runtime default, read by OpenMP when torch starts (so it only counts if msenc_lib is imported first;
# a value you set yourself wins): idle OpenMP threads sleep instead of spinning. With spinning threads a
# 2-core machine that runs anything else (a second DDP rank, a pipeline step, another job) slows small
# ops down by two orders of magnitude (1.5 ms vs 330 ms per tiny-model forward, measured here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _register_auto_classes() -> None:
    if "msenc_lib.model" in sys.modules:
        return  # being imported right now: it registers at the end of its own import
    import msenc_lib.model  # noqa: F401  (registers on import)


class _RegisterAfterTransformersImport(importlib.abc.MetaPathFinder):
    """Runs the Auto* registration right after the ``transformers`` package has been imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_auto_classes()

        spec.loader.exec_module = exec_then_register
        return spec


if "transformers" in sys.modules:
    _register_auto_classes()
elif not any(isinstance(f, _RegisterAfterTransformersImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTransformersImport())
