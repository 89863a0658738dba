import argparse
import subprocess
import sys
from typing import Literal

import pytest
from pydantic import Field

from msenc_cli.options import add_config_options, config_from_args
from msenc_lib.config import StageConfig


class ToyConfig(StageConfig):
    stage = "toy"
    seed: int = Field(0, description="random seed")
    exclude_features: list[str] = Field(default_factory=list, description="columns to leave out")
    time_cutoff: list[float] | None = None
    smooth: bool = True
    mode: Literal["fast", "slow"] = "fast"


def _parse(argv):
    p = argparse.ArgumentParser()
    add_config_options(p, ToyConfig, aliases={"exclude_features": ["--exclude"]})
    return config_from_args(ToyConfig, p.parse_args(argv))


def test_flags_from_fields(tmp_path):
    assert _parse([]) == ToyConfig()
    cfg = _parse(["--seed", "4", "--exclude", "a,b", "--time-cutoff", "100,2.5", "--smooth", "false",
                  "--mode", "slow"])
    assert cfg.model_dump() == {"seed": 4, "exclude_features": ["a", "b"], "time_cutoff": [100.0, 2.5],
                                "smooth": False, "mode": "slow"}
    assert _parse(["--no-smooth"]).smooth is False and _parse(["--smooth"]).smooth is True


def test_flags_override_config_file_only_when_given(tmp_path):
    (tmp_path / "c.yaml").write_text("seed: 9\nsmooth: false\n")
    assert _parse(["--config", str(tmp_path / "c.yaml")]).model_dump()["smooth"] is False
    assert _parse(["--config", str(tmp_path / "c.yaml"), "--seed", "1"]).seed == 1


def test_bad_flag_values_exit_with_usage_error(capsys):
    with pytest.raises(SystemExit):
        _parse(["--mode", "medium"])
    with pytest.raises(SystemExit):
        _parse(["--smooth", "maybe"])
    assert "maybe" in capsys.readouterr().err


def test_entry_point_help_and_version():
    out = subprocess.run([sys.executable, "-m", "msenc_cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: msenc" in out.stdout
    out = subprocess.run([sys.executable, "-m", "msenc_cli", "--version"], capture_output=True, text=True)
    assert out.stdout.startswith("msenc ")
