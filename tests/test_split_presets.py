"""Split presets: the published cell lists, id matching across raw/BatteryML forms, rest rules, errors."""

import pytest

from msenc_lib.errors import ConfigError, InputDataError
from msenc_lib.split_presets import canonical_id, dataset_of, get_preset, preset_names, resolve_preset


def _raw(ids):
    return {i.removeprefix("MATR_"): None for i in ids}


def test_every_preset_cites_its_source_and_has_cells():
    names = preset_names()
    for name in ("severson", "matr1", "matr2", "clo", "hust", "snl", "cruh", "crush", "mix", "batterylife-matr",
                 "batterylife-li-ion"):
        assert name in names
    for name in names:
        p = get_preset(name)
        assert p.citation and p.description
        assert any(p.listed.values()) or p.rest


def test_matr_presets_match_batteryml_sizes_and_severson():
    sev = get_preset("severson").listed
    m1, m2 = get_preset("matr1").listed, get_preset("matr2").listed
    assert (len(m1["train"]), len(m1["test"])) == (41, 42)  # Severson primary test without b2c1
    assert (len(m2["train"]), len(m2["test"])) == (41, 40)
    assert m1["train"] == sev["train"] and m2["test"] == sev["secondary_test"]
    assert set(sev["test"]) - set(m1["test"]) == {"MATR_b2c1"}


def test_raw_and_batteryml_ids_resolve_the_same():
    ids = [c for v in get_preset("matr1").listed.values() for c in v]
    raw = resolve_preset("matr1", _raw(ids))
    prefixed = resolve_preset("matr1", {f"{i}.pkl": None for i in ids})
    assert raw.subsets["train"][0] == "b1c1" and prefixed.subsets["train"][0] == "MATR_b1c1.pkl"
    assert [canonical_id(c) for c in raw.subsets["test"]] == [canonical_id(c) for c in prefixed.subsets["test"]]
    assert raw.subsets["validation"] == [] and not raw.missing
    assert canonical_id("b3c45.csv") == "MATR_b3c45" and dataset_of("HUST_1-1") == "HUST"
    assert dataset_of("x", "ul_pur") == "UL-PUR"


def test_missing_cells_are_an_error_naming_them_unless_allowed():
    ids = [c for v in get_preset("matr2").listed.values() for c in v]
    cells = _raw(ids[:-1])
    with pytest.raises(InputDataError, match=ids[-1].removeprefix("MATR_")):
        resolve_preset("matr2", cells)
    warned = []
    split = resolve_preset("matr2", cells, allow_missing=True, warn=warned.append)
    assert len(split.subsets["test"]) == 39 and warned and "1 test cell" in warned[0]
    with pytest.raises(InputDataError, match="none of its train"):
        resolve_preset("matr1", {"b9c9": None}, allow_missing=True)
    with pytest.raises(ConfigError, match="unknown split preset"):
        get_preset("nope")


def test_rest_rule_takes_only_the_presets_datasets():
    p = get_preset("hust")
    cells = {c: None for c in p.listed["train"]} | {"HUST_99-9": None, "b1c0": None, "x": "HUST"}
    split = p.resolve(cells)
    assert set(split.subsets["test"]) == {"HUST_99-9", "x"} and split.outside == ["b1c0"]


def test_batterylife_test_cells_carry_seen_unseen_groups():
    p = get_preset("batterylife-matr")
    assert set(p.groups) == {"test_seen", "test_unseen"}
    assert set(p.groups["test_seen"]) | set(p.groups["test_unseen"]) == set(p.listed["test"])
    ids = [c for v in p.listed.values() for c in v]
    split = p.resolve({c: None for c in ids})
    assert len(split.groups["test_seen"]) == 25 and len(split.groups["test_unseen"]) == 8
    assert len(split.subsets["validation"]) == 34
