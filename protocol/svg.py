"""SVG path data (the body-map region a patient pointed at), checked against the grammar
of the SVG `d` attribute: commands M L H V C S Q T A Z (either case) with their numbers."""

from __future__ import annotations

import re

MAX_SVG_PATH_CHARS = 4096
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_ARGS = {"m": 2, "l": 2, "h": 1, "v": 1, "c": 6, "s": 4, "q": 4, "t": 2, "a": 7, "z": 0}
_TOKEN = re.compile(rf"\s*(?:([MmLlHhVvCcSsQqTtAaZz])|({_NUMBER}))\s*,?")


def svg_path_problem(path: str) -> str | None:
    """None when `path` is valid path data, else what is wrong (without echoing it)."""
    if len(path) > MAX_SVG_PATH_CHARS:
        return f"longer than {MAX_SVG_PATH_CHARS} characters"
    command: str | None = None
    numbers = 0
    position = 0
    seen_command = False
    while position < len(path):
        match = _TOKEN.match(path, position)
        if match is None or match.end() == position:
            return f"unexpected character at position {position}"
        position = match.end()
        letter, number = match.groups()
        if letter is not None:
            problem = _incomplete(command, numbers) if command is not None else None
            if problem is not None:
                return problem
            if not seen_command and letter not in "Mm":
                return "path data must start with a moveto (M or m)"
            command, numbers, seen_command = letter.lower(), 0, True
        else:
            if command is None:
                return "path data must start with a moveto (M or m)"
            if command == "z":
                return "numbers after a closepath (Z)"
            numbers += 1
    if command is None:
        return "empty path data"
    return _incomplete(command, numbers)


def _incomplete(command: str, numbers: int) -> str | None:
    """Why the numbers given to `command` do not make whole argument groups, if so."""
    per_group = _ARGS[command]
    if per_group and numbers == 0:
        return f"command {command!r} has no numbers"
    if per_group and numbers % per_group:
        return f"command {command!r} needs numbers in groups of {per_group}"
    return None


def check_svg_path(path: str) -> str:
    """For pydantic: the path itself when valid, else ValueError saying what is wrong."""
    problem = svg_path_problem(path)
    if problem is not None:
        raise ValueError(f"not SVG path data: {problem}")
    return path
