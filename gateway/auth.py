"""JSON Web Tokens: the claims docs/protocol.md defines, for audience `painar-gateway`.

HS256 tokens are verified with SECRET_KEY. With JWKS_URL set, RS256 and ES256 tokens are
verified against the key the JWKS names (`kid`). Each algorithm is tied to its own key
source, so a public key can never be used as an HMAC secret (algorithm confusion), and
`alg: none` matches no source at all.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal
from uuid import UUID

import jwt

from gateway.jwks import JwksKeys, SigningKeyNotFound

AUDIENCE = "painar-gateway"
TokenRole = Literal["patient", "clinician", "admin"]
ASYMMETRIC = ("RS256", "ES256")
# DEV_TOKEN (DEBUG only) stands for this patient on this device.
DEV_PATIENT_ID = UUID("00000000-0000-4000-8000-000000000001")
DEV_DEVICE_ID = "dev"


class AuthError(Exception):
    """Why a token was refused; the text is safe to show the client."""


@dataclass(frozen=True)
class PatientIdentity:
    role: ClassVar[Literal["patient"]] = "patient"
    sub: UUID
    patient_id: UUID
    device_id: str | None
    expires_at: float | None = None  # the token's exp (unix time); None: never (DEV_TOKEN)
    issued_at: float | None = None  # the token's iat, when it has one

    @property
    def device_key(self) -> str:
        """Whose mutation and message ids these are: the token's device, else the subject
        itself (idempotency keys are kept per device_key)."""
        return self.device_id or f"sub:{self.sub}"


@dataclass(frozen=True)
class ClinicianIdentity:
    role: ClassVar[Literal["clinician"]] = "clinician"
    sub: UUID
    device_id: str | None
    expires_at: float | None = None
    issued_at: float | None = None


@dataclass(frozen=True)
class AdminIdentity:
    """Manages care teams and reads the audit trail, over the admin HTTP API only."""

    role: ClassVar[Literal["admin"]] = "admin"
    sub: UUID


# Who a socket can belong to.
Identity = PatientIdentity | ClinicianIdentity
# Whoever a token can name.
Principal = PatientIdentity | ClinicianIdentity | AdminIdentity


def same_holder(first: Identity, second: Identity) -> bool:
    """Whether two tokens name the same socket holder (a refresh may change only the
    expiry)."""
    return replace(first, expires_at=None, issued_at=None) == replace(
        second, expires_at=None, issued_at=None
    )


class RevokedSubjects:
    """Subjects whose tokens issued before a time are void (kept current by
    gateway/realtime/revocations.py from PostgreSQL)."""

    def __init__(self) -> None:
        self._before: dict[UUID, float] = {}

    def add(self, sub: UUID, before: float) -> None:
        self._before[sub] = max(before, self._before.get(sub, before))

    def voids(self, sub: UUID, issued_at: float | None) -> bool:
        before = self._before.get(sub)
        if before is None:
            return False
        # `iat` has whole seconds: a token of the revocation's own second may predate it.
        return issued_at is None or issued_at <= math.floor(before)


# Tokens already verified, kept so that a reconnect (the same token, a storm of them after
# a drain) costs a lookup, not a signature check. Bounded in count; an entry lasts until
# its token's exp or VERIFIED_FOR_S, whichever is sooner; revocations are checked on every
# hit. Only HS256 tokens: a JWKS-signed token must stop counting as soon as its key is
# withdrawn from the JWKS (within JWKS_CACHE_S), which a lookup here would not notice.
VERIFIED_MAX = 10_000
VERIFIED_FOR_S = 300.0


class Authenticator:
    def __init__(
        self,
        secret: str,
        *,
        jwks: JwksKeys | None = None,
        dev_token: str | None = None,
        max_ttl_s: float | None = None,
        issuer: str | None = None,
        revoked: RevokedSubjects | None = None,
        allow_hs256: bool = True,
    ) -> None:
        self._secret = secret
        self._dev_token = dev_token
        self._jwks = jwks
        self._max_ttl_s = max_ttl_s
        self._issuer = issuer
        self.revoked = revoked or RevokedSubjects()
        # One key source at a time: with a JWKS, SECRET_KEY signs no tokens unless allowed.
        self._hs256 = allow_hs256 or self._jwks is None
        self._verified: dict[str, tuple[Identity, float]] = {}  # token -> (holder, until)

    async def verify(self, token: str) -> Principal:
        if self._dev_token is not None and token == self._dev_token:
            return PatientIdentity(DEV_PATIENT_ID, DEV_PATIENT_ID, DEV_DEVICE_ID)
        known = self._verified.get(token)
        if known is not None:
            holder, until = known
            if time.time() < until and not self.revoked.voids(holder.sub, holder.issued_at):
                return holder
            del self._verified[token]  # expired or revoked: checked in full below
        verified, alg = await self._verify(token)
        if alg == "HS256" and not isinstance(verified, AdminIdentity) and verified.expires_at:
            if len(self._verified) >= VERIFIED_MAX:
                del self._verified[next(iter(self._verified))]  # the oldest entry
            until = min(verified.expires_at, time.time() + VERIFIED_FOR_S)
            self._verified[token] = (verified, until)
        return verified

    async def _verify(self, token: str) -> tuple[Principal, str]:
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            if alg == "HS256" and self._hs256:
                key: Any = self._secret
            elif alg in ASYMMETRIC and self._jwks is not None:
                key = await self._jwks.key_for(header.get("kid"))
            else:
                raise AuthError(f"token algorithm {str(alg)[:16]!r} is not accepted")
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=AUDIENCE,
                issuer=self._issuer,
                options={"require": ["exp", "sub", "aud", *(["iss"] if self._issuer else [])]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer is not the one this gateway trusts") from None
        except jwt.InvalidAudienceError:
            raise AuthError(f"token audience must be {AUDIENCE!r}") from None
        except SigningKeyNotFound as exc:
            raise AuthError(str(exc)) from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            # Includes a key whose type does not fit the token's alg (InvalidKeyError).
            raise AuthError(f"invalid token: {type(exc).__name__}") from None
        if self._max_ttl_s is not None:
            issued = claims.get("iat")
            start = issued if isinstance(issued, int | float) else time.time()
            if claims["exp"] - start > self._max_ttl_s:
                raise AuthError(f"token lifetime is over the {self._max_ttl_s:g} s allowed")
        holder = identity_from_claims(claims)
        if self.revoked.voids(holder.sub, _number(claims.get("iat"))):
            raise AuthError("token revoked")
        return holder, str(alg)


def identity_from_claims(claims: dict[str, Any]) -> Principal:
    role = claims.get("role")
    if role not in ("patient", "clinician", "admin"):
        raise AuthError("token claim role must be 'patient', 'clinician' or 'admin'")
    sub = _uuid(claims.get("sub"), "sub")
    device_id = claims.get("device_id")
    if device_id is not None and not (
        isinstance(device_id, str) and 0 < len(device_id) <= 128 and "\x00" not in device_id
    ):
        raise AuthError("token claim device_id must be a string of 1 to 128 characters")
    expires_at, issued_at = _number(claims.get("exp")), _number(claims.get("iat"))
    if role == "patient":
        patient_id = _uuid(claims.get("patient_id"), "patient_id")
        return PatientIdentity(sub, patient_id, device_id, expires_at, issued_at)
    if role == "admin":
        return AdminIdentity(sub)
    return ClinicianIdentity(sub, device_id, expires_at, issued_at)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _uuid(value: object, claim: str) -> UUID:
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise AuthError(f"token claim {claim} must be a UUID")


def issue_token(
    secret: str,
    *,
    role: TokenRole,
    sub: UUID,
    patient_id: UUID | None = None,
    device_id: str | None = None,
    ttl_s: int = 3600,
) -> str:
    """An HS256 token for local use (development, tests, scripts)."""
    if role == "patient" and patient_id is None:
        patient_id = sub
    if role != "patient" and patient_id is not None:
        raise ValueError(f"patient_id: a {role} token names no patient")
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
