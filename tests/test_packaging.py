"""The wheel (and so the container image) must contain every package folder of the repo."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    for name, folder in tool["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "tests" in rel.parts:
                continue
            package = ".".join([name, *rel.parts])
            assert package in listed, f"{package} ({init.parent}) is missing from [tool.setuptools] packages"
