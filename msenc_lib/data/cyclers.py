"""Raw cycler files through Toyota Research Institute's ``beep`` package -> unified rows.

``beep.structure`` (optional extra: ``pip install 'msenc[cyclers]'``) parses the cyclers' own exports into one
``raw_data`` table (``cycle_index, step_index, test_time (s), current (A, + = charge), voltage (V),
charge_capacity, discharge_capacity (Ah), temperature (°C), internal_resistance (ohm)``); msenc maps that onto
the unified table: ``cell_key`` = the file name without extension, ``cycle_number`` = ``cycle_index``,
``time`` = ``test_time`` (seconds since the test started), current, voltage, capacities, temperature (null
where the file has none), ``internal_resistance`` on request. Battery Archive files are named
``<cell id>_timeseries.csv``: the cell key is the id, and the dataset, chemistry, form factor and test
temperature the id spells (``SNL_18650_LFP_25C_...``) become the metadata columns. The formats and beep's datapath for each:

=================  ========================  ====================================================
format             beep class                file
=================  ========================  ====================================================
arbin              ArbinDatapath             TRI's Arbin CSV (``Data_Point,Test_Time,...,Cycle_Index``)
battery-archive    BatteryArchiveDatapath    Battery Archive ``*_timeseries.csv``
biologic           BiologicDatapath          BioLogic ``.csv`` (``;``) / ``.txt`` export (``Ecell/V``)
indigo             IndigoDatapath            Indigo HDF5 (``time_series_data``)
maccor             MaccorDatapath            Maccor text export (``Today's Date`` / ``Rec#`` header)
neware             NewareDatapath            Neware CSV with cycle/step/record header rows
novonix            NovonixDatapath           Novonix export (``[Summary]``, ``Cycle Number``)
=================  ========================  ====================================================

Exports in another layout (an Arbin MITS Pro CSV with ``Test_Time(s)``-style headers, say) are read with a
column mapping (:mod:`msenc_lib.data.mapping`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from msenc_lib.data.batteryml import metadata_from_id
from msenc_lib.data.metadata import constant, metadata_arrays
from msenc_lib.data.schema import IR_COLUMN, UNIFIED_COLUMNS
from msenc_lib.errors import InputDataError

BEEP_CLASSES = {
    "arbin": "ArbinDatapath",
    "battery-archive": "BatteryArchiveDatapath",
    "biologic": "BiologicDatapath",
    "indigo": "IndigoDatapath",
    "maccor": "MaccorDatapath",
    "neware": "NewareDatapath",
    "novonix": "NovonixDatapath",
}
INSTALL_HINT = "pip install 'msenc[cyclers]' (TRI's beep package)"


def beep_available() -> bool:
    try:
        import beep.structure  # noqa: F401
    except ImportError:
        return False
    return True


def _datapath_class(fmt: str, source: str):
    try:
        import beep.structure as structure
    except ImportError as e:
        raise InputDataError(f"{source}: reading {fmt} files needs the optional beep package ({e}): "
                             f"{INSTALL_HINT}") from None
    return getattr(structure, BEEP_CLASSES[fmt])


@contextlib.contextmanager
def _scratch_cwd():
    """beep's Neware reader writes helper files into the working directory: give it a scratch one."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="msenc-beep-") as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)


def cell_key_of(source: str) -> str:
    name = source.rsplit("/", 1)[-1]
    for ext in (".gz", ".bz2", ".zst"):
        name = name.removesuffix(ext)
    name = name.rsplit(".", 1)[0] if "." in name else name
    return name.removesuffix("_timeseries")  # Battery Archive: <cell id>_timeseries.csv


def read_cycler_file(path: str | os.PathLike, source: str, fmt: str, include_ir: bool = False) -> pa.Table:
    """The unified rows of one cycler file parsed by beep (module doc); errors name the file."""
    cls = _datapath_class(fmt, source)
    absolute = str(Path(path).resolve())  # before beep runs in its scratch working directory
    try:
        with _scratch_cwd():
            datapath = cls.from_file(absolute)
    except InputDataError:
        raise
    except Exception as e:  # beep raises whatever pandas/h5py/its parsers raise on a file it cannot read
        raise InputDataError(f"{source}: beep's {BEEP_CLASSES[fmt]} cannot read it as a {fmt} file: "
                             f"{type(e).__name__}: {e}") from None
    df = datapath.raw_data
    missing = [c for c in ("cycle_index", "test_time", "current", "voltage", "charge_capacity",
                           "discharge_capacity") if c not in df.columns]
    if missing:
        raise InputDataError(f"{source}: beep's {BEEP_CLASSES[fmt]} gave no {missing} columns "
                             f"(it gave {list(df.columns)})")
    n = len(df)

    def floats(name: str) -> np.ndarray:
        return df[name].to_numpy(dtype=np.float64, na_value=np.nan) if name in df.columns else np.full(n, np.nan)

    cycles = floats("cycle_index")
    finite = np.isfinite(cycles)
    integral = bool(np.all(cycles[finite] == np.round(cycles[finite])))
    temperature = floats("temperature")
    data = {
        "cell_key": constant(cell_key_of(source), n, pa.string()),
        "cycle_number": (pa.array(np.where(finite, cycles, 0).astype(np.int64), mask=~finite) if integral
                         else pa.array(cycles)),
        "time": pa.array(floats("test_time")),
        "cycle_life": pa.nulls(n, pa.int64()),
        "discharge_policy": pa.nulls(n, pa.int64()),
        "current": pa.array(floats("current")),
        "voltage": pa.array(floats("voltage")),
        "charge_capacity": pa.array(floats("charge_capacity")),
        "discharge_capacity": pa.array(floats("discharge_capacity")),
        "temperature": pa.array(temperature, mask=~np.isfinite(temperature)),
        "batch_number": pa.nulls(n, pa.int64()),
        "discharge_dQdV": pa.nulls(n, pa.float64()),
    }
    for i in range(1, 5):
        data[f"charge_policy_Q{i}"] = pa.nulls(n, pa.float64())
    assert list(data) == UNIFIED_COLUMNS
    data.update(metadata_arrays(n, metadata_from_id(cell_key_of(source)) if fmt == "battery-archive" else {}))
    if include_ir:
        ir = floats("internal_resistance")
        data[IR_COLUMN] = pa.array(ir, mask=~np.isfinite(ir))
    return pa.table(data)


__all__ = ["BEEP_CLASSES", "INSTALL_HINT", "beep_available", "read_cycler_file", "cell_key_of"]
