"""``msenc ingest``: raw battery data -> unified Parquet directory (one ``<cell_key>.parquet`` per cell +
``_manifest.json``; see ``msenc_lib.data.unified``).

Inputs (formats: ``msenc_lib.data.detect``): unified CSV/Parquet, Severson/MATR ``.mat`` and batch pickles,
BatteryML/BatteryLife processed cells, CSVs read through a column mapping, cycler exports read by beep. The
output is written through ``storage.publish``: on any error nothing is left at the output URI. Validation and
repair (``msenc_lib.data.validate``, ``msenc_lib.data.repair``) run per input file: a cell split over several
files is concatenated in file order, and its time order is checked within each file.
"""

from __future__ import annotations

import contextlib
import time
from typing import Literal

from pydantic import BaseModel, Field

from msenc_lib import layout
from msenc_lib.config import StageConfig
from msenc_lib.data.repair import RepairLog, RepairRecord
from msenc_lib.data.validate import ValidationReport, ValidationWarning
from msenc_lib.errors import InputDataError
from msenc_lib.progress import progress_bar

FormatName = Literal["auto", "csv", "parquet", "severson-mat", "severson-pickle", "batteryml", "mapped", "arbin",
                     "battery-archive", "biologic", "indigo", "maccor", "neware", "novonix"]


class IngestConfig(StageConfig):
    stage = "ingest"

    format: FormatName = Field(
        "auto",
        description="input format; 'auto' recognises each file from its content (unified CSV/Parquet, Severson "
        ".mat and batch pickles, BatteryML/BatteryLife processed cells, CSVs matching the column mapping, "
        "cycler exports read by beep); the inputs may mix formats. Pickles are loaded without running code "
        "(plain containers and numpy arrays only)",
    )
    mapping: str | None = Field(None, description="column-mapping YAML (local or s3://) for cycler exports no "
                                "parser knows: source column -> unified column, unit, scale, cycle/step columns "
                                "(msenc_lib/data/README.md); an msenc-mapping.yaml among the inputs is used too")
    strict: bool = Field(False, description="stop at the first repair (time reset, NaN/inf row, known-bad cycle) "
                         "instead of repairing it and counting it in the result and the manifest")
    metadata: dict[str, str | float] = Field(
        default_factory=dict, description="per-cell metadata for cells whose source does not say it, e.g. "
        "'{nominal_capacity: 1.1, chemistry: LFP}' (columns dataset, chemistry, nominal_capacity (Ah), "
        "form_factor, ambient_temperature (degC)); values the source gives are kept")
    normalize_capacity: bool = Field(False, description="divide charge_capacity and discharge_capacity by the "
                                     "cell's nominal_capacity (fractions of nominal, so cells of different "
                                     "datasets compare); a cell without a nominal capacity is an error")
    csv: bool = Field(False, description="also write the beep-data-utils unified CSV (all cells, one header) "
                      "to <output-dir>/_csv/unified.csv")
    allow_nan: bool = Field(False, description="keep rows with NaN/inf in required numeric columns (reported) "
                            "instead of dropping them")
    severson_cleaning: bool = Field(True, description="Severson inputs: apply the original cleaning (drop "
                                    "b1c8/10/12/13/22 and noisy b3 channels, merge batch-2 carry-over cells into "
                                    "b1c0..b1c4, exclude BatteryLife's known corrupt cycles)")
    include_internal_resistance: bool = Field(
        False, description="add the per-cycle internal resistance where the source has it (Severson summary IR, "
        "BatteryML/BatteryLife, beep, a mapped column) as an extra column 'internal_resistance' (enables the IR "
        "features of the 'full' set)")
    csv_block_size: int = Field(8 << 20, gt=0, description="bytes of CSV parsed per block (memory bound)")
    row_group_size: int = Field(1 << 20, gt=0, description="rows per Parquet row group")
    progress: bool = Field(True, description="progress bars on stderr")


class IngestResult(BaseModel):
    output_uri: str
    format: str = Field(description="the input format, or the formats found joined by '+'")
    n_input_files: int
    n_cells: int
    n_rows: int
    columns: list[str]
    dtypes: dict[str, str]
    warnings: list[ValidationWarning]
    repair_counts: dict[str, int] = Field(default_factory=dict, description="rows repaired, per repair kind")
    repairs: list[RepairRecord] = Field(default_factory=list, description="every repair, per cell and cycle")
    csv_uri: str | None = None
    manifest_uri: str
    seconds: float


class _Sink:
    """Where ingested tables go: per-cell metadata defaults, capacity normalisation, then the writer."""

    def __init__(self, writer, config: IngestConfig):
        from msenc_lib.data.metadata import check_defaults

        self.writer = writer
        self.config = config
        self.defaults = check_defaults(config.metadata)

    def _finish(self, table, source: str):
        from msenc_lib.data.metadata import fill_defaults, normalize_capacity

        if self.defaults:
            table = fill_defaults(table, self.defaults)
        if self.config.normalize_capacity and table.num_rows:
            table = normalize_capacity(table, source)
        return table

    def add(self, key: str, table, source: str) -> None:
        self.writer.add(key, self._finish(table, source))

    def rows(self, source: str):
        return lambda table: self.writer.add_rows(self._finish(table, source))


