"""JSON Web Tokens: the claims PROTOCOL.md defines, signed for audience `painar-gateway`."""

from __future__ import annotations

import time
from typing import Literal
from uuid import UUID

import jwt

AUDIENCE = "painar-gateway"
Role = Literal["patient", "clinician"]


def issue_token(
    secret: str,
    *,
    role: Role,
    sub: UUID,
    patient_id: UUID | None = None,
    device_id: str | None = None,
    ttl_s: int = 3600,
) -> str:
    """An HS256 token for local use (development, tests, scripts)."""
    if role == "patient" and patient_id is None:
        patient_id = sub
    if role == "clinician" and patient_id is not None:
        raise ValueError("patient_id: a clinician token names no patient")
    if device_id is not None and not 1 <= len(device_id) <= 128:
        raise ValueError("device_id: 1 to 128 characters")
    if ttl_s <= 0:
        raise ValueError("ttl: must be positive")
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": str(sub),
        "role": role,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + ttl_s,
    }
    if patient_id is not None:
        claims["patient_id"] = str(patient_id)
    if device_id is not None:
        claims["device_id"] = device_id
    return jwt.encode(claims, secret, algorithm="HS256")
