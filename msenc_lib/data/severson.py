"""Severson et al. (2019) / Attia et al. (2020) MATR battery batches -> unified rows, with the original cleaning.

Two input forms, both giving the same per-cell structure (original-workflow.md §1.1)::

    cell = {"cycle_life": [[n]], "charge_policy": "3.6C(80%)-3.6C",
            "summary": {"IR", "QC", "QD", "Tavg", "Tmin", "Tmax", "chargetime", "cycle": 1-D arrays},
            "cycles": {"0": {"I", "Qc", "Qd", "Qdlin", "T", "Tdlin", "V", "dQdV", "t": 1-D arrays}, ...}}

* **MATLAB v7.3 ``.mat`` batch files** as downloaded from data.matr.io (HDF5, read with h5py): a struct
  array ``batch`` whose fields ``cycle_life``, ``policy_readable``, ``summary`` and ``cycles`` hold one
  object reference per cell. This is the recommended path. A MATLAB empty array (stored as its dimensions
  with the attribute ``MATLAB_empty``) is read as empty, so an empty ``cycle_life`` is null, never 0.
* **batch pickles** ``batch1.pkl`` ... as written by the rdbraatz ``BuildPkl_Batch{1,2,3}.ipynb`` notebooks,
  loaded with :mod:`msenc_lib.data.safe_pickle` (plain containers and numpy arrays only: nothing in the file
  runs). Pickles written by those notebooks before commit d33d7ca (2019-04-03, "Fix typo in data
  extraction"; in the repository's master from 2019-05-17) hold ``Qc`` under ``I`` and under ``Qd`` for every
  batch; they are detected and refused (:func:`check_not_legacy`).

**Batch identity** (:func:`identify`): the release date in the file name, in any spelling
(data.matr.io's ``2017-05-12_batchdata_updated_struct_errorcorrect.mat``, BatteryML/BatteryLife's
``MATR_batch_20170512.mat``), mapped by :data:`MATR_RELEASES`; else ``batchN`` in the name; for pickles also
the cell keys inside (``b1c0`` ...), which must agree with the name. Batches 1-4 are numbered like
BatteryML/BatteryLife (1 = 2017-05-12, 2 = 2017-06-30, 3 = 2018-04-12, 4 = 2019-01-24); the other releases
follow as 5-10 (msenc's numbering: no common one exists).

**Cleaning by identity** (beep-data-utils ``preprocess_batch_data``, mirroring rdbraatz ``Load Data.ipynb``;
BatteryLife's list of bad cycles), each applied only to the release it was written for, each reported, and
each reported as unmatched when it finds nothing to do: drop 2017-05-12 cells b1c8, b1c10, b1c12, b1c13,
b1c22 (never reach 80 %); merge 2017-06-30 carry-over cells b2c7, b2c8, b2c9, b2c15, b2c16 into b1c0..b1c4
(cycle_life += 662, 981, 1060, 208, 482; their cycles appended with numbers continuing batch 1's; summaries
concatenated, summary ``cycle`` offset); drop 2018-04-12 noisy channels b3c37, b3c2, b3c23, b3c32, b3c42,
b3c43; exclude the corrupt cycles BatteryLife lists (b1c0 cycle 11, b1c18 cycle 39, b2c12 cycle 252, b2c44
cycle 247; BatteryLife renumbers the later cycles down by one, msenc keeps the original numbers), counted per
cell and cycle in the repairs.

Rows (original-workflow.md §1.2): one per time step ``idx`` of each cycle; ``cycle_number`` = int(cycle
key); ``time`` = ``t`` (minutes within the cycle, as the source); ``discharge_policy`` 400 (4C);
``batch_number`` = the batch; ``discharge_dQdV`` = dQdV[idx] while idx < len(dQdV), else empty; the policy
string becomes ``charge_policy_Q1..Q4`` (:mod:`msenc_lib.data.policy`; closed-loop policies as SOC windows);
the metadata columns say MATR, LFP, 1.1 Ah, cylindrical_18650, 30 °C.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from msenc_lib.data.metadata import constant, metadata_arrays
from msenc_lib.data.policy import parse_charge_policy
from msenc_lib.data.repair import KNOWN_BAD_CYCLE, RepairLog
from msenc_lib.data.schema import IR_COLUMN, UNIFIED_COLUMNS
from msenc_lib.data.validate import ValidationReport
from msenc_lib.errors import InputDataError


@dataclass(frozen=True)
class Release:
    date: str  # data.matr.io release date, YYYY-MM-DD
    batch: int  # the N of the b<N>c<i> cell keys
    project: str


MATR_RELEASES: list[Release] = [
    Release("2017-05-12", 1, "Severson et al. 2019, batch 1"),
    Release("2017-06-30", 2, "Severson et al. 2019, batch 2"),
    Release("2018-04-12", 3, "Severson et al. 2019, batch 3"),
    Release("2019-01-24", 4, "Attia et al. 2020, closed-loop validation batch"),
    Release("2018-02-20", 5, "data.matr.io release outside the Severson paper"),
    Release("2018-04-03", 6, "data.matr.io 'varcharge' release"),
    Release("2018-08-28", 7, "Attia et al. 2020, closed-loop round 1"),
    Release("2018-09-02", 8, "Attia et al. 2020, closed-loop round 2"),
    Release("2018-09-06", 9, "Attia et al. 2020, closed-loop round 3"),
    Release("2018-09-10", 10, "Attia et al. 2020, closed-loop round 4"),
]
RELEASE_BY_DATE = {r.date: r for r in MATR_RELEASES}
RELEASE_BY_BATCH = {r.batch: r for r in MATR_RELEASES}

BATCH1_DROP = ["b1c8", "b1c10", "b1c12", "b1c13", "b1c22"]
BATCH3_DROP = ["b3c37", "b3c2", "b3c23", "b3c32", "b3c42", "b3c43"]
# (batch-2 carry-over cell, batch-1 cell it continues, cycles batch 1 missed)
CARRY_OVER = [("b2c7", "b1c0", 662), ("b2c8", "b1c1", 981), ("b2c9", "b1c2", 1060),
              ("b2c15", "b1c3", 208), ("b2c16", "b1c4", 482)]
# Cell drops by release date, with the reason.
DROPPED_CELLS = {"2017-05-12": (BATCH1_DROP, "never reaches 80% capacity"),
                 "2018-04-12": (BATCH3_DROP, "noisy channel")}
# Corrupt raw cycles (release date -> [(cell, cycle key)]), BatteryLife's preprocess_MATR.py.
KNOWN_BAD_CYCLES = {"2017-05-12": [("b1c0", 11), ("b1c18", 39)], "2017-06-30": [("b2c12", 252), ("b2c44", 247)]}
DISCHARGE_POLICY = 400
MATR_METADATA = {"dataset": "MATR", "chemistry": "LFP", "nominal_capacity": 1.1, "form_factor": "cylindrical_18650",
                 "ambient_temperature": 30.0}
# .mat field -> pickle key
MAT_CYCLE_FIELDS = {"I": "I", "Qc": "Qc", "Qd": "Qd", "Qdlin": "Qdlin", "T": "T", "Tdlin": "Tdlin",
                    "V": "V", "discharge_dQdV": "dQdV", "t": "t"}
MAT_SUMMARY_FIELDS = {"IR": "IR", "QCharge": "QC", "QDischarge": "QD", "Tavg": "Tavg", "Tmin": "Tmin",
                      "Tmax": "Tmax", "chargetime": "chargetime", "cycle": "cycle"}
ROW_FIELDS = ["I", "V", "Qc", "Qd", "T", "t"]
ROW_MEANING = "1-based row of the cell, cycles in order"  # what "row N" means in errors
UNMATCHED_RULE = "cleaning_rule_unmatched"

_DATE = re.compile(r"(?<!\d)(20\d\d)[-_.]?([01]\d)[-_.]?([0-3]\d)(?!\d)")
_BATCH = re.compile(r"batch[_-]?(\d{1,2})(?!\d)", re.IGNORECASE)
_KEY = re.compile(r"^b(\d+)(cl?)(\d+)$")


# ------------------------------------------------------------------------------------------- identity
@dataclass(frozen=True)
class BatchIdentity:
    batch: int
    release: Release | None  # None: not one of the MATR releases (e.g. beep-data-utils' CLO pickles)
    how: str  # how it was told: "file name date", "file name", "cell keys"

    def describe(self) -> str:
        where = f"{self.release.date}, {self.release.project}" if self.release else "no MATR release"
        return f"batch {self.batch} ({where}; from the {self.how})"


def release_from_name(name: str) -> Release | None:
    """The MATR release a file name's date names (``2017-05-12``, ``20170512``, ``2017_05_12``), or None."""
    for m in _DATE.finditer(name):
        date = f"{m[1]}-{m[2]}-{m[3]}"
        if date in RELEASE_BY_DATE:
            return RELEASE_BY_DATE[date]
        known = ", ".join(sorted(RELEASE_BY_DATE))
        raise InputDataError(f"{name}: date {date} in the file name is not a known MATR release ({known})")
    return None


