"""BatteryML's and BatteryLife's processed cells (one ``<cell_id>.pkl`` per cell) -> unified rows.

``batteryml preprocess <DATASET> RAW OUT`` (microsoft/BatteryML, ``BatteryData.dump``) pickles
``BatteryData.to_dict()``: a plain dict, loaded here with :mod:`msenc_lib.data.safe_pickle` (no code runs)::

    {"cell_id": "MATR_b1c0", "cycle_data": [<cycle>, ...], "form_factor": "cylindrical_18650",
     "anode_material": "graphite", "cathode_material": "LFP", "nominal_capacity_in_Ah": 1.1,
     "charge_protocol": [<protocol>, ...], "discharge_protocol": [<protocol>, ...], ...,
     "SOC_interval": [0, 1]}                                   # BatteryLife only
    <cycle> = {"cycle_number": 1, "current_in_A": [...], "voltage_in_V": [...], "charge_capacity_in_Ah": [...],
               "discharge_capacity_in_Ah": [...], "time_in_s": [...], "temperature_in_C": [...] or None,
               "internal_resistance_in_ohm": 0.016 or None, <extras such as "Qdlin">}
    <protocol> = {"rate_in_C", "current_in_A", "voltage_in_V", "power_in_W", "start_voltage_in_V", "start_soc",
                  "end_voltage_in_V", "end_soc"}

BatteryLife (Ruifeng-Tan/BatteryLife) writes the same structure (its preprocessors run inside BatteryML) plus
``SOC_interval``; that key tells the two apart. Per-point values may be lists of numpy scalars; stored cycle
numbers may be text; the list order is kept.

Mapping: ``cell_key`` = the file's ``cell_id`` as is (``MATR_b1c0``, ``HUST_1-1``, ``CALCE_CS2_33``);
``cycle_number`` = the stored number; ``time`` = ``time_in_s`` as stored (BatteryML keeps MATR's minutes
within a cycle, BatteryLife stores seconds cumulative over the cell); current, voltage, capacities,
temperature (null where the dataset has none); ``cycle_life`` from BatteryLife's label files
(``Life labels/<dataset>_labels.json``, keyed by file name) when they are among the inputs, else null;
``discharge_policy`` = 100 x the C-rate of a single-rate discharge protocol; ``batch_number`` from ``MATR_b<N>c<i>``;
``charge_policy_Q1..Q4`` from the charge protocol's SOC windows (:func:`protocol_quartiles`); the metadata
columns from the file (chemistry from ``cathode_material``; the ambient temperature from the cell id where the
dataset encodes it, e.g. ``SNL_18650_LFP_25C_...``, ``CALB_35_...``; MATR 30 °C).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from msenc_lib.data.metadata import constant, metadata_arrays
from msenc_lib.data.policy import TAIL_RATE, window_quartiles
from msenc_lib.data.schema import IR_COLUMN, UNIFIED_COLUMNS
from msenc_lib.data.severson import MATR_METADATA, cycle_life_of
from msenc_lib.data.validate import ValidationReport
from msenc_lib.errors import InputDataError

REQUIRED_KEYS = ["cell_id", "cycle_data"]
POINT_FIELDS = {  # BatteryData cycle key -> unified column
    "time_in_s": "time", "current_in_A": "current", "voltage_in_V": "voltage",
    "charge_capacity_in_Ah": "charge_capacity", "discharge_capacity_in_Ah": "discharge_capacity",
    "temperature_in_C": "temperature",
}
OPTIONAL_POINT_FIELDS = {"temperature_in_C"}
CHEMISTRY = {"lifepo4": "LFP", "lfp": "LFP", "licoo2": "LCO", "lco": "LCO", "nmc": "NMC", "ncm": "NMC",
             "nca": "NCA", "limn2o4": "LMO", "lmo": "LMO"}
LABELS_SUFFIX = "_labels.json"
ROW_MEANING = "1-based row of the cell, cycle_data in list order"  # what "row N" means in errors
_MATR_KEY = re.compile(r"^MATR_b(\d+)c\d+$")
_TEMPERATURE = re.compile(r"^(-?\d+(?:\.\d+)?)C$")


def flavour(cell: Mapping) -> str:
    return "batterylife" if "SOC_interval" in cell else "batteryml"


def dataset_of(cell_id: str) -> str:
    """``MATR_b1c0`` -> ``MATR``; BatteryLife's ``Tongji1_...`` -> ``Tongji``."""
    prefix = cell_id.split("_", 1)[0]
    return re.sub(r"^(Tongji)\d+$", r"\1", prefix)


