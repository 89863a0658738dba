from typing import Literal

import pytest
from pydantic import Field

from msenc_lib.config import StageConfig
from msenc_lib.errors import ConfigError


class DemoConfig(StageConfig):
    stage = "demo"
    seed: int = Field(0, description="random seed")
    ratio: float = 0.8
    mode: Literal["a", "b"] = "a"
    columns: list[str] = ["x", "y"]
    flag: bool = True


def test_load_yaml_and_json_files(tmp_path):
    (tmp_path / "c.yaml").write_text("seed: 3\ncolumns: [a, b, c]\n")
    (tmp_path / "c.json").write_text('{"ratio": 0.5, "mode": "b"}')
    assert DemoConfig.load(tmp_path / "c.yaml").model_dump() == {
        "seed": 3, "ratio": 0.8, "mode": "a", "columns": ["a", "b", "c"], "flag": True}
    cfg = DemoConfig.load(tmp_path / "c.json")
    assert (cfg.ratio, cfg.mode) == (0.5, "b")


def test_precedence_file_env_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("seed: 3\nratio: 0.1\nflag: true\n")
    env = {"MSENC_DEMO__SEED": "7", "MSENC_DEMO__FLAG": "false", "OTHER": "1"}
    cfg = DemoConfig.load(tmp_path / "c.yaml", overrides={"ratio": 0.2}, environ=env)
    assert (cfg.seed, cfg.ratio, cfg.flag) == (7, 0.2, False)


def test_errors_name_the_field_and_source(tmp_path):
    (tmp_path / "bad.yaml").write_text("seed: many\nmode: c\n")
    with pytest.raises(ConfigError) as e:
        DemoConfig.load(tmp_path / "bad.yaml")
    msg = str(e.value)
    assert "bad.yaml" in msg and "field 'seed'" in msg and "field 'mode'" in msg and "'many'" in msg


def test_unknown_field_and_bad_documents(tmp_path):
    with pytest.raises(ConfigError, match="field 'sede'"):
        DemoConfig.load({"sede": 1})
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        DemoConfig.load(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="not found"):
        DemoConfig.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="MSENC_DEMO__NOPE"):
        DemoConfig.load(environ={"MSENC_DEMO__NOPE": "1"})


def test_save_roundtrip(tmp_path):
    cfg = DemoConfig(seed=5, columns=["q"])
    for name in ("c.yaml", "c.json"):
        cfg.save(tmp_path / name)
        assert DemoConfig.load(tmp_path / name) == cfg


class ListConfig(StageConfig):
    stage = "lists"
    names: list[str] = ["a"]
    cutoffs: list[float] | None = None


def test_list_fields_accept_comma_strings_from_any_source():
    assert ListConfig.load({"names": "x, y,,z", "cutoffs": "100,2.5"}).model_dump() == {
        "names": ["x", "y", "z"], "cutoffs": [100.0, 2.5]}
    assert ListConfig.load({"names": "", "cutoffs": ""}).model_dump() == {"names": [], "cutoffs": None}
    assert ListConfig.load(environ={"MSENC_LISTS__NAMES": "p,q"}).names == ["p", "q"]
    with pytest.raises(ConfigError, match="field 'cutoffs.0'"):
        ListConfig.load({"cutoffs": "ten"})
