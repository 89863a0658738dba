"""The preprocess stage: unified table -> token sequences (:mod:`.stage`), reading its inputs (:mod:`.scan`)
and formatting rows as text (:mod:`.textformat`)."""

from msenc_lib.preprocess.stage import (FORMAT_NAME, MANIFEST_NAME, PARQUET_OPTIONS, SEQUENCES_DIR, TOKENIZER_DIR,
                                        PreprocessConfig, PreprocessResult, SkippedCell, read_manifest,
                                        read_sequences, run_preprocess, smooth_capacity)

__all__ = ["PreprocessConfig", "PreprocessResult", "SkippedCell", "run_preprocess", "read_manifest",
           "read_sequences", "smooth_capacity", "FORMAT_NAME", "SEQUENCES_DIR", "TOKENIZER_DIR",
           "MANIFEST_NAME", "PARQUET_OPTIONS"]
