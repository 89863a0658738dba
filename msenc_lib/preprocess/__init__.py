"""The preprocess stage: unified table -> token sequences (:mod:`.stage`), reading its inputs (:mod:`.scan`)
and formatting rows as text (:mod:`.textformat`). The dataset it writes: :mod:`msenc_lib.layout`."""

from msenc_lib.preprocess.stage import (PARQUET_OPTIONS, PreprocessConfig, PreprocessResult, SkippedCell,
                                        run_preprocess)

__all__ = ["PreprocessConfig", "PreprocessResult", "SkippedCell", "run_preprocess", "PARQUET_OPTIONS"]
