"""The field's standard train/test splits as presets, resolved against the cells a dataset has.

Three families, each citing its source (``presets.json`` holds the cell lists, extracted verbatim by parsing
the named files at the named commits; ids are the sources' file stems):

* ``severson`` — Severson et al., "Data-driven prediction of battery cycle life before capacity degradation",
  Nature Energy 4, 383 (2019); split rule of rdbraatz/data-driven-prediction-of-battery-cycle-life-before-
  capacity-degradation ``Load Data.ipynb``: of the 124 cleaned cells, primary test = even positions of the
  84 batch-1/2 cells plus the last one, train = the odd ones, secondary test = the 40 batch-3 cells.
* BatteryML (microsoft/BatteryML, ``batteryml/train_test_split/*.py`` with the data folders, early window
  and end-of-life threshold of ``configs/baselines/*/<split>.yaml``): ``matr1`` (Severson's train /
  primary test without the outlier b2c1), ``matr2`` (train / secondary test), ``clo`` (108/70 listed cells
  of the four MATR batches), ``hust`` (55 listed train cells, every other HUST cell is test), ``cruh``,
  ``crush``, ``snl``, ``mix`` (the ``MIX100`` splitter; listed test cells, every other cell of the
  preset's datasets is train). BatteryML has no validation subset.
* BatteryLife (Ruifeng-Tan/BatteryLife, ``data_provider/data_split_recorder.py``, class ``split_recorder``):
  ``batterylife-<dataset>`` with train / validation / test, e.g. ``batterylife-matr``, ``batterylife-hust``,
  ``batterylife-li-ion`` (the paper's Li-ion benchmark, ``MIX_large`` in the code). Every test cell carries
  the "seen" / "unseen" aging-condition label of ``dataset/seen_unseen_labels/cal_for_test*.json``: whether
  a train or validation cell shares its protocol. They become the evaluation groups ``test_seen`` and
  ``test_unseen``.

Matching: a data cell key matches a preset id when equal, or when it equals the id without its dataset
prefix for MATR cells (the raw Severson/MATR key ``b1c0`` is BatteryML's ``MATR_b1c0``); a trailing
``.pkl`` or ``.csv`` is ignored on both sides. The "rest" rules count only cells of the preset's datasets:
a cell's dataset is its ``dataset`` column when the data has one, else its key's prefix before the first
``_`` (``b<i>c<j>`` keys are MATR).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable, Mapping

from msenc_lib.errors import ConfigError, InputDataError

SEVERSON_CITATION = ("Severson et al., Nature Energy 4, 383 (2019); split rule of rdbraatz/data-driven-prediction-"
                     "of-battery-cycle-life-before-capacity-degradation, Load Data.ipynb")
_MATR_RAW = re.compile(r"^b\d+c\d+$")
# BatteryLife's code names -> preset suffixes (the paper calls MIX_large "Li-ion")
_BATTERYLIFE_NAMES = {"MIX_large": "li-ion", "ZNcoin": "zn-ion", "ZN_42": "zn-ion-42", "ZN_2024": "zn-ion-2024",
                      "NAion_2021": "na-ion", "NAion_42": "na-ion-42", "NAion_2024": "na-ion-2024", "MIX_all": "mix-all"}


@dataclass
class ResolvedSplit:
    """A preset applied to the cells a dataset has (data cell keys)."""

    preset: str
    subsets: dict[str, list[str]]  # train / validation / test (+ secondary_test), in that order
    groups: dict[str, list[str]] = field(default_factory=dict)  # evaluation-only subsets of a subset
    missing: dict[str, list[str]] = field(default_factory=dict)  # preset ids the data lacks, per subset
    outside: list[str] = field(default_factory=list)  # data cells the preset does not place

    def split_config(self) -> dict[str, list[str]]:
        """The ``split_cfg.json`` document (``<cell>.csv`` names)."""
        return {name: [f"{c}.csv" for c in cells] for name, cells in self.subsets.items()}


@dataclass(frozen=True)
class Preset:
    name: str
    family: str  # severson | batteryml | batterylife
    citation: str
    description: str
    listed: Mapping[str, tuple[str, ...]]  # subset -> preset ids
    rest: str | None = None  # subset that receives every other cell of ``datasets`` (BatteryML's rules)
    datasets: tuple[str, ...] = ()  # datasets the rest rule draws from (normalised names)
    early_cycles: int | None = None  # the source's early-cycle window for cycle life
    eol_soh: float | None = None  # the source's end-of-life threshold, as a share of nominal capacity
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # evaluation-only groups (preset ids)

    def resolve(self, cells: Mapping[str, str | None]) -> ResolvedSplit:
        """Apply the preset to ``cells`` (data cell key -> its ``dataset`` value, or None when unknown)."""
        by_id: dict[str, str] = {}
        for key in cells:
            by_id.setdefault(canonical_id(key), key)
        subsets: dict[str, list[str]] = {}
        missing: dict[str, list[str]] = {}
        placed: set[str] = set()
        for subset, ids in self.listed.items():
            found = [by_id[i] for i in ids if i in by_id]
            subsets[subset] = found
            placed.update(found)
            lost = [i for i in ids if i not in by_id]
            if lost:
                missing[subset] = lost
        if self.rest is not None:
            extra = [k for k in cells if k not in placed and dataset_of(k, cells[k]) in self.datasets]
            subsets[self.rest] = sorted(set(subsets.get(self.rest, [])) | set(extra), key=_natural)
            placed.update(extra)
        order = ["train", "validation", "test"]
        subsets = {s: subsets.get(s, []) for s in order} | {s: v for s, v in subsets.items() if s not in order}
        groups = {g: [by_id[i] for i in ids if i in by_id] for g, ids in self.groups.items()}
        return ResolvedSplit(preset=self.name, subsets=subsets, groups={g: v for g, v in groups.items() if v},
                             missing=missing, outside=sorted((k for k in cells if k not in placed), key=_natural))


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _strip(key: str) -> str:
    for suffix in (".pkl", ".csv"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def canonical_id(key: str) -> str:
    """The preset id a data cell key stands for (``b1c0`` -> ``MATR_b1c0``; ``HUST_1-1.pkl`` -> ``HUST_1-1``)."""
    key = _strip(str(key))
    return f"MATR_{key}" if _MATR_RAW.match(key) else key


def normalise_dataset(name: str) -> str:
    return str(name).strip().upper().replace("_", "-")


def dataset_of(key: str, dataset: str | None = None) -> str:
    """A cell's dataset: its ``dataset`` value when known, else its key's prefix (``b1c0``: MATR)."""
    if dataset is not None and str(dataset).strip() and str(dataset).lower() != "nan":
        return normalise_dataset(dataset)
    key = _strip(str(key))
    if _MATR_RAW.match(key):
        return "MATR"
    return normalise_dataset(key.split("_", 1)[0]) if "_" in key else ""


# --------------------------------------------------------------------------------------------- the presets
@functools.lru_cache(maxsize=1)
def _source() -> dict:
    return json.loads(resources.files(__package__).joinpath("presets.json").read_text(encoding="utf-8"))


def _severson() -> Preset:
    b1 = [f"b1c{i}" for i in range(46) if i not in {8, 10, 12, 13, 22}]
    b2 = [f"b2c{i}" for i in range(48) if i not in {7, 8, 9, 15, 16}]
    b3 = [f"b3c{i}" for i in range(46) if i not in {2, 23, 32, 37, 42, 43}]
    cells = [f"MATR_{c}" for c in b1 + b2 + b3]
    n12 = len(b1) + len(b2)
    test = tuple(cells[i] for i in [*range(0, n12, 2), n12 - 1])
    return Preset(
        name="severson", family="severson", citation=SEVERSON_CITATION,
        description="Severson's 124 cells: primary train (41) -> train, primary test (43) -> test, secondary test "
                    "(40, batch 3) -> secondary_test; validation empty. Group test_without_b2c1: the primary test "
                    "without its short-lived outlier, as BatteryML's MATR-1",
        listed={"train": tuple(cells[i] for i in range(1, n12 - 1, 2)), "validation": (), "test": test,
                "secondary_test": tuple(cells[n12:])},
        early_cycles=100, eol_soh=0.8, groups={"test_without_b2c1": tuple(c for c in test if c != "MATR_b2c1")})


def _batteryml(name: str, spec: dict, repo: dict) -> Preset:
    listed = {s: tuple(spec[s]) for s in ("train", "test") if s in spec}
    rest = {"listed": None, "rest_is_test": "test", "rest_is_train": "train"}[spec["rule"]]
    what = {"listed": f"{len(spec.get('train', []))} listed train / {len(spec.get('test', []))} listed test cells",
            "rest_is_test": f"{len(spec.get('train', []))} listed train cells, every other cell of "
                            f"{'/'.join(spec['datasets'])} is test",
            "rest_is_train": f"{len(spec.get('test', []))} listed test cells, every other cell of "
                             f"{'/'.join(spec['datasets'])} is train"}[spec["rule"]]
    return Preset(
        name=name, family="batteryml",
        citation=f"BatteryML ({repo['repository']} @ {repo['commit'][:12]}): {spec['source']} "
                 f"({spec['class']}), {spec['config']}",
        description=f"BatteryML's {name.upper()} split: {what}; no validation subset; BatteryML predicts cycle "
                    f"life from the first {spec['early_cycles']} cycles, end of life at {spec['eol_soh']:g} x nominal",
        listed=listed, rest=rest, datasets=tuple(normalise_dataset(d) for d in spec["datasets"]),
        early_cycles=int(spec["early_cycles"]), eol_soh=float(spec["eol_soh"]))


def _batterylife(code: str, spec: dict, repo: dict) -> Preset:
    name = "batterylife-" + _BATTERYLIFE_NAMES.get(code, code.lower().replace("_", "-"))
    labels = spec["test_labels"]
    groups = {f"test_{kind}": tuple(c for c in spec["test"] if labels.get(c) == kind) for kind in ("seen", "unseen")}
    return Preset(
        name=name, family="batterylife",
        citation=f"BatteryLife ({repo['repository']} @ {repo['commit'][:12]}): {repo['source']}, {code}_*_files; "
                 f"seen/unseen labels: dataset/seen_unseen_labels/{', '.join(spec['labels_files']) or '-'}",
        description=f"BatteryLife's {code} split: {len(spec['train'])} train / {len(spec['validation'])} validation / "
                    f"{len(spec['test'])} test cells; test cells labelled seen ({len(groups['test_seen'])}) or unseen "
                    f"({len(groups['test_unseen'])}) aging conditions; BatteryLife predicts from the first 100 cycles, "
                    "end of life at 0.8 x nominal (CALB 0.9)",
        listed={"train": tuple(spec["train"]), "validation": tuple(spec["validation"]), "test": tuple(spec["test"])},
        early_cycles=100, eol_soh=0.9 if code.startswith("CALB") else 0.8, groups=groups)


@functools.lru_cache(maxsize=1)
def presets() -> dict[str, Preset]:
    """Every preset by name: severson, the BatteryML ones, then the BatteryLife ones."""
    src = _source()
    out = {"severson": _severson()}
    bml = src["batteryml"]
    for name, spec in bml["splits"].items():
        out[name] = _batteryml(name, spec, bml)
    bl = src["batterylife"]
    for code, spec in bl["splits"].items():
        p = _batterylife(code, spec, bl)
        out[p.name] = p
    return out


def preset_names() -> list[str]:
    return list(presets())


def get_preset(name: str) -> Preset:
    table = presets()
    if name not in table:
        raise ConfigError(f"unknown split preset {name!r}; presets: {', '.join(table)}")
    return table[name]


def resolve_preset(name: str, cells: Mapping[str, str | None], *, allow_missing: bool = False,
                   warn: Callable[[str], None] | None = None) -> ResolvedSplit:
    """``get_preset(name).resolve(cells)``, checked: a listed cell the data lacks is an error naming it unless
    ``allow_missing`` (then ``warn`` is told); an empty train or test subset is always an error."""
    preset = get_preset(name)
    split = preset.resolve(cells)
    lost = [c for v in split.missing.values() for c in v]
    if lost and not allow_missing:
        raise InputDataError(
            f"split preset {name!r} names {len(lost)} cell(s) the data does not have: {lost[:20]}"
            f"{' ...' if len(lost) > 20 else ''} (the data has {len(cells)} cells, e.g. {sorted(cells)[:5]}; "
            "allow_missing_cells leaves them out instead)")
    for subset in ("train", "test"):
        if subset in split.subsets and not split.subsets[subset]:
            wanted = (f"{len(preset.listed[subset])} listed" if preset.listed.get(subset)
                      else f"every {'/'.join(preset.datasets)} cell")
            raise InputDataError(f"split preset {name!r}: none of its {subset} cells ({wanted}) is in the data "
                                 f"(data cells e.g. {sorted(cells)[:5]})")
    if warn is not None:
        for subset, missing in split.missing.items():
            warn(f"split preset {name!r}: {len(missing)} {subset} cell(s) absent from the data and left out, e.g. "
                 f"{missing[:5]}")
    return split


__all__ = ["Preset", "ResolvedSplit", "canonical_id", "dataset_of", "get_preset", "preset_names", "presets",
           "resolve_preset", "SEVERSON_CITATION"]
