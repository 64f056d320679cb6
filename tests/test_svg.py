"""SVG path data validation (pure)."""

from __future__ import annotations

import pytest

from protocol.svg import svg_path_problem


@pytest.mark.parametrize(
    "path",
    [
        "M10 10 L20 20 Z",
        "m 10,10 l 5,5 h 3 v -2 z",
        "M0,0 C1,1 2,2 3,3 S4,4 5,5 Q6,6 7,7 T8,8 A5 5 0 0 1 9 9 Z",
        "M1e2-3.5.5.5L0 0",
        "M 100 200 L 300 400 L 500 600 Z M 1 1 L 2 2",
    ],
)
def test_valid_path_data_is_accepted(path: str) -> None:
    assert svg_path_problem(path) is None


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("", "empty"),
        ("L10 10", "must start with a moveto"),
        ("10 10", "must start with a moveto"),
        ("M10", "groups of 2"),
        ("M10 10 C1 2 3", "groups of 6"),
        ("M10 10 Z 5", "after a closepath"),
        ("M10 10 <script>", "unexpected character"),
        ("M" + " 1" * 3000, "longer than 4096"),
        ("M10 10 L", "has no numbers"),
    ],
)
def test_invalid_path_data_is_named(path: str, problem: str) -> None:
    result = svg_path_problem(path)
    assert result is not None and problem in result
    assert "script" not in result  # never echoes the input
