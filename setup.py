"""The packages: four folders and every package folder below them, found by setuptools (the rest of the
metadata is pyproject.toml). cli/, components/ and pipelines/ install as msenc_cli, msenc_components and
msenc_pipelines: names that cannot clash in site-packages, which ``[tool.setuptools.packages.find]`` cannot
give them (it names a package after its folder)."""

from setuptools import find_packages, setup

ROOTS = {"msenc_lib": "msenc_lib", "msenc_cli": "cli", "msenc_components": "components", "msenc_pipelines": "pipelines"}

setup(
    package_dir=ROOTS,
    packages=[f"{name}.{sub}" if sub else name for name, root in ROOTS.items() for sub in ("", *find_packages(root))],
)