def batch_number_from_name(name: str) -> int | None:
    """The batch a file name says: its release date first (any spelling), else ``batchN``."""
    release = release_from_name(name)
    if release is not None:
        return release.batch
    m = _BATCH.search(name)
    return int(m[1]) if m else None


def batch_of_keys(keys) -> tuple[int, bool] | None:
    """``(batch, closed_loop_keys)`` when every cell key reads ``b<N>c<i>`` (or beep-data-utils' ``b<N>cl<i>``)
    with one N; None when the keys do not say."""
    found = {(int(m[1]), m[2] == "cl") for m in map(_KEY.match, keys) if m}
    if len(found) != 1 or not all(_KEY.match(k) for k in keys):
        return None
    return next(iter(found))


def identify(name: str, keys=None) -> BatchIdentity:
    """A batch file's identity from its name and (pickles) its cell keys; they must agree (module doc)."""
    release = release_from_name(name)
    by_name = release.batch if release else None
    how = "file name date" if release else "file name"
    if by_name is None:
        m = _BATCH.search(name)
        by_name = int(m[1]) if m else None
    by_keys = batch_of_keys(list(keys)) if keys is not None else None
    if by_keys is not None:
        batch, clo = by_keys
        if by_name is not None and by_name != batch and not clo:
            raise InputDataError(f"{name}: the file name says batch {by_name} but its cells are b{batch}c...: "
                                 "rename the file or check that it is the batch you mean")
        if clo:  # beep-data-utils' CLO-project pickles: their own numbering, no Severson cleaning
            return BatchIdentity(batch, None, "cell keys (b<N>cl<i>)")
        if by_name is None:
            return BatchIdentity(batch, RELEASE_BY_BATCH.get(batch), "cell keys")
    if by_name is None:
        raise InputDataError(
            f"{name}: cannot tell which MATR batch this is: keep the data.matr.io name "
            "(e.g. 2017-05-12_batchdata_updated_struct_errorcorrect.mat) or BatteryML's (MATR_batch_20170512.mat), "
            "or name it batch1/batch2/..."
        )
    return BatchIdentity(by_name, release or RELEASE_BY_BATCH.get(by_name), how)


