"""Arrows point one way: gateway -> storage -> protocol (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import REPO

IO = {"asyncio", "socket", "ssl", "selectors", "subprocess", "threading"}
SERVICES = {"starlette", "uvicorn", "websockets", "redis", "asyncpg", "pgvector", "openai", "httpx"}
FORBIDDEN = {
    "protocol": IO | SERVICES | {"gateway", "storage", "pydantic_settings", "sentry_sdk"},
    "storage": {"gateway", "starlette", "uvicorn", "websockets", "redis", "openai"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    for path in files:
        bad = imported_modules(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"
