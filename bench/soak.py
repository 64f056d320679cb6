"""Soak (issue 15, part 6): the fault suite's load without faults for SOAK_S seconds
(default 1800), sampling every SAMPLE_S: each gateway process's resident memory and open
file descriptors, the database's connections, Redis's clients. After the first WARMUP_S
(a fifth) a least-squares slope per hour is printed for each, and the run fails when one
grows faster than its bound: a leak shows as a steady slope, noise as none.

    just bench soak      (PATIENTS=50 CHAT_PATIENTS=5 SOAK_S=1800 SAMPLE_S=30 to change)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from tests.faultkit import Cluster, Load, run

SOAK_S = float(os.environ.get("SOAK_S", "1800"))
SAMPLE_S = float(os.environ.get("SAMPLE_S", "30"))
WARMUP_S = SOAK_S / 5
LOAD = Load(
    sync_patients=int(os.environ.get("PATIENTS", "50")),
    chat_patients=int(os.environ.get("CHAT_PATIENTS", "5")),
    calm_s=SOAK_S,
)
# Growth per hour after warm-up that counts as a leak.
BOUNDS = {
    "A rss MiB": 20.0,
    "B rss MiB": 20.0,
    "A fds": 5.0,
    "B fds": 5.0,
    "database connections": 2.0,
    "redis clients": 2.0,
}


@dataclass
class Samples:
    times: list[float] = field(default_factory=list)
    series: dict[str, list[float]] = field(default_factory=dict)

    def add(self, at: float, values: dict[str, float]) -> None:
        self.times.append(at)
        for name, value in values.items():
            self.series.setdefault(name, []).append(value)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def redis_clients(socket: Path) -> float:
    reader, writer = await asyncio.open_unix_connection(str(socket))
    writer.write(b"INFO clients\r\n")
    header = await reader.readline()  # $<length>
    body = await reader.readexactly(int(header[1:]) + 2)
    writer.close()
    for line in body.decode().splitlines():
        if line.startswith("connected_clients:"):
            return float(line.split(":")[1]) - 1  # not this connection
    return 0.0


async def sample(c: Cluster, samples: Samples, started: float) -> None:
    while True:
        values: dict[str, float] = {}
        for name, process in (("A", c.a.process), ("B", c.b.process)):
            assert process is not None
            values[f"{name} rss MiB"] = rss_mib(process.pid)
            values[f"{name} fds"] = len(os.listdir(f"/proc/{process.pid}/fd"))
        db = await asyncpg.connect(c.dsn)
        try:
            values["database connections"] = await db.fetchval(
                "SELECT count(*) - 1 FROM pg_stat_activity WHERE datname = current_database()"
            )
        finally:
            await db.close()
        values["redis clients"] = await redis_clients(c.redis.socket)
        samples.add(time.monotonic() - started, values)
        await asyncio.sleep(SAMPLE_S)


def slope_per_hour(times: list[float], values: list[float]) -> float:
    if len(times) < 2:
        return 0.0
    return statistics.linear_regression(times, values).slope * 3600


async def main() -> int:
    print(
        f"soak, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs: {LOAD.sync_patients} "
        f"patients × 3 devices, {LOAD.chat_patients} chatting, {SOAK_S:g} s, a sample "
        f"every {SAMPLE_S:g} s, slopes after {WARMUP_S:g} s",
        flush=True,
    )
    samples = Samples()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soak-") as directory:
        outcome = await run(Path(directory), LOAD, (), lambda c: sample(c, samples, started))
    kept = [i for i, t in enumerate(samples.times) if t >= WARMUP_S]
    times = [samples.times[i] for i in kept]
    failed = False
    print(f"{'measure':<22} {'after warm-up':>14} {'at the end':>11} {'slope/hour':>11} bound")
    for name, values in samples.series.items():
        after = [values[i] for i in kept]
        slope = slope_per_hour(times, after)
        over = slope > BOUNDS[name]
        failed |= over
        print(
            f"{name:<22} {after[0] if after else float('nan'):>14.1f} {values[-1]:>11.1f} "
            f"{slope:>11.2f} {BOUNDS[name]:g}{'  OVER' if over else ''}"
        )
    print(
        f"{outcome.acknowledged:,} mutations acknowledged, lost {len(outcome.lost)}; "
        f"replicas diverged {len(outcome.diverged)}; {outcome.chats} replies complete; "
        f"errors {dict(outcome.errors) or 'none'}"
    )
    return 1 if failed or outcome.lost or outcome.diverged else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