# ------------------------------------------------------------------------------------------- sources
LEGACY_NOTEBOOK = (
    "it was written by a BuildPkl_Batch notebook of rdbraatz/data-driven-prediction-of-battery-cycle-life-"
    "before-capacity-degradation older than commit d33d7ca ('Fix typo in data extraction', 2019-04-03; in the "
    "repository's master from 2019-05-17), which read Qc in place of I and Qd. Rebuild the pickle with the "
    "current notebook, or ingest the data.matr.io .mat file"
)


def check_not_legacy(cells: Mapping[str, dict], source: str) -> None:
    """Refuse a batch pickle whose ``I`` and ``Qd`` are copies of ``Qc`` in every cycle (module doc)."""
    for key, cell in cells.items():
        cycles = cell.get("cycles", {}) if isinstance(cell, Mapping) else {}
        checked = 0
        for cyc in cycles.values():
            qc = np.asarray(cyc.get("Qc", ()), dtype=np.float64).ravel()
            if qc.size < 2 or not np.any(qc):
                continue
            i = np.asarray(cyc.get("I", ()), dtype=np.float64).ravel()
            qd = np.asarray(cyc.get("Qd", ()), dtype=np.float64).ravel()
            if not (np.array_equal(i, qc) and np.array_equal(qd, qc)):
                return
            checked += 1
            if checked >= 3:
                break
        if checked:
            raise InputDataError(f"{source}: cell {key}: 'I' and 'Qd' are copies of 'Qc' in every cycle checked: "
                                 f"{LEGACY_NOTEBOOK}")


