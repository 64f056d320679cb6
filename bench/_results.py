"""Benchmark figures as JSON beside the printed text, for bench/plot.py to draw:
docs/benchmarks/data/<bench>.json (BENCH_RESULTS=<dir> writes elsewhere). Each file is
the latest run: its date, the machine, and the figures, raw samples included."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent.parent
DEFAULT_DIR = ROOT / "docs" / "benchmarks" / "data"


def results_dir() -> Path:
    return Path(os.environ.get("BENCH_RESULTS") or DEFAULT_DIR)


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match[1] if match else "unknown CPU"


def save(bench: str, figures: dict[str, Any]) -> Path:
    directory = results_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{bench}.json"
    document = {
        "bench": bench,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "figures": figures,
    }
    path.write_text(json.dumps(document, indent=1) + "\n")
    print(f"figures written to {path}", flush=True)
    return path


def rounded(values: list[float], digits: int = 3) -> list[float]:
    return [round(v, digits) for v in values]
