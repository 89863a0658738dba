"""Which format each ingest input is (``--format auto``), decided from the file's content, not only its name.

=================  ==========================================================================================
format             recognised by
=================  ==========================================================================================
csv / parquet      the unified table: a CSV whose header has the required unified columns; any ``.parquet``
severson-mat       ``.mat`` (MATLAB v7.3 batch files of data.matr.io, any file name)
severson-pickle    a pickle whose first key reads ``b<N>c<i>`` (the Severson notebooks' batch pickles)
batteryml          a pickle whose first key is ``cell_id`` (BatteryML's / BatteryLife's processed cells);
                   BatteryLife's ``*_labels.json`` life labels go with them
mapped             a CSV whose header has every column the column mapping names (``--mapping`` or an
                   ``msenc-mapping.yaml`` among the inputs)
arbin              TRI's Arbin CSV (``Data_Point, Test_Time, ..., Cycle_Index, Current, Voltage``)  [beep]
battery-archive    Battery Archive ``*_timeseries.csv`` (``Cycle_Index, Test_Time (s), ...``)          [beep]
maccor             Maccor text export (first line ``Today's Date``)                                  [beep]
biologic           BioLogic export (an ``Ecell/V`` column)                                           [beep]
neware             Neware CSV (``neware`` in the file name)                                          [beep]
novonix            Novonix export (a ``[Summary]`` block)                                            [beep]
indigo             Indigo HDF5 (``.h5``)                                                             [beep]
=================  ==========================================================================================

Only the first bytes of a file are read to decide (on S3 a ranged read; ``.parquet``/``.mat``/``.h5`` by name). A data file no format recognises is an error naming the file
and what its header lacks (never skipped silently); files of no data kind (``README``, images) are skipped and
reported.
"""

from __future__ import annotations

import csv
import io
import pickletools
import re
from dataclasses import dataclass, field

from msenc_lib import storage
from msenc_lib.data.mapping import MAPPING_FILE, ColumnMapping, load_mapping
from msenc_lib.data.readers import list_inputs
from msenc_lib.data.schema import REQUIRED_COLUMNS
from msenc_lib.errors import InputDataError

UNIFIED_FORMATS = ["csv", "parquet"]
SEVERSON_FORMATS = ["severson-mat", "severson-pickle"]
CYCLER_FORMATS = ["arbin", "battery-archive", "biologic", "indigo", "maccor", "neware", "novonix"]
FORMATS = [*UNIFIED_FORMATS, *SEVERSON_FORMATS, "batteryml", "mapped", *CYCLER_FORMATS]
LABELS_SUFFIX = "_labels.json"

_CSV_EXT = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")
_TEXT_EXT = (*_CSV_EXT, ".txt", ".tsv")
_PICKLE_EXT = (".pkl", ".pickle")
_MACCOR_EXT = re.compile(r"\.\d{3}$")
_SEVERSON_KEY = re.compile(r"^b\d+cl?\d+$")
_ARBIN = {"data_point", "test_time", "cycle_index", "current", "voltage"}
_BATTERY_ARCHIVE = {"cycle_index", "test_time (s)", "current (a)", "voltage (v)"}
HEAD_BYTES = 1 << 16


@dataclass
class Inputs:
    """The ingest inputs grouped by format, plus the auxiliary files that go with them."""

    by_format: dict[str, list[str]] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # BatteryLife life-label JSON files
    mapping: ColumnMapping | None = None
    mapping_uri: str | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return [f for fmt in self.by_format for f in self.by_format[fmt]]

    @property
    def format_name(self) -> str:
        return "+".join(self.by_format) if self.by_format else "none"


_COMPRESSED = (".gz", ".bz2", ".zst")


def head_bytes(uri: str) -> bytes:
    """The first bytes of a file (decompressed for ``.gz``/``.bz2``/``.zst``); on S3 a ranged read, except for
    compressed files, which are copied first."""
    if not uri.lower().endswith(_COMPRESSED):
        return storage.read_head(uri, HEAD_BYTES)
    import pyarrow as pa

    with storage.local_copy(uri) as local, pa.input_stream(str(local), compression="detect") as fh:
        return fh.read(HEAD_BYTES)


def pickle_first_key(head: bytes) -> str | None:
    """The first string a pickle stores (the first key of a pickled dict), from the pickle's first bytes."""
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(head)):
            if isinstance(arg, (str, bytes)) and ("UNICODE" in op.name or "STRING" in op.name):
                return arg.decode("latin1") if isinstance(arg, bytes) else str(arg)
    except Exception:  # noqa: BLE001 - the head cut mid-op, or not a pickle: the caller reports
        return None
    return None


def _header(head: bytes) -> list[str]:
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    first = text.splitlines()[0] if text.strip() else ""
    for sep in (",", "\t", ";"):
        if sep in first:
            return [c.strip().strip('"') for c in first.split(sep)]
    return [first.strip()]


def _mapped_header(head: bytes, mapping: ColumnMapping | None) -> list[str]:
    """The header as the mapping's CSV options read it (encoding, delimiter, lines to skip)."""
    if mapping is None:
        return []
    opts = mapping.csv
    lines = head.decode(opts.encoding, errors="replace").lstrip("\ufeff").splitlines()
    if len(lines) <= opts.skip_rows:
        return []
    return next(csv.reader([lines[opts.skip_rows]], delimiter=opts.delimiter))


def format_from_name(name: str) -> str | None:
    """The format a file name alone decides (``.parquet``, ``.mat``, ``.h5``), else None."""
    low = name.lower()
    if low.endswith((".parquet", ".pq")):
        return "parquet"
    if low.endswith(".mat"):
        return "severson-mat"
    if low.endswith((".h5", ".hdf5")):
        return "indigo"
    return None


