"""requirements.lock pins every dependency pyproject.toml names, at a version its range
allows: a dependency added or a range moved without `just lock` fails here, not on the
next fresh install."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parent.parent


def locked() -> dict[str, set[str]]:
    pins: dict[str, set[str]] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9._-]+)==([^\s;]+)", line)
        if found:
            pins.setdefault(canonicalize_name(found[1]), set()).add(found[2])
    return pins


def test_every_dependency_is_locked_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += extra
    pins = locked()
    stale = []
    for text in wanted:
        requirement = Requirement(text)
        versions = pins.get(canonicalize_name(requirement.name), set())
        if not versions or not all(requirement.specifier.contains(v) for v in versions):
            stale.append(f"{text} (locked: {sorted(versions) or 'nothing'})")
    assert not stale, "requirements.lock is stale, run `just lock`: " + "; ".join(stale)
