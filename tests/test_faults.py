"""The fault suite, short form (issue 15): two gateway processes, Redis and PostgreSQL of
the test's own, devices pushing and chatting while each fault happens once — gateway B
killed with SIGKILL, Redis and PostgreSQL restarted, B cut off from Redis, devices that
stop reading. Nothing acknowledged is lost, every replica converges, every reply arrives
once. `just faults` runs the full form with 50 patients (bench/faults.py)."""

from __future__ import annotations

from pathlib import Path

from tests.faultkit import FAULTS, Load, run


async def test_acknowledged_writes_survive_every_fault_and_replicas_converge(
    tmp_path: Path,
) -> None:
    outcome = await run(tmp_path, Load(sync_patients=3, hold_s=1.5, calm_s=2.0))
    print(outcome)
    assert set(outcome.recovery_s) == set(FAULTS)
    assert outcome.acknowledged > 50
    assert outcome.lost == []
    assert outcome.diverged == []
    assert outcome.chats >= 2
    assert outcome.replies_missing == [] and outcome.replies_doubled == []
