"""Print the requirements of ``pyproject.toml`` extras, one per line.

The image build installs the dependencies from this list before copying the
source tree, so editing code does not invalidate the (slow, large) dependency
layer; only a change to ``pyproject.toml`` does.

Example::

    python3 docker/extras_requirements.py pyproject.toml serve > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib


def extras_requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """Base dependencies plus those of ``extras``, expanding ``histoedge[...]`` self-references."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    name = project["name"]
    self_reference = re.compile(rf"^{re.escape(name)}\[(?P<extras>[^\]]+)\]")
    requirements: list[str] = list(project.get("dependencies", []))
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            sys.exit(f"unknown extra {extra!r}; pyproject.toml defines {sorted(optional)}")
        seen.add(extra)
        for requirement in optional[extra]:
            match = self_reference.match(requirement)
            if match:
                pending.extend(e.strip() for e in match["extras"].split(","))
            else:
                requirements.append(requirement)
    return list(dict.fromkeys(requirements))


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.exit("usage: extras_requirements.py PYPROJECT EXTRA[,EXTRA...] ...")
    with open(argv[0], "rb") as handle:
        pyproject = tomllib.load(handle)
    extras = [e for arg in argv[1:] for e in arg.split(",") if e]
    print("\n".join(extras_requirements(pyproject, extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
