"""The layering of docs/architecture.md, checked by import-linter's contracts in
pyproject.toml: they hold for the code as it is, and they catch a socket-layer module
that imports a feature."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_hold() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def test_a_socket_layer_module_importing_a_feature_breaks_the_contracts(tmp_path: Path) -> None:
    for package in ("gateway", "storage", "protocol"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    hub = tmp_path / "gateway" / "realtime" / "hub.py"
    hub.write_text(hub.read_text() + "\nimport gateway.chat.service  # noqa: E402\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "gateway.realtime is not allowed to import gateway.chat" in result.stdout
    assert "gateway.realtime.hub -> gateway.chat.service" in result.stdout
    assert "No cycles are allowed in gateway" in result.stdout
