"""KFP component ``data``: the unified table, from the embedded synthetic dataset or ingested from a URI."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from msenc_components import DEFAULT_IMAGE


def data(
    unified: Output[Dataset],
    source_uri: str = "",
    format: str = "auto",
    size: str = "tiny",
    seed: int = 0,
    source_fingerprint: str = "",
    config_yaml: str = "",
) -> NamedTuple("DataOutputs", [("n_cells", int), ("n_rows", int)]):
    """Unified battery table (one Parquet file per cell).

    With an empty ``source_uri`` the embedded synthetic cycler data is generated (``size`` tiny|demo|bench,
    ``seed``). Otherwise ``source_uri`` (s3:// or a path the pod can read: unified CSV/Parquet, MATR .mat or
    batch pickles, BatteryML/BatteryLife processed cells, CSV exports with an msenc-mapping.yaml beside them,
    cycler files when the image has beep) is ingested with ``format`` (auto recognises each file; or one of
    msenc ingest's formats). Repairs are counted in the artifact's manifest.
    ``source_fingerprint`` (the ``fingerprint`` step's hash of ``source_uri``) is not read: it keys KFP's cache
    to the source's content. ``config_yaml`` sets further fields of GenerateDataConfig / IngestConfig.
    """
    from msenc_lib.kfp_support import step_errors

    with step_errors("data"):
        from collections import namedtuple

        from msenc_lib.kfp_support import annotate, unified_table

        result = unified_table(unified.path, source_uri, config_yaml, format=format, size=size, seed=seed)
        annotate(unified, result, ("n_cells", "n_rows"))
        unified.metadata["source_fingerprint"] = source_fingerprint
        return namedtuple("DataOutputs", ["n_cells", "n_rows"])(result.n_cells, result.n_rows)


def build(image: str = DEFAULT_IMAGE):
    return dsl.component(data, base_image=image, install_kfp_package=False)
