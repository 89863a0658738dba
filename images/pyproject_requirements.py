"""Print the requirements of pyproject.toml (one per line) so an image can install its dependencies
in a layer of their own, before the package source is copied (code changes then keep that layer).

Usage: python pyproject_requirements.py pyproject.toml [--extra NAME ...] [--skip NAME ...]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib


def requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def requirements(pyproject: str, extras: list[str], skip: list[str]) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"{pyproject}: no optional-dependencies group '{extra}' (have: {sorted(optional)})")
        reqs += optional[extra]
    skipped = {s.lower().replace("_", "-") for s in skip}
    return [r for r in reqs if requirement_name(r) not in skipped]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pyproject")
    ap.add_argument("--extra", action="append", default=[], help="optional-dependencies group to include")
    ap.add_argument("--skip", action="append", default=[], help="requirement name to leave out (e.g. torch)")
    args = ap.parse_args(argv)
    print("\n".join(requirements(args.pyproject, args.extra, args.skip)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