class PickleBatch(Mapping):
    """A batch pickle (dict ``cell_key -> cell``), loaded without running code from it."""

    def __init__(self, path: str, source: str | None = None, data: dict | None = None):
        from msenc_lib.data import safe_pickle

        self.source = source or str(path)
        data = safe_pickle.load(path, self.source) if data is None else data
        if not isinstance(data, dict):
            raise InputDataError(f"{self.source}: expected a dict of cells, got {type(data).__name__}")
        if data and not all(isinstance(c, Mapping) and "cycles" in c for c in data.values()):
            bad = next(k for k, c in data.items() if not (isinstance(c, Mapping) and "cycles" in c))
            raise InputDataError(f"{self.source}: not a Severson batch pickle: entry {bad!r} has no 'cycles'")
        check_not_legacy(data, self.source)
        self._data = data
        self.identity = identify(self.source.rsplit("/", 1)[-1], data.keys())

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

    def __init__(self, path: str, batch_number: int | None = None, source: str | None = None,
                 with_lin: bool = False):
        import h5py

        self.source = source or str(path)
        if batch_number is None:
            self.identity = identify(self.source.rsplit("/", 1)[-1])
        else:
            self.identity = BatchIdentity(batch_number, RELEASE_BY_BATCH.get(batch_number), "caller")
        self.batch_number = self.identity.batch
        self.with_lin = with_lin
        try:
            self._f = h5py.File(path, "r")
        except OSError as e:
            raise InputDataError(f"{self.source}: not a MATLAB v7.3 (HDF5) file, or truncated: {e}") from None
        if "batch" not in self._f:
            raise InputDataError(f"{self.source}: no 'batch' struct (keys: {list(self._f.keys())})")
        batch = self._f["batch"]
        need = ["cycle_life", "policy_readable", "summary", "cycles"]
        missing = [k for k in need if k not in batch]
        if missing:
            raise InputDataError(f"{self.source}: 'batch' struct lacks field(s) {missing}")
        self._refs = {k: np.asarray(batch[k][()]).ravel() for k in need}
        n = len(self._refs["summary"])
        self._keys = [f"b{self.batch_number}c{i}" for i in range(n)]

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
            cycle_life = _mat_array(f[self._refs["cycle_life"][i]])
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
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise InputDataError(f"{self.source}: cell {key}: unexpected or truncated .mat structure: {e}") from None
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
    return {**cell1, "cycle_life": _life_array(cell1) + offset, "summary": merged_summary, "cycles": cycles}


def _life_array(cell: dict) -> np.ndarray:
    return np.asarray(cell.get("cycle_life", np.nan), dtype=np.float64)


def _release_of(batches: Mapping[int, Mapping], number: int) -> Release | None:
    identity = getattr(batches[number], "identity", None)
    return identity.release if identity is not None else RELEASE_BY_BATCH.get(number)


def _exclude_bad_cycles(key: str, cell: dict, bad: list[int], source: str, report: ValidationReport,
                        repairs: RepairLog, strict: bool) -> dict:
    cycles = cell["cycles"]
    present = [c for c in bad if str(c) in cycles]
    for c in bad:
        if str(c) not in cycles:
            report.add(UNMATCHED_RULE, 1, f"cleaning rule 'exclude corrupt cycle {c} of {key}' matched nothing: "
                       f"{key} has no cycle {c}")
    if not present:
        return cell
    if strict:
        raise InputDataError(f"{source}: cell {key}, cycle {present[0]}: a known corrupt cycle (BatteryLife's list); "
                             "strict: not excluded (run without --strict to exclude it, or with "
                             "--severson-cleaning false to keep it)")
    for c in present:
        repairs.add(KNOWN_BAD_CYCLE, key, c, max(1, np.asarray(cycles[str(c)].get("I", ())).size))
    report.add("known_bad_cycles", len(present), "known corrupt MATR cycles excluded (see repairs)")
    return {**cell, "cycles": {k: v for k, v in cycles.items() if int(k) not in present}}


