"""Severson et al. (2019) / data.matr.io battery batches -> unified rows, with the original cleaning.

Two input forms, both giving the same per-cell structure (original-workflow.md §1.1)::

    cell = {"cycle_life": [[n]], "charge_policy": "3.6C(80%)-3.6C",
            "summary": {"IR", "QC", "QD", "Tavg", "Tmin", "Tmax", "chargetime", "cycle": 1-D arrays},
            "cycles": {"0": {"I", "Qc", "Qd", "Qdlin", "T", "Tdlin", "V", "dQdV", "t": 1-D arrays}, ...}}

* **MATLAB v7.3 ``.mat`` batch files** as downloaded from data.matr.io (HDF5, read with h5py): a struct
  array ``batch`` whose fields ``cycle_life``, ``policy_readable``, ``summary`` and ``cycles`` hold one
  object reference per cell. This is the recommended path: reading HDF5 runs no code from the file.
  The batch number comes from the file name: the data.matr.io date (2017-05-12 -> 1, 2017-06-30 -> 2,
  2018-04-12 -> 3) or ``batchN`` in the name.
* **batch pickles** ``batch1.pkl``, ``batch2.pkl``, ``batch3.pkl`` as written by the rdbraatz
  ``BuildPkl_Batch{1,2,3}.ipynb`` notebooks. **Unpickling runs arbitrary code from the file**: only read
  pickles you made yourself or fully trust; for files from elsewhere use the ``.mat`` files. Note that
  those notebooks store ``Qc`` under ``I`` and ``Qd`` for batches 2 and 3 (a bug of the notebooks); rows
  from such pickles carry what the pickle holds, the ``.mat`` reader reads the real ``I`` and ``Qd``.

Cleaning (beep-data-utils ``preprocess_batch_data``, mirroring rdbraatz ``Load Data.ipynb``): drop batch-1
cells b1c8, b1c10, b1c12, b1c13, b1c22 (never reach 80 %); merge batch-2 carry-over cells b2c7, b2c8,
b2c9, b2c15, b2c16 into b1c0..b1c4 (cycle_life += 662, 981, 1060, 208, 482; their cycles appended with
numbers continuing batch 1's; summaries concatenated, summary ``cycle`` offset); drop batch-3 noisy
channels b3c37, b3c2, b3c23, b3c32, b3c42, b3c43 where present. Every step is reported as a warning.

Rows (original-workflow.md §1.2): one per time step ``idx`` of each cycle; ``cycle_number`` = int(cycle
key); ``discharge_policy`` 400; ``batch_number`` = the batch; ``discharge_dQdV`` = dQdV[idx] while idx <
len(dQdV), else empty; the policy string becomes ``charge_policy_Q1..Q4``.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from typing import Iterator

import numpy as np
import pyarrow as pa

from msenc_lib.data.policy import parse_charge_policy
from msenc_lib.data.schema import IR_COLUMN, UNIFIED_COLUMNS
from msenc_lib.data.validate import ValidationReport
from msenc_lib.errors import InputDataError

BATCH1_DROP = ["b1c8", "b1c10", "b1c12", "b1c13", "b1c22"]
BATCH3_DROP = ["b3c37", "b3c2", "b3c23", "b3c32", "b3c42", "b3c43"]
# (batch-2 carry-over cell, batch-1 cell it continues, cycles batch 1 missed)
CARRY_OVER = [("b2c7", "b1c0", 662), ("b2c8", "b1c1", 981), ("b2c9", "b1c2", 1060),
              ("b2c15", "b1c3", 208), ("b2c16", "b1c4", 482)]
DISCHARGE_POLICY = 400
MAT_DATES = {"2017-05-12": 1, "2017-06-30": 2, "2018-04-12": 3}
# .mat field -> pickle key
MAT_CYCLE_FIELDS = {"I": "I", "Qc": "Qc", "Qd": "Qd", "Qdlin": "Qdlin", "T": "T", "Tdlin": "Tdlin",
                    "V": "V", "discharge_dQdV": "dQdV", "t": "t"}
MAT_SUMMARY_FIELDS = {"IR": "IR", "QCharge": "QC", "QDischarge": "QD", "Tavg": "Tavg", "Tmin": "Tmin",
                      "Tmax": "Tmax", "chargetime": "chargetime", "cycle": "cycle"}
ROW_FIELDS = ["I", "V", "Qc", "Qd", "T", "t"]
ROW_MEANING = "1-based row of the cell, cycles in order"  # what "row N" means in errors


def batch_number_from_name(name: str) -> int | None:
    for date, number in MAT_DATES.items():
        if date in name:
            return number
    m = re.search(r"batch[_-]?(\d+)", name, re.IGNORECASE)
    return int(m[1]) if m else None


# ------------------------------------------------------------------------------------------- sources
class PickleBatch(Mapping):
    """A batch pickle (dict ``cell_key -> cell``). Unpickling runs code: trusted files only."""

    def __init__(self, path: str, source: str | None = None):
        self.source = source or str(path)
        with open(path, "rb") as fh:
            try:
                data = pickle.load(fh)  # noqa: S301 - documented: trusted files only
            except Exception as e:  # a damaged pickle raises anything
                raise InputDataError(f"{self.source}: cannot unpickle: {type(e).__name__}: {e}") from None
        if not isinstance(data, dict):
            raise InputDataError(f"{self.source}: expected a dict of cells, got {type(data).__name__}")
        self._data = data

    def __getitem__(self, key: str) -> dict:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def _mat_empty(obj) -> bool:
    """MATLAB v7.3 stores an empty array as its dimensions with the attribute ``MATLAB_empty`` = 1."""
    flag = obj.attrs.get("MATLAB_empty")
    return flag is not None and bool(np.asarray(flag).ravel()[0])


def _mat_array(ds) -> np.ndarray:
    return np.empty(0) if _mat_empty(ds) else np.asarray(ds[()], dtype=np.float64).ravel()


def _mat_string(ds) -> str:
    """A MATLAB char array (uint16 codes) as text."""
    return "" if _mat_empty(ds) else "".join(chr(int(c)) for c in np.asarray(ds[()]).ravel())


class MatBatch(Mapping):
    """A data.matr.io batch ``.mat`` (MATLAB v7.3 / HDF5); cells are read lazily, one at a time."""

    def __init__(self, path: str, batch_number: int, source: str | None = None, with_lin: bool = False):
        import h5py

        self.source = source or str(path)
        self.batch_number = batch_number
        self.with_lin = with_lin
        try:
            self._f = h5py.File(path, "r")
        except OSError as e:
            raise InputDataError(f"{self.source}: not a MATLAB v7.3 (HDF5) file: {e}") from None
        if "batch" not in self._f:
            raise InputDataError(f"{self.source}: no 'batch' struct (keys: {list(self._f.keys())})")
        batch = self._f["batch"]
        need = ["cycle_life", "policy_readable", "summary", "cycles"]
        missing = [k for k in need if k not in batch]
        if missing:
            raise InputDataError(f"{self.source}: 'batch' struct lacks field(s) {missing}")
        self._refs = {k: np.asarray(batch[k][()]).ravel() for k in need}
        n = len(self._refs["summary"])
        self._keys = [f"b{batch_number}c{i}" for i in range(n)]

    def close(self) -> None:
        self._f.close()

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, key: str) -> dict:
        try:
            i = self._keys.index(key)
        except ValueError:
            raise KeyError(key) from None
        f = self._f
        try:
            cycle_life = np.asarray(f[self._refs["cycle_life"][i]][()], dtype=np.float64)
            policy = _mat_string(f[self._refs["policy_readable"][i]])
            sgrp = f[self._refs["summary"][i]]
            summary = {short: _mat_array(sgrp[name]) for name, short in MAT_SUMMARY_FIELDS.items() if name in sgrp}
            cgrp = f[self._refs["cycles"][i]]
            fields = {k: v for k, v in MAT_CYCLE_FIELDS.items()
                      if k in cgrp and (self.with_lin or k not in ("Qdlin", "Tdlin"))}
            cycles: dict[str, dict[str, np.ndarray]] = {}
            if "I" in cgrp and not _mat_empty(cgrp["I"]):
                refs = {k: np.asarray(cgrp[k][()]).ravel() for k in fields}
                for j in range(len(refs["I"])):
                    cycles[str(j)] = {short: _mat_array(f[refs[k][j]]) for k, short in fields.items()
                                      if j < len(refs[k])}
        except (KeyError, ValueError, TypeError) as e:
            raise InputDataError(f"{self.source}: cell {key}: unexpected .mat structure: {e}") from None
        return {"cycle_life": cycle_life, "charge_policy": policy, "summary": summary, "cycles": cycles}


# ------------------------------------------------------------------------------------------- cleaning
def _merge_carry_over(cell1: dict, cell2: dict, offset: int) -> dict:
    """batch-1 cell + its batch-2 continuation, as the original merge does."""
    merged_summary = {}
    s1, s2 = cell1.get("summary", {}), cell2.get("summary", {})
    for name in s1:
        if name in s2:
            a, b = np.asarray(s1[name]).ravel(), np.asarray(s2[name]).ravel()
            if name == "cycle":
                b = b + len(a)
            merged_summary[name] = np.hstack((a, b))
        else:
            merged_summary[name] = s1[name]
    cycles = dict(cell1["cycles"])
    start = len(cell1["cycles"])
    for j, key in enumerate(cell2["cycles"]):
        cycles[str(start + j)] = cell2["cycles"][key]
    return {**cell1, "cycle_life": np.asarray(cell1["cycle_life"], dtype=np.float64) + offset,
            "summary": merged_summary, "cycles": cycles}


def clean_batches(batches: Mapping[int, Mapping[str, dict]], report: ValidationReport,
                  cleaning: bool = True) -> Iterator[tuple[int, str, dict]]:
    """``(batch_number, cell_key, cell)`` in batch order then key order, with the original cleaning."""
    b1, b2 = batches.get(1), batches.get(2)
    carry_from = {c2: (c1, off) for c2, c1, off in CARRY_OVER}
    carry_into = {c1: (c2, off) for c2, c1, off in CARRY_OVER}
    if cleaning:
        if b1 is not None:
            dropped = [k for k in BATCH1_DROP if k in b1]
            report.add("severson_dropped_cells", len(dropped),
                       f"batch-1 cells {dropped} dropped (never reach 80% capacity; original cleaning)")
        if 3 in batches:
            dropped = [k for k in BATCH3_DROP if k in batches[3]]
            report.add("severson_dropped_cells", len(dropped),
                       f"batch-3 noisy channels {dropped} dropped (original cleaning)")
    for number in sorted(batches):
        batch = batches[number]
        for key in batch:
            if cleaning and number == 1 and key in BATCH1_DROP:
                continue
            if cleaning and number == 3 and key in BATCH3_DROP:
                continue
            if cleaning and number == 2 and key in carry_from:
                c1, _ = carry_from[key]
                if b1 is None or c1 not in b1:
                    report.add("severson_carry_over_dropped", 1,
                               f"batch-2 carry-over cell {key} dropped: batch 1 (cell {c1}) not in the input")
                continue
            cell = batch[key]
            if cleaning and number == 1 and key in carry_into:
                c2, offset = carry_into[key]
                if b2 is not None and c2 in b2:
                    cell = _merge_carry_over(cell, b2[c2], offset)
                    report.add("severson_merged_cells", 1,
                               f"batch-2 carry-over cell {c2} merged into {key} (cycle_life +{offset})")
                else:
                    cell = {**cell, "cycle_life": np.asarray(cell["cycle_life"], dtype=np.float64) + offset}
                    report.add("severson_carry_over_missing", 1,
                               f"{key}: batch 2 (cell {c2}) not in the input; cycle_life +{offset} applied, "
                               "its later cycles are absent")
            yield number, key, cell


# ---------------------------------------------------------------------------------------------- rows
def _cycle_life(cell: dict) -> float:
    arr = np.asarray(cell.get("cycle_life", np.nan), dtype=np.float64).ravel()
    return float(arr[0]) if arr.size else float("nan")


def cell_to_table(key: str, cell: dict, batch_number: int, source: str, report: ValidationReport,
                  include_ir: bool = False) -> pa.Table:
    """The unified rows of one cell (columns in canonical order, ``internal_resistance`` last if asked)."""
    if not isinstance(cell, Mapping) or "cycles" not in cell:
        raise InputDataError(f"{source}: cell {key}: no 'cycles' entry")
    policy = cell.get("charge_policy", "")
    try:
        quartiles = parse_charge_policy(policy)
    except InputDataError as e:
        raise InputDataError(f"{source}: cell {key}: {e}") from None
    life = _cycle_life(cell)
    if not np.isfinite(life):
        report.add("missing_cycle_life", 1, f"cell {key}: cycle_life is not a number: left empty")
    ir = np.asarray(cell.get("summary", {}).get("IR", np.empty(0)), dtype=np.float64).ravel()

    cols: dict[str, list[np.ndarray]] = {f: [] for f in ROW_FIELDS}
    cycle_numbers, dqdv, dqdv_valid, ir_rows = [], [], [], []
    for pos, (ckey, cyc) in enumerate(cell["cycles"].items()):
        try:
            number = int(ckey)
        except (TypeError, ValueError):
            raise InputDataError(f"{source}: cell {key}: cycle key {ckey!r} is not an integer") from None
        if "I" not in cyc:
            raise InputDataError(f"{source}: cell {key}, cycle {ckey}: no 'I' array")
        n = np.asarray(cyc["I"]).size
        for f in ROW_FIELDS:
            arr = np.asarray(cyc.get(f, np.empty(0)), dtype=np.float64).ravel()
            if arr.size < n:
                raise InputDataError(
                    f"{source}: cell {key}, cycle {ckey}: array {f!r} has {arr.size} values but 'I' has {n}"
                )
            if arr.size > n:
                report.add("array_length_mismatch", arr.size - n,
                           f"values of {f!r} beyond the length of 'I' ignored (as the original)")
            cols[f].append(arr[:n])
        dq = np.asarray(cyc.get("dQdV", np.empty(0)), dtype=np.float64).ravel()[:n]
        pad = n - dq.size
        dqdv.append(np.concatenate([dq, np.zeros(pad)]))
        dqdv_valid.append(np.concatenate([np.ones(dq.size, bool), np.zeros(pad, bool)]))
        cycle_numbers.append(np.full(n, number, dtype=np.int64))
        if include_ir:
            ir_rows.append(np.full(n, ir[pos] if pos < ir.size else np.nan))

    def cat(parts: list[np.ndarray], dtype=np.float64) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)

    n_rows = sum(a.size for a in cols["I"])
    life_arr = pa.nulls(n_rows, pa.int64()) if not np.isfinite(life) else pa.array(
        np.full(n_rows, int(life), dtype=np.int64))
    data = {
        "cell_key": pa.array([key] * n_rows, pa.string()) if n_rows else pa.array([], pa.string()),
        "cycle_number": pa.array(cat(cycle_numbers, np.int64)),
        "time": pa.array(cat(cols["t"])),
        "cycle_life": life_arr,
        "discharge_policy": pa.array(np.full(n_rows, DISCHARGE_POLICY, dtype=np.int64)),
        "current": pa.array(cat(cols["I"])),
        "voltage": pa.array(cat(cols["V"])),
        "charge_capacity": pa.array(cat(cols["Qc"])),
        "discharge_capacity": pa.array(cat(cols["Qd"])),
        "temperature": pa.array(cat(cols["T"])),
        "batch_number": pa.array(np.full(n_rows, batch_number, dtype=np.int64)),
        "discharge_dQdV": pa.array(cat(dqdv), mask=~cat(dqdv_valid, bool)),
    }
    for i, q in enumerate(quartiles, 1):
        data[f"charge_policy_Q{i}"] = pa.array(np.full(n_rows, q, dtype=np.float64))
    assert list(data) == UNIFIED_COLUMNS
    if include_ir:
        ir_values = cat(ir_rows)
        data[IR_COLUMN] = pa.array(ir_values, mask=~np.isfinite(ir_values))
    return pa.table(data)


def open_batches(files: list[str], local_paths: list[str], fmt: str) -> dict[int, Mapping]:
    """Batch number -> batch source, from file names (see the module doc)."""
    out: dict[int, Mapping] = {}
    for uri, local in zip(files, local_paths):
        number = batch_number_from_name(uri.rsplit("/", 1)[-1])
        if number is None:
            raise InputDataError(
                f"{uri}: cannot tell the batch number from the file name; keep the data.matr.io name "
                f"(e.g. 2017-05-12_batchdata_updated_struct_errorcorrect.mat) or name it batch1/batch2/batch3"
            )
        if number in out:
            raise InputDataError(f"{uri}: a second file for batch {number}")
        out[number] = MatBatch(local, number, source=uri) if fmt == "severson-mat" else PickleBatch(local, source=uri)
    return out


__all__ = [
    "BATCH1_DROP", "BATCH3_DROP", "CARRY_OVER", "MatBatch", "PickleBatch", "clean_batches", "cell_to_table",
    "open_batches", "batch_number_from_name",
]
