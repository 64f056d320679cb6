"""Verified tokens are remembered (a reconnect costs a lookup, not a signature check), but
a remembered token still expires on time and is still refused once its subject is
revoked."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gateway.auth import Authenticator, AuthError, PatientIdentity, issue_token
from tests.support import TEST_SECRET, TIMEOUT_S


async def test_a_remembered_token_still_expires_and_can_still_be_revoked() -> None:
    authenticator = Authenticator(TEST_SECRET)
    patient = uuid.uuid4()
    token = issue_token(TEST_SECRET, role="patient", sub=patient, device_id="d", ttl_s=1)
    first = await authenticator.verify(token)
    assert await authenticator.verify(token) is first  # remembered, not decoded again
    assert isinstance(first, PatientIdentity) and first.expires_at is not None
    expires_at = first.expires_at
    async with asyncio.timeout(TIMEOUT_S):
        while time.time() < expires_at:  # waiting for the token's exp to pass
            await asyncio.sleep(0.05)
    with pytest.raises(AuthError, match="token expired"):
        await authenticator.verify(token)

    other = issue_token(TEST_SECRET, role="patient", sub=patient, device_id="e")
    assert (await authenticator.verify(other)).sub == patient
    authenticator.revoked.add(patient, time.time() + 1)  # every token issued until now
    with pytest.raises(AuthError, match="token revoked"):
        await authenticator.verify(other)