def needs_content(name: str) -> bool:
    """Whether the file's first bytes decide its format (pickles, CSV/text exports, Maccor's ``.0NN``)."""
    low = name.lower()
    return low.endswith((*_PICKLE_EXT, *_TEXT_EXT)) or bool(_MACCOR_EXT.search(low))


def detect(uri: str, head: bytes, mapping: ColumnMapping | None = None) -> str:
    """The format of one pickle or text input from its first bytes (module doc). A file of no known layout is
    an error naming the file and what is missing."""
    low = storage.basename(uri).lower()
    if low.endswith(_PICKLE_EXT):
        key = pickle_first_key(head)
        if key == "cell_id":
            return "batteryml"
        if key is not None and _SEVERSON_KEY.match(key):
            return "severson-pickle"
        raise InputDataError(
            f"{uri}: a pickle that is neither a BatteryML/BatteryLife processed cell (a dict starting with "
            f"'cell_id') nor a Severson batch pickle (keys b<N>c<i>); its first key is {key!r}. Use --format "
            "severson-pickle or batteryml to say which, or check that the file is complete")
    text = head.decode("utf-8", errors="replace")
    if text.startswith("Today's Date") or text.startswith("Today’s Date"):
        return "maccor"
    header = _header(head)
    lower = {c.lower() for c in header}
    if all(c in header for c in REQUIRED_COLUMNS):
        return "csv"
    mapped_header = _mapped_header(head, mapping)
    if mapping is not None and mapping.matches(mapped_header):
        return "mapped"
    if _ARBIN <= lower:
        return "arbin"
    if _BATTERY_ARCHIVE <= lower:
        return "battery-archive"
    if "Ecell/V" in text:
        return "biologic"
    if "neware" in low:
        return "neware"
    if "[Summary]" in text[:4096]:
        return "novonix"
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    hint = (f"the column mapping{' ' + mapping.name if mapping.name else ''} needs "
            f"{[c for c in mapping.source_columns() if c not in mapped_header]}"
            if mapping is not None else "no column mapping given (--mapping FILE)")
    raise InputDataError(
        f"{uri}: cannot tell the format: the header {header[:12]} is not the unified table (missing {missing}), "
        f"not a cycler export beep reads (Arbin, Battery Archive, Maccor, BioLogic, Neware, Novonix), and "
        f"{hint}. Give a column mapping (--mapping, see msenc_lib/data/README.md) or --format")


def _explicit_ok(fmt: str, name: str) -> bool:
    """Whether a file in a folder belongs to an explicitly chosen format (by extension)."""
    low = name.lower()
    if fmt in ("csv", "mapped"):
        return low.endswith(_TEXT_EXT)
    if fmt == "parquet":
        return low.endswith((".parquet", ".pq"))
    if fmt == "severson-mat":
        return low.endswith(".mat")
    if fmt in ("severson-pickle", "batteryml"):
        return low.endswith(_PICKLE_EXT)
    if fmt == "indigo":
        return low.endswith((".h5", ".hdf5"))
    return low.endswith(_TEXT_EXT) or bool(_MACCOR_EXT.search(low))


def classify_inputs(input_uri: str, fmt: str = "auto", mapping_uri: str | None = None) -> Inputs:
    """The input files of ``input_uri`` (file, folder or glob; local or s3://) grouped by format. A folder's
    ``_*``/``.*`` names are skipped (a unified output directory can be an input); BatteryLife's
    ``*_labels.json`` and an ``msenc-mapping.yaml`` among the inputs are taken as what they are."""
    if fmt != "auto" and fmt not in FORMATS:
        raise InputDataError(f"unknown input format {fmt!r} (choose from {['auto', *FORMATS]})")
    input_uri = str(input_uri)
    files = list_inputs(input_uri)
    out = Inputs()
    mapping_files = [f for f in files if storage.basename(f) == MAPPING_FILE]
    if mapping_uri:
        mapping_files = [mapping_uri]
    if len(mapping_files) > 1:
        raise InputDataError(f"{input_uri}: several {MAPPING_FILE} files {mapping_files}: give one with --mapping")
    if mapping_files:
        out.mapping_uri = mapping_files[0]
        try:
            text = storage.read_text(out.mapping_uri)
        except (FileNotFoundError, OSError) as e:
            raise InputDataError(f"{out.mapping_uri}: cannot read the column mapping: {e}") from None
        out.mapping = load_mapping(text, out.mapping_uri)
    single = len(files) == 1 and not storage.is_dir(input_uri)
    for f in files:
        name = storage.basename(f)
        if name == MAPPING_FILE:
            continue
        if name.endswith(LABELS_SUFFIX):
            out.labels.append(f)
            continue
        if fmt != "auto":
            kind = fmt if single or _explicit_ok(fmt, name) else None
        else:
            kind = format_from_name(name)
            if kind is None and needs_content(name):
                kind = detect(f, head_bytes(f), out.mapping)
        if kind is None:
            out.skipped.append(f)
            continue
        out.by_format.setdefault(kind, []).append(f)
    if not out.by_format:
        what = "files of a known format" if fmt == "auto" else f"{fmt} files"
        raise InputDataError(f"{input_uri}: no {what} (found {[storage.basename(f) for f in files][:10]})")
    if out.by_format.get("mapped") and out.mapping is None:
        raise InputDataError(f"{input_uri}: --format mapped needs a column mapping: --mapping FILE or an "
                             f"{MAPPING_FILE} among the inputs")
    out.by_format = {k: out.by_format[k] for k in FORMATS if k in out.by_format}
    return out


__all__ = ["FORMATS", "CYCLER_FORMATS", "Inputs", "classify_inputs", "detect", "format_from_name", "head_bytes",
           "pickle_first_key"]