def _validator(source: str, config: IngestConfig, row_meaning: str | None = None):
    from msenc_lib.data.validate import ROW_MEANING, UnifiedValidator

    return UnifiedValidator(source, allow_nan=config.allow_nan, row_meaning=row_meaning or ROW_MEANING,
                            strict=config.strict)


def _ingest_tables(files: list[str], fmt: str, config: IngestConfig, sink: _Sink, report: ValidationReport,
                   repairs: RepairLog) -> None:
    from msenc_lib import storage
    from msenc_lib.data.readers import read_csv_file, read_parquet_file
    for uri in progress_bar(files, len(files), "reading files", config.progress and len(files) > 1, unit="file"):
        with storage.local_copy(uri) as local:
            mark = sink.writer.mark()
            if fmt == "csv":
                rep = read_csv_file(local, uri, sink.rows(uri), allow_nan=config.allow_nan, strict=config.strict,
                                    repairs=repairs, block_size=config.csv_block_size,
                                    on_retry=lambda: sink.writer.rollback(mark))
            else:
                rep = read_parquet_file(local, uri, sink.rows(uri), allow_nan=config.allow_nan,
                                        strict=config.strict, repairs=repairs)
        report.merge(rep)


def _ingest_severson(files: list[str], fmt: str, config: IngestConfig, sink: _Sink, report: ValidationReport,
                     repairs: RepairLog) -> None:
    from msenc_lib import storage
    from msenc_lib.data import severson

    with contextlib.ExitStack() as stack:
        locals_ = [str(stack.enter_context(storage.local_copy(f))) for f in files]
        batches = severson.open_batches(files, locals_, fmt)
        for b in batches.values():
            if hasattr(b, "close"):
                stack.callback(b.close)
            report.add("severson_batch", 1, f"{b.source}: {b.identity.describe()}")
        sources = {n: b.source for n, b in batches.items()}
        validators = {n: _validator(sources[n], config, severson.ROW_MEANING) for n in batches}
        total = sum(len(b) for b in batches.values())
        cells = severson.clean_batches(batches, report, cleaning=config.severson_cleaning, repairs=repairs,
                                       strict=config.strict)
        for number, key, cell in progress_bar(cells, total, "reading cells", config.progress):
            table = severson.cell_to_table(key, cell, number, sources[number], report,
                                           include_ir=config.include_internal_resistance)
            sink.add(key, validators[number].validate_batch(table, 0), sources[number])
        for v in validators.values():
            report.merge(v.report)
            repairs.merge(v.repairs)


def _ingest_batteryml(files: list[str], labels: list[str], config: IngestConfig, sink: _Sink,
                      report: ValidationReport, repairs: RepairLog) -> None:
    from msenc_lib import storage
    from msenc_lib.data import batteryml

    life: dict[str, int] = {}
    for uri in labels:
        life.update(batteryml.read_labels(storage.read_text(uri), uri))
    seen: dict[str, str] = {}
    flavours: dict[str, int] = {}
    without_life = []
    for uri in progress_bar(files, len(files), "reading cells", config.progress and len(files) > 1, unit="cell"):
        with storage.local_copy(uri) as local:
            cell = batteryml.load_cell(local, uri)
        key, table = batteryml.cell_to_table(cell, uri, report, include_ir=config.include_internal_resistance,
                                             labels=life)
        if key in seen:
            raise InputDataError(f"{uri}: cell {key!r} also comes from {seen[key]}")
        seen[key] = uri
        flavour = batteryml.flavour(cell)
        flavours[flavour] = flavours.get(flavour, 0) + 1
        if table.column("cycle_life").null_count == table.num_rows:
            without_life.append(key)
        validator = _validator(uri, config, batteryml.ROW_MEANING)
        sink.add(key, validator.validate_batch(table, 0), uri)
        report.merge(validator.report)
        repairs.merge(validator.repairs)
    for flavour, n in flavours.items():
        report.add("processed_cells", n, f"{flavour} processed cells read")
    if without_life:
        why = "not in the life-label files given" if labels else "no BatteryLife '*_labels.json' among the inputs"
        report.add("missing_cycle_life", len(without_life),
                   f"cells without a cycle life ({why}): cycle_life left null: {without_life[:50]}")