def chemistry_of(cathode: Any) -> str | None:
    if not isinstance(cathode, str) or not cathode.strip():
        return None
    return CHEMISTRY.get(cathode.strip().lower(), cathode.strip())


def ambient_temperature_of(cell_id: str) -> float | None:
    """The test temperature a cell id encodes: the ``<T>C`` token after the chemistry (Battery Archive names:
    SNL, HNEI, UL-PUR, MICH), BatteryLife's ``CALB_<T>_...``, MATR's 30 °C chamber; None otherwise."""
    tokens = cell_id.split("_")
    if dataset_of(cell_id) == "MATR":
        return float(MATR_METADATA["ambient_temperature"])
    if tokens[0] == "CALB" and len(tokens) > 1 and re.fullmatch(r"-?\d+", tokens[1]):
        return float(tokens[1])
    chem = [i for i, t in enumerate(tokens) if t.lower() in CHEMISTRY]
    for t in tokens[chem[0] + 1:] if chem else []:
        m = _TEMPERATURE.match(t)
        if m:
            return float(m[1])
    return None


def metadata_from_id(cell_id: str) -> dict[str, Any]:
    """What a Battery Archive style id says (``SNL_18650_LFP_25C_0-100_0.5-1C_a``, ``MICH_BLForm1_pouch_NMC_45C_...``):
    dataset, chemistry, form factor, test temperature; None where it does not say."""
    tokens = cell_id.split("_")
    chem = next((CHEMISTRY[t.lower()] for t in tokens[1:] if t.lower() in CHEMISTRY), None)
    form = next(("cylindrical_" + t if t.isdigit() else t for t in tokens[1:] if t in ("18650", "21700", "26650",
                                                                                       "pouch", "prismatic")), None)
    return {"dataset": dataset_of(cell_id), "chemistry": chem, "form_factor": form,
            "ambient_temperature": ambient_temperature_of(cell_id)}