def clean_batches(batches: Mapping[int, Mapping[str, dict]], report: ValidationReport,
                  cleaning: bool = True, repairs: RepairLog | None = None, strict: bool = False
                  ) -> Iterator[tuple[int, str, dict]]:
    """``(batch_number, cell_key, cell)`` in batch order then key order, with the cleaning of each batch's
    release (module doc). Rules that find nothing to do are reported."""
    repairs = repairs if repairs is not None else RepairLog()
    dates = {n: (r.date if (r := _release_of(batches, n)) else None) for n in batches}
    by_date = {d: n for n, d in dates.items() if d}
    b1 = batches[by_date["2017-05-12"]] if "2017-05-12" in by_date else None
    b2 = batches[by_date["2017-06-30"]] if "2017-06-30" in by_date else None
    carry_from = {c2: (c1, off) for c2, c1, off in CARRY_OVER}
    carry_into = {c1: (c2, off) for c2, c1, off in CARRY_OVER}
    drops: dict[int, set[str]] = {}
    if cleaning:
        for n, date in dates.items():
            if date in DROPPED_CELLS:
                names, why = DROPPED_CELLS[date]
                dropped = [k for k in names if k in batches[n]]
                report.add("severson_dropped_cells", len(dropped),
                           f"batch {n} ({date}) cells {dropped} dropped ({why}; original cleaning)")
                missing = [k for k in names if k not in batches[n]]
                if missing:
                    report.add(UNMATCHED_RULE, len(missing), f"cleaning rule 'drop {missing} ({why})' matched "
                               f"nothing: no such cells in batch {n} ({date})")
                drops[n] = set(dropped)
        for label, batch, names in (("2017-05-12", b1, [c1 for _, c1, _ in CARRY_OVER]),
                                    ("2017-06-30", b2, [c2 for c2, _, _ in CARRY_OVER])):
            if batch is not None:
                missing = [k for k in names if k not in batch]
                if missing:
                    report.add(UNMATCHED_RULE, len(missing), f"cleaning rule 'merge carry-over cells' matched "
                               f"nothing for {missing}: no such cells in the {label} batch")
    bad_cycles = {(n, cell): c for n, d in dates.items() for cell, c in KNOWN_BAD_CYCLES.get(d, [])}
    if cleaning:
        for (n, cell), c in bad_cycles.items():
            if cell not in batches[n]:
                report.add(UNMATCHED_RULE, 1, f"cleaning rule 'exclude corrupt cycle {c} of {cell}' matched "
                           f"nothing: no cell {cell} in batch {n} ({dates[n]})")
    for number in sorted(batches):
        batch, date = batches[number], dates[number]
        source = getattr(batch, "source", f"batch {number}")
        for key in batch:
            if key in drops.get(number, ()):
                continue
            if cleaning and date == "2017-06-30" and key in carry_from:
                c1, _ = carry_from[key]
                if b1 is None or c1 not in b1:
                    report.add("severson_carry_over_dropped", 1,
                               f"batch-2 carry-over cell {key} dropped: batch 1 (cell {c1}) not in the input")
                continue
            cell = batch[key]
            if cleaning and date == "2017-05-12" and key in carry_into:
                c2, offset = carry_into[key]
                if b2 is not None and c2 in b2:
                    cell = _merge_carry_over(cell, b2[c2], offset)
                    report.add("severson_merged_cells", 1,
                               f"batch-2 carry-over cell {c2} merged into {key} (cycle_life +{offset})")
                else:
                    cell = {**cell, "cycle_life": _life_array(cell) + offset}
                    report.add("severson_carry_over_missing", 1,
                               f"{key}: batch 2 (cell {c2}) not in the input; cycle_life +{offset} applied, "
                               "its later cycles are absent")
            if cleaning and (number, key) in bad_cycles and isinstance(cell, Mapping) and "cycles" in cell:
                cell = _exclude_bad_cycles(key, cell, [bad_cycles[(number, key)]], source, report, repairs, strict)
            yield number, key, cell