def _ingest_mapped(files: list[str], inputs, config: IngestConfig, sink: _Sink, report: ValidationReport,
                   repairs: RepairLog) -> None:
    from msenc_lib import storage
    from msenc_lib.data.mapping import MappedReader

    report.add("column_mapping", len(files), f"files read with the column mapping {inputs.mapping_uri}")
    for uri in progress_bar(files, len(files), "reading files", config.progress and len(files) > 1, unit="file"):
        reader = MappedReader(inputs.mapping, uri)
        validator = _validator(uri, config)
        rows = sink.rows(uri)
        offset = 0
        with storage.local_copy(uri) as local:
            for table in reader.read(local, block_size=config.csv_block_size):
                if not config.include_internal_resistance and "internal_resistance" in table.column_names:
                    table = table.drop_columns(["internal_resistance"])
                rows(validator.validate_batch(table, offset))
                offset += table.num_rows
        report.merge(validator.report)
        repairs.merge(validator.repairs)


def _ingest_cyclers(files: list[str], fmt: str, config: IngestConfig, sink: _Sink, report: ValidationReport,
                    repairs: RepairLog) -> None:
    from msenc_lib import storage
    from msenc_lib.data.cyclers import cell_key_of, read_cycler_file

    seen: dict[str, str] = {}
    for uri in progress_bar(files, len(files), "reading files", config.progress and len(files) > 1, unit="file"):
        key = cell_key_of(uri)
        if key in seen:
            raise InputDataError(f"{uri}: cell {key!r} also comes from {seen[key]} (cells are named by file)")
        seen[key] = uri
        with storage.local_copy(uri) as local:
            table = read_cycler_file(local, uri, fmt, include_ir=config.include_internal_resistance)
        validator = _validator(uri, config)
        sink.add(key, validator.validate_batch(table, 0), uri)
        report.merge(validator.report)
        repairs.merge(validator.repairs)
    report.add("cycler_files", len(files), f"{fmt} files read with beep")


def run_ingest(config: IngestConfig, input_uri: str, output_uri: str, overwrite: bool = False) -> IngestResult:
    """Read ``input_uri`` (file, folder or glob; local or s3://), validate and repair, write the unified
    directory. Repairs are counted per cell and cycle (result ``repairs``, manifest ``repairs``)."""
    from msenc_lib import __version__, storage
    from msenc_lib.data.detect import CYCLER_FORMATS, classify_inputs
    from msenc_lib.data.unified import UnifiedWriter

    start = time.perf_counter()
    inputs = classify_inputs(str(input_uri), config.format, config.mapping)
    files = inputs.files
    report = ValidationReport(source=str(input_uri))
    repairs = RepairLog()
    if inputs.skipped:
        names = [storage.basename(f) for f in inputs.skipped]
        report.add("ignored_files", len(inputs.skipped), f"files of no input format ignored: {names[:20]}")
    if inputs.labels and "batteryml" not in inputs.by_format:
        report.add("ignored_files", len(inputs.labels), "life-label files without BatteryLife cells ignored")
    fingerprints = [storage.stat(f) for f in [*files, *inputs.labels,
                                             *([inputs.mapping_uri] if inputs.mapping_uri else [])]]
    with storage.publish(output_uri, overwrite=overwrite) as staging:
        with UnifiedWriter(staging, row_group_size=config.row_group_size, progress=config.progress) as writer:
            sink = _Sink(writer, config)
            for fmt, group in inputs.by_format.items():
                if fmt in ("csv", "parquet"):
                    _ingest_tables(group, fmt, config, sink, report, repairs)
                elif fmt in ("severson-mat", "severson-pickle"):
                    _ingest_severson(group, fmt, config, sink, report, repairs)
                elif fmt == "batteryml":
                    _ingest_batteryml(group, inputs.labels, config, sink, report, repairs)
                elif fmt == "mapped":
                    _ingest_mapped(group, inputs, config, sink, report, repairs)
                elif fmt in CYCLER_FORMATS:
                    _ingest_cyclers(group, fmt, config, sink, report, repairs)
            records = repairs.records()
            manifest = writer.finish(
                {"created_by": f"msenc {__version__} ingest",
                 "source": {"kind": "ingest", "format": inputs.format_name, "input_uri": str(input_uri),
                            "inputs": fingerprints, "config": config.model_dump()},
                 "repair_counts": repairs.totals(),
                 "repairs": [r.model_dump() for r in records]},
                report, write_csv=config.csv)
    return IngestResult(
        output_uri=str(output_uri),
        format=inputs.format_name,
        n_input_files=len(files),
        n_cells=manifest["n_cells"],
        n_rows=manifest["n_rows"],
        columns=manifest["columns"],
        dtypes=manifest["dtypes"],
        warnings=report.warnings,
        repair_counts=repairs.totals(),
        repairs=records,
        csv_uri=storage.join(str(output_uri), layout.UNIFIED_CSV_DIR, layout.UNIFIED_CSV) if config.csv else None,
        manifest_uri=storage.join(str(output_uri), layout.UNIFIED_MANIFEST),
        seconds=round(time.perf_counter() - start, 3),
    )