def _number(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _soc(value: Any) -> float | None:
    """A protocol SOC as a percentage; BatteryML's MATR preprocessor stores some as percent already."""
    f = _number(value)
    if f is None:
        return None
    return f if f > 1.0 else 100.0 * f


def protocol_quartiles(protocols: Any, nominal: float | None, dataset: str) -> list[float | None]:
    """Quartile C-rates of a BatteryData charge protocol list.

    Each step with a rate (``rate_in_C``, else ``current_in_A`` / nominal capacity) covers ``start_soc`` to
    ``end_soc``; a missing start is the previous step's end (0 for the first), a missing end the next rated
    step's start (100 % for the last). Steps without a rate (CV holds) are skipped. SOC a step does not cover
    is unknown, and so is its quartile (null) — except for MATR, whose cells all charge 80-100 % at 1C.
    """
    if not isinstance(protocols, list):
        return [None] * 4
    steps = []
    for p in protocols:
        if not isinstance(p, Mapping):
            continue
        rate = _number(p.get("rate_in_C"))
        if rate is None and nominal:
            current = _number(p.get("current_in_A"))
            rate = abs(current) / nominal if current is not None else None
        if rate is not None:
            steps.append([_soc(p.get("start_soc")), _soc(p.get("end_soc")), rate])
    if not steps:
        return [None] * 4
    for i, step in enumerate(steps):
        if step[0] is None:
            step[0] = steps[i - 1][1] if i and steps[i - 1][1] is not None else 0.0
        if step[1] is None:
            nxt = steps[i + 1][0] if i + 1 < len(steps) else None
            step[1] = nxt if nxt is not None else 100.0
    windows = [tuple(s) for s in steps]
    if dataset == "MATR":
        covered = max(end for _, end, _ in windows)
        if covered < 100:
            windows.append((covered, 100.0, TAIL_RATE))
    return [None if np.isnan(q) else q for q in window_quartiles(windows)]


def discharge_policy_of(protocols: Any) -> int | None:
    """100 x the C-rate of a single-rate discharge protocol (Severson's 400 = 4C); None otherwise."""
    if not isinstance(protocols, list) or len(protocols) != 1 or not isinstance(protocols[0], Mapping):
        return None
    rate = _number(protocols[0].get("rate_in_C"))
    return None if rate is None else int(round(100 * rate))


def read_labels(text: str, source: str) -> dict[str, int]:
    """A BatteryLife life-label file: ``{"<cell>.pkl": cycle life, ...}``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputDataError(f"{source}: not a JSON life-label file: {e}") from None
    if not isinstance(data, dict):
        raise InputDataError(f"{source}: a life-label file maps '<cell>.pkl' to a cycle life")
    out = {}
    for name, life in data.items():
        value = _number(life)
        if value is not None:
            out[str(name).rsplit("/", 1)[-1]] = int(value)
    return out


def is_labels_file(name: str) -> bool:
    return name.endswith(LABELS_SUFFIX)


def _points(cycle: Mapping, field: str, where: str) -> np.ndarray | None:
    value = cycle.get(field)
    if value is None:
        return None
    try:
        return np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError) as e:
        raise InputDataError(f"{where}: {field!r} holds values that are not numbers ({e})") from None


def load_cell(path: str, source: str) -> dict:
    """A processed cell as its dict; errors name the file and what is missing."""
    from msenc_lib.data import safe_pickle

    cell = safe_pickle.load(path, source)
    if not isinstance(cell, dict):
        raise InputDataError(f"{source}: not a BatteryML/BatteryLife processed cell: the pickle holds a "
                             f"{type(cell).__name__}, not a dict")
    missing = [k for k in REQUIRED_KEYS if k not in cell]
    if missing:
        raise InputDataError(f"{source}: not a BatteryML/BatteryLife processed cell: missing key(s) {missing} "
                             f"(has {sorted(map(str, cell))[:20]})")
    if not isinstance(cell["cycle_data"], list):
        raise InputDataError(f"{source}: 'cycle_data' is a {type(cell['cycle_data']).__name__}, not a list of cycles")
    return cell


def cell_to_table(cell: dict, source: str, report: ValidationReport, include_ir: bool = False,
                  labels: Mapping[str, int] | None = None) -> tuple[str, pa.Table]:
    """``(cell_key, unified rows)`` of one processed cell (module doc)."""
    cell_id = cell.get("cell_id")
    if not isinstance(cell_id, str) or not cell_id.strip():
        cell_id = source.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        report.add("missing_cell_id", 1, f"{source}: no cell_id: the file name {cell_id!r} used")
    dataset = dataset_of(cell_id)
    nominal = _number(cell.get("nominal_capacity_in_Ah"))
    columns: dict[str, list[np.ndarray]] = {c: [] for c in POINT_FIELDS.values()}
    present = {c: [] for c in POINT_FIELDS.values()}
    cycle_numbers, ir_rows = [], []
    float_cycles = False
    for pos, cycle in enumerate(cell["cycle_data"]):
        where = f"{source}: cycle_data[{pos}]"
        if not isinstance(cycle, Mapping):
            raise InputDataError(f"{where}: a {type(cycle).__name__}, not a cycle dict")
        number = _number(cycle.get("cycle_number"))
        if number is None:
            raise InputDataError(f"{where}: cycle_number {cycle.get('cycle_number')!r} is not a number")
        where = f"{source}: cell {cell_id}, cycle {cycle.get('cycle_number')}"
        arrays = {f: _points(cycle, f, where) for f in POINT_FIELDS}
        missing = [f for f, a in arrays.items() if a is None and f not in OPTIONAL_POINT_FIELDS]
        if missing:
            raise InputDataError(f"{where}: no values for {missing}")
        n = arrays["current_in_A"].size
        ragged = {f: a.size for f, a in arrays.items() if a is not None and a.size != n}
        if ragged:
            raise InputDataError(f"{where}: {ragged} values but 'current_in_A' has {n}")
        if n == 0:
            report.add("empty_cycles", 1, "cycles without data points skipped")
            continue
        float_cycles |= not float(number).is_integer()
        cycle_numbers.append(np.full(n, number))
        for f, col in POINT_FIELDS.items():
            a = arrays[f]
            columns[col].append(a if a is not None else np.full(n, np.nan))
            present[col].append(np.full(n, a is not None))
        if include_ir:
            ir_rows.append(np.full(n, _number(cycle.get("internal_resistance_in_ohm")) or np.nan))

    def cat(parts: list[np.ndarray], dtype=np.float64) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)

    n_rows = sum(a.size for a in cycle_numbers)
    if not present["temperature"] or not cat(present["temperature"], bool).all():
        report.add("no_temperature", 1, f"{dataset} cells without temperature readings: temperature left empty")
    life = (labels or {}).get(source.rsplit("/", 1)[-1], (labels or {}).get(f"{cell_id}.pkl"))
    life = cycle_life_of({"cycle_life": life}) if life is not None else float("nan")
    batch = _MATR_KEY.match(cell_id)
    quartiles = protocol_quartiles(cell.get("charge_protocol"), nominal, dataset)
    discharge = discharge_policy_of(cell.get("discharge_protocol"))

    cycles = cat(cycle_numbers)
    temperature = cat(columns["temperature"])
    data = {
        "cell_key": constant(cell_id, n_rows, pa.string()),
        "cycle_number": pa.array(cycles if float_cycles else cycles.astype(np.int64)),
        "time": pa.array(cat(columns["time"])),
        "cycle_life": constant(None if not np.isfinite(life) else int(life), n_rows, pa.int64()),
        "discharge_policy": constant(discharge, n_rows, pa.int64()),
        "current": pa.array(cat(columns["current"])),
        "voltage": pa.array(cat(columns["voltage"])),
        "charge_capacity": pa.array(cat(columns["charge_capacity"])),
        "discharge_capacity": pa.array(cat(columns["discharge_capacity"])),
        "temperature": pa.array(temperature, mask=~np.isfinite(temperature)),
        "batch_number": constant(int(batch[1]) if batch else None, n_rows, pa.int64()),
        "discharge_dQdV": pa.nulls(n_rows, pa.float64()),
    }
    for i, q in enumerate(quartiles, 1):
        data[f"charge_policy_Q{i}"] = constant(q, n_rows, pa.float64())
    assert list(data) == UNIFIED_COLUMNS
    data.update(metadata_arrays(n_rows, {
        "dataset": dataset, "chemistry": chemistry_of(cell.get("cathode_material")), "nominal_capacity": nominal,
        "form_factor": cell.get("form_factor") if isinstance(cell.get("form_factor"), str) else None,
        "ambient_temperature": ambient_temperature_of(cell_id)}))
    if include_ir:
        ir = cat(ir_rows)
        data[IR_COLUMN] = pa.array(ir, mask=~np.isfinite(ir))
    return cell_id, pa.table(data)


__all__ = ["metadata_from_id", "load_cell", "cell_to_table", "flavour", "protocol_quartiles", "read_labels", "is_labels_file",
           "dataset_of", "ambient_temperature_of", "chemistry_of"]
