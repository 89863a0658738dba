"""The layers point one way (design.md §1): pipelines -> components -> stages (msenc_lib), CLI -> stages.
Every import statement of every module is read, also those inside functions."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> the installed package name, and the packages that folder must never import
RULES = {
    "msenc_lib": ("msenc_lib", {"msenc_cli", "msenc_pipelines", "msenc_components"}),
    "components": ("msenc_components", {"msenc_cli", "msenc_pipelines"}),
    "pipelines": ("msenc_pipelines", {"msenc_cli"}),
}


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules one file imports (relative imports resolved against ``package``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
    return names


def modules(folder: str, installed: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT / folder).with_suffix("")
        package = ".".join([installed, *rel.parent.parts])
        yield path, package


@pytest.mark.parametrize("folder", sorted(RULES))
def test_no_module_imports_a_layer_above_it(folder):
    installed, forbidden = RULES[folder]
    found = []
    for path, package in modules(folder, installed):
        for name in imported_modules(path, package):
            if name.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not found, found


def test_the_check_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from msenc_cli.main import main\n    from .stage import run\n")
    assert imported_modules(probe, "msenc_lib.train") == {"msenc_cli.main", "msenc_lib.train.stage"}
