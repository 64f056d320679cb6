"""The signing keys of a JWKS endpoint, cached for a while and refreshed on rotation.

Keys expire after `max_age_s` (a key the issuer withdrew stops working within that long).
A token naming a `kid` the cache does not hold triggers a refetch (the issuer rotated),
at most once per `min_refresh_s`: tokens with made-up kids cannot turn the gateway into
a flood of requests to the key server. Concurrent misses share one fetch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import jwt

log = logging.getLogger(__name__)


class SigningKeyNotFound(Exception):
    """No key of the JWKS has the token's kid (or the JWKS could not be read)."""


class JwksKeys:
    def __init__(self, url: str, *, max_age_s: float = 300.0, min_refresh_s: float = 30.0) -> None:
        self._url = url
        self._max_age_s = max_age_s
        self._min_refresh_s = min_refresh_s
        self._keys: dict[str, Any] = {}
        self._loaded_at = -float("inf")  # monotonic time the keys were fetched
        self._attempted_at = -float("inf")  # of the last fetch, whatever its outcome
        self._lock = asyncio.Lock()

    async def key_for(self, kid: object) -> Any:
        if not isinstance(kid, str) or not kid:
            raise SigningKeyNotFound("token names no key id (kid)")
        now = time.monotonic()
        since_attempt = now - self._attempted_at
        expired = now - self._loaded_at >= self._max_age_s
        if (expired and since_attempt >= min(self._max_age_s, self._min_refresh_s)) or (
            kid not in self._keys and since_attempt >= self._min_refresh_s
        ):
            await self._refresh(now)
        key = self._keys.get(kid)
        if key is None:
            raise SigningKeyNotFound("token signing key not found")
        return key

    async def _refresh(self, wanted_at: float) -> None:
        async with self._lock:
            if self._attempted_at >= wanted_at:
                return  # another caller fetched while this one waited
            self._attempted_at = time.monotonic()
            try:
                async with httpx.AsyncClient(timeout=5.0) as client:
                    response = await client.get(self._url)
                    response.raise_for_status()
                    listed = response.json()["keys"]
                if not isinstance(listed, list):
                    raise ValueError("keys is not a list")
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                # The keys held so far stay in use until a fetch succeeds: an outage of
                # the key server must not log everyone out (a withdrawn key is a
                # successful fetch without it, and ends at once).
                log.warning("jwks fetch failed: %s", type(exc).__name__)
                return
            self._keys = dict(filter(None, map(_usable, listed)))
            self._loaded_at = self._attempted_at


def _usable(entry: object) -> tuple[str, Any] | None:
    """A listed key as (kid, key), or None when it has no kid or is not a signing key
    this gateway can use (an issuer may list others)."""
    try:
        key = jwt.PyJWK(entry)  # type: ignore[arg-type]
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
    return (key.key_id, key.key) if key.key_id else None
