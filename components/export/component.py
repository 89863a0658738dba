"""KFP component ``export``: copy the run's model, embeddings and evaluation to ``<export_uri>/<run>/``."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from msenc_components import DEFAULT_IMAGE


def export(
    model: Input[Model],
    embeddings: Input[Dataset],
    evaluation: Input[Dataset],
    export_uri: str,
    run_name: str,
) -> str:
    """Copy the trained model, the embeddings and the evaluation to ``<export_uri>/<run_name>/`` (s3:// or a
    path) and point ``<export_uri>/LATEST`` at this run, so the next (scheduled) run can warm-start with
    ``init_model_uri=<export_uri>``. Returns the run's export URI."""
    from msenc_lib.kfp_support import step_errors

    with step_errors("export"):
        from msenc_lib.export import ExportConfig, run_export

        artifacts = {"model": model.path, "embeddings": embeddings.path, "evaluation": evaluation.path}
        # a retry of this step replaces the unfinished or earlier export of the same run
        return run_export(ExportConfig(), artifacts, export_uri, run_name, overwrite=True).run_uri


def build(image: str = DEFAULT_IMAGE):
    return dsl.component(export, base_image=image, install_kfp_package=False)
