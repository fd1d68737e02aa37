"""Print `name==floor` for every `name>=floor` requirement of pyproject.toml's [project]
dependencies (extras dropped): the constraints of the minimum-versions CI step. torch is left
out: that step keeps the local CPU wheel."""

from __future__ import annotations

import re
import sys
import tomllib

REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?>=([^,;\s]+)")


def floors(pyproject: dict) -> list[str]:
    pins = []
    for requirement in pyproject["project"]["dependencies"]:
        match = REQUIREMENT.match(requirement.replace(" ", ""))
        if match is None:
            raise SystemExit(f"error: {requirement!r} has no >= floor")
        if match[1] != "torch":
            pins.append(f"{match[1]}=={match[3]}")
    return pins


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as fh:
        sys.stdout.write("\n".join(floors(tomllib.load(fh))) + "\n")