# ---------------------------------------------------------------------------------------------- rows
def cycle_life_of(cell: dict) -> float:
    """The cell's cycle life, NaN when empty (a MATLAB empty array, an empty pickle array) or not a number."""
    arr = np.asarray(cell.get("cycle_life", np.nan), dtype=np.float64).ravel()
    return float(arr[0]) if arr.size and np.isfinite(arr[0]) else float("nan")


def cell_to_table(key: str, cell: dict, batch_number: int, source: str, report: ValidationReport,
                  include_ir: bool = False) -> pa.Table:
    """The unified rows of one cell (canonical columns, the metadata columns, ``internal_resistance`` last if
    asked). An empty cycle life is null and reported; a charge policy that fits no format leaves the quartiles
    null and is reported."""
    if not isinstance(cell, Mapping) or "cycles" not in cell:
        raise InputDataError(f"{source}: cell {key}: no 'cycles' entry")
    policy = cell.get("charge_policy", "")
    try:
        quartiles: list[float | None] = list(parse_charge_policy(policy))
    except InputDataError as e:
        report.add("unparsed_charge_policy", 1, f"cell {key}: {e}; charge_policy_Q1..Q4 left empty")
        quartiles = [None] * 4
    life = cycle_life_of(cell)
    if not np.isfinite(life):
        report.add("missing_cycle_life", 1, f"cell {key}: cycle_life empty or not a number in the source: left "
                   "null (never 0)")
    ir = np.asarray(cell.get("summary", {}).get("IR", np.empty(0)), dtype=np.float64).ravel()

    cols: dict[str, list[np.ndarray]] = {f: [] for f in ROW_FIELDS}
    cycle_numbers, dqdv, dqdv_valid, ir_rows = [], [], [], []
    for ckey, cyc in cell["cycles"].items():
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
            ir_rows.append(np.full(n, ir[number] if number < ir.size else np.nan))

    def cat(parts: list[np.ndarray], dtype=np.float64) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)

    n_rows = sum(a.size for a in cols["I"])
    life_arr = pa.nulls(n_rows, pa.int64()) if not np.isfinite(life) else pa.array(
        np.full(n_rows, int(life), dtype=np.int64))
    data = {
        "cell_key": constant(key, n_rows, pa.string()),
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
        data[f"charge_policy_Q{i}"] = constant(q, n_rows, pa.float64())
    assert list(data) == UNIFIED_COLUMNS
    data.update(metadata_arrays(n_rows, MATR_METADATA))
    if include_ir:
        ir_values = cat(ir_rows)
        data[IR_COLUMN] = pa.array(ir_values, mask=~np.isfinite(ir_values))
    return pa.table(data)


def open_batches(files: list[str], local_paths: list[str], fmt: str,
                 loaded: dict[str, object] | None = None) -> dict[int, Mapping]:
    """Batch number -> batch source, each identified by :func:`identify` (``loaded``: pickles already read,
    by URI)."""
    out: dict[int, Mapping] = {}
    for uri, local in zip(files, local_paths):
        if fmt == "severson-mat":
            batch: Mapping = MatBatch(local, source=uri)
        else:
            batch = PickleBatch(local, source=uri, data=(loaded or {}).get(uri))
        number = batch.identity.batch
        if number in out:
            raise InputDataError(f"{uri}: a second file for batch {number} "
                                 f"(the other is {getattr(out[number], 'source', '?')})")
        out[number] = batch
    return out


__all__ = [
    "BATCH1_DROP", "BATCH3_DROP", "CARRY_OVER", "KNOWN_BAD_CYCLES", "MATR_RELEASES", "MatBatch", "PickleBatch",
    "clean_batches", "cell_to_table", "open_batches", "batch_number_from_name", "identify", "check_not_legacy",
    "cycle_life_of",
]
