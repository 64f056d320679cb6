"""The fault suite, full form (issue 15): two gateway processes, Redis, PostgreSQL and a
stand-in model of its own; PATIENTS patients with 3 devices each pushing every second and
CHAT_PATIENTS headsets chatting, while each fault happens in turn (tests/faultkit.py says
how each is made): gateway B killed with SIGKILL and restarted, Redis restarted,
PostgreSQL restarted, B cut off from Redis by a TCP proxy, one device of every patient
not reading. Prints the time to recover from each (its end until every device has had a
write acknowledged again), the errors clients saw, and the checks: acknowledged writes
lost, replicas diverged, replies missing or doubled. Exits 1 if a check fails.

    just faults      (PATIENTS=50 CHAT_PATIENTS=5 HOLD_S=5 CALM_S=10 to change)
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.faultkit import FAULTS, Load, run

LOAD = Load(
    sync_patients=int(os.environ.get("PATIENTS", "50")),
    chat_patients=int(os.environ.get("CHAT_PATIENTS", "5")),
    hold_s=float(os.environ.get("HOLD_S", "5")),
    calm_s=float(os.environ.get("CALM_S", "10")),
)


async def main() -> int:
    print(
        f"faults, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs: {LOAD.sync_patients} "
        f"patients × 3 devices pushing every {LOAD.push_interval_s:g} s, "
        f"{LOAD.chat_patients} chatting every {LOAD.chat_interval_s:g} s; faults held "
        f"{LOAD.hold_s:g} s, {LOAD.calm_s:g} s of calm around each",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="faults-") as directory:
        outcome = await run(Path(directory), LOAD)
    print(f"{'fault':<10} {'recovered in':>12}  errors seen by clients")
    for fault in FAULTS:
        seen = {k.split(": ", 1)[1]: v for k, v in outcome.errors.items() if k.startswith(fault)}
        print(f"{fault:<10} {outcome.recovery_s[fault]:>10.2f} s  {seen or '-'}")
    calm = {k.split(": ", 1)[1]: v for k, v in outcome.errors.items() if k.startswith("calm")}
    print(f"between faults: {calm or 'no errors'}")
    print(
        f"{outcome.duration_s:.0f} s; {outcome.acknowledged:,} mutations acknowledged, "
        f"lost {len(outcome.lost)}; replicas diverged {len(outcome.diverged)}; "
        f"{outcome.chats} chat replies complete, missing {len(outcome.replies_missing)}, "
        f"doubled {len(outcome.replies_doubled)}"
    )
    failed = outcome.lost or outcome.diverged or outcome.replies_missing
    return 1 if failed or outcome.replies_doubled else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
