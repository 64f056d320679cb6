"""Observation's settings, read once from the environment's (gateway/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.settings import Settings


@dataclass(frozen=True)
class ObserveConfig:
    snapshot_messages: int  # messages of the latest thread in observe.snapshot
    recheck_s: float  # how often live observations are checked against the care team
    audit_retention_days: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ObserveConfig:
        return cls(
            snapshot_messages=settings.observe_snapshot_messages,
            recheck_s=settings.observe_recheck_s,
            audit_retention_days=settings.audit_retention_days,
        )
