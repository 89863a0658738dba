"""``msenc ingest``: raw battery data (unified CSV/Parquet, Severson .mat or batch pickles) -> unified
Parquet directory (one ``<cell_key>.parquet`` per cell + ``_manifest.json``; see ``msenc_lib.data.unified``).

The output is written through ``storage.publish``: on any error nothing is left at the output URI.
Validation (``msenc_lib.data.validate``) runs per input file: a cell split over several files is
concatenated in file order, and its time order is checked within each file.
"""

from __future__ import annotations

import contextlib
import time
from typing import Literal

from pydantic import BaseModel, Field

from msenc_lib import layout
from msenc_lib.config import StageConfig
from msenc_lib.data.validate import ValidationReport, ValidationWarning
from msenc_lib.progress import progress_bar

FormatName = Literal["auto", "csv", "parquet", "severson-mat", "severson-pickle"]


class IngestConfig(StageConfig):
    stage = "ingest"

    format: FormatName = Field(
        "auto",
        description="input format; 'auto' decides from the file extensions (.csv[.gz], .parquet, .mat, .pkl). "
        "severson-pickle UNPICKLES the files, which runs code from them: use it only for pickles you trust; "
        "for files from elsewhere use the data.matr.io .mat files (severson-mat)",
    )
    csv: bool = Field(False, description="also write the beep-data-utils unified CSV (all cells, one header) "
                      "to <output-dir>/_csv/unified.csv")
    allow_nan: bool = Field(False, description="report NaN/inf in required numeric columns as a warning instead "
                            "of failing (the rows are kept as they are); empty values still fail")
    severson_cleaning: bool = Field(True, description="Severson inputs: apply the original cleaning (drop "
                                    "b1c8/10/12/13/22 and noisy b3 channels, merge batch-2 carry-over cells into "
                                    "b1c0..b1c4)")
    include_internal_resistance: bool = Field(
        False, description="Severson inputs: add the per-cycle summary IR as an extra column "
        "'internal_resistance' (after the 16 unified columns; enables the IR features of the 'full' set)")
    csv_block_size: int = Field(8 << 20, gt=0, description="bytes of CSV parsed per block (memory bound)")
    row_group_size: int = Field(1 << 20, gt=0, description="rows per Parquet row group")
    progress: bool = Field(True, description="progress bars on stderr")


class IngestResult(BaseModel):
    output_uri: str
    format: str
    n_input_files: int
    n_cells: int
    n_rows: int
    columns: list[str]
    dtypes: dict[str, str]
    warnings: list[ValidationWarning]
    csv_uri: str | None = None
    manifest_uri: str
    seconds: float


def _ingest_tables(files: list[str], fmt: str, config: IngestConfig, writer, report: ValidationReport) -> None:
    from msenc_lib import storage
    from msenc_lib.data.readers import read_csv_file, read_parquet_file
    for uri in progress_bar(files, len(files), "reading files", config.progress and len(files) > 1, unit="file"):
        with storage.local_copy(uri) as local:
            mark = writer.mark()
            if fmt == "csv":
                rep = read_csv_file(local, uri, writer.add_rows, allow_nan=config.allow_nan,
                                    block_size=config.csv_block_size, on_retry=lambda: writer.rollback(mark))
            else:
                rep = read_parquet_file(local, uri, writer.add_rows, allow_nan=config.allow_nan)
        report.merge(rep)


def _ingest_severson(files: list[str], fmt: str, config: IngestConfig, writer, report: ValidationReport) -> None:
    from msenc_lib import storage
    from msenc_lib.data import severson
    from msenc_lib.data.validate import UnifiedValidator

    with contextlib.ExitStack() as stack:
        locals_ = [str(stack.enter_context(storage.local_copy(f))) for f in files]
        batches = severson.open_batches(files, locals_, fmt)
        for b in batches.values():
            if hasattr(b, "close"):
                stack.callback(b.close)
        sources = {n: files[i] for i, n in enumerate(batches)}
        validators = {n: UnifiedValidator(sources[n], allow_nan=config.allow_nan, row_meaning=severson.ROW_MEANING)
                      for n in batches}
        total = sum(len(b) for b in batches.values())
        cells = severson.clean_batches(batches, report, cleaning=config.severson_cleaning)
        for number, key, cell in progress_bar(cells, total, "reading cells", config.progress):
            table = severson.cell_to_table(key, cell, number, sources[number], report,
                                           include_ir=config.include_internal_resistance)
            writer.add(key, validators[number].validate_batch(table, 0))
        for v in validators.values():
            report.merge(v.report)


def run_ingest(config: IngestConfig, input_uri: str, output_uri: str, overwrite: bool = False) -> IngestResult:
    """Read ``input_uri`` (file, folder or glob; local or s3://), validate, write the unified directory."""
    from msenc_lib import __version__, storage
    from msenc_lib.data.readers import resolve_inputs
    from msenc_lib.data.unified import UnifiedWriter

    start = time.perf_counter()
    files, fmt, skipped = resolve_inputs(str(input_uri), config.format)
    report = ValidationReport(source=str(input_uri))
    if skipped:
        names = [storage.basename(f) for f in skipped]
        report.add("ignored_files", len(skipped), f"files not in the {fmt} format ignored: {names[:20]}")
    fingerprints = [storage.stat(f) for f in files]
    with storage.publish(output_uri, overwrite=overwrite) as staging:
        with UnifiedWriter(staging, row_group_size=config.row_group_size, progress=config.progress) as writer:
            if fmt in ("csv", "parquet"):
                _ingest_tables(files, fmt, config, writer, report)
            else:
                _ingest_severson(files, fmt, config, writer, report)
            manifest = writer.finish(
                {"created_by": f"msenc {__version__} ingest",
                 "source": {"kind": "ingest", "format": fmt, "input_uri": str(input_uri), "inputs": fingerprints,
                            "config": config.model_dump()}},
                report, write_csv=config.csv)
    return IngestResult(
        output_uri=str(output_uri),
        format=fmt,
        n_input_files=len(files),
        n_cells=manifest["n_cells"],
        n_rows=manifest["n_rows"],
        columns=manifest["columns"],
        dtypes=manifest["dtypes"],
        warnings=report.warnings,
        csv_uri=storage.join(str(output_uri), layout.UNIFIED_CSV_DIR, layout.UNIFIED_CSV) if config.csv else None,
        manifest_uri=storage.join(str(output_uri), layout.UNIFIED_MANIFEST),
        seconds=round(time.perf_counter() - start, 3),
    )
