"""RS256/ES256 tokens verified against a JWKS served over real HTTP; algorithm confusion
(a public key used as an HMAC secret) refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.auth import AUDIENCE
from tests.support import TEST_SECRET, Gateway, make_settings, serve_app, serve_gateway
from tests.wsclient import expect_close, open_socket, recv, session

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk(public_key: Any, algorithm: Any, kid: str, alg: str) -> dict[str, Any]:
    key: dict[str, Any] = json.loads(algorithm.to_jwk(public_key))
    return {**key, "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture
async def jwks_url() -> AsyncIterator[str]:
    keys = {
        "keys": [
            jwk(RSA_KEY.public_key(), RSAAlgorithm, "rsa-1", "RS256"),
            jwk(EC_KEY.public_key(), ECAlgorithm, "ec-1", "ES256"),
        ]
    }

    async def serve_keys(request: Request) -> JSONResponse:
        return JSONResponse(keys)

    async with serve_app(Starlette(routes=[Route("/jwks.json", serve_keys)])) as (_, url):
        yield f"{url}/jwks.json"


@pytest.fixture
async def gateway(database_url: str, jwks_url: str) -> AsyncIterator[Gateway]:
    async with serve_gateway(make_settings(jwks_url=jwks_url), database_url) as gw:
        yield gw


def claims() -> dict[str, Any]:
    sub = str(uuid.uuid4())
    return {
        "sub": sub,
        "patient_id": sub,
        "role": "patient",
        "aud": AUDIENCE,
        "exp": int(time.time()) + 60,
    }


@pytest.mark.parametrize(
    ("key", "alg", "kid"), [(RSA_KEY, "RS256", "rsa-1"), (EC_KEY, "ES256", "ec-1")]
)
async def test_asymmetric_tokens_from_the_jwks_are_accepted(
    gateway: Gateway, key: Any, alg: str, kid: str
) -> None:
    token = jwt.encode(claims(), key, algorithm=alg, headers={"kid": kid})
    async with session(gateway.ws_url, token) as (_, ready):
        assert ready["role"] == "patient"


async def test_a_public_key_used_as_an_hmac_secret_is_refused(gateway: Gateway) -> None:
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    # Forge an HS256 token keyed with the public key (PyJWT refuses to, so sign by hand).
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    payload = b64(json.dumps(claims()).encode())
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    async with open_socket(gateway.ws_url, f"{header}.{payload}.{b64(signature)}") as ws:
        error = await recv(ws)
        assert error["error"]["code"] == "unauthenticated"
        assert await expect_close(ws) == 4401


async def test_a_key_the_jwks_does_not_have_is_refused(gateway: Gateway) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": "rsa-2"})
    async with open_socket(gateway.ws_url, token) as ws:
        error = await recv(ws)
        assert error["error"]["code"] == "unauthenticated"
        assert "signing key not found" in error["error"]["message"]
        assert await expect_close(ws) == 4401
    wrong_signer = jwt.encode(claims(), stranger, algorithm="RS256", headers={"kid": "rsa-1"})
    async with open_socket(gateway.ws_url, wrong_signer) as ws:
        assert (await recv(ws))["error"]["code"] == "unauthenticated"
        assert await expect_close(ws) == 4401


async def test_without_a_jwks_asymmetric_tokens_are_refused(database_url: str) -> None:
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    async with serve_gateway(make_settings(), database_url) as gw:
        async with open_socket(gw.ws_url, token) as ws:
            error = await recv(ws)
            assert "algorithm 'RS256' is not accepted" in error["error"]["message"]
            assert await expect_close(ws) == 4401


async def test_a_token_whose_alg_does_not_fit_its_key_is_refused_with_4401(
    gateway: Gateway,
) -> None:
    # Signed with the EC key as ES256, but naming the RSA key: the key type does not fit.
    token = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "rsa-1"})
    async with open_socket(gateway.ws_url, token) as ws:
        error = (await recv(ws))["error"]
        assert error["code"] == "unauthenticated" and "invalid token" in error["message"]
        assert await expect_close(ws) == 4401


async def test_with_a_jwks_hs256_tokens_are_refused_unless_allowed(
    database_url: str, jwks_url: str
) -> None:
    token = jwt.encode(claims(), TEST_SECRET, algorithm="HS256")
    async with serve_gateway(make_settings(jwks_url=jwks_url), database_url) as gw:
        async with open_socket(gw.ws_url, token) as ws:
            error = (await recv(ws))["error"]
            assert "algorithm 'HS256' is not accepted" in error["message"]
            assert await expect_close(ws) == 4401
    allowed = make_settings(jwks_url=jwks_url, jwt_allow_hs256=True)
    async with serve_gateway(allowed, database_url) as gw:
        async with session(gw.ws_url, token) as (_, ready):
            assert ready["role"] == "patient"


@pytest.fixture
async def rotating_jwks() -> AsyncIterator[tuple[str, dict[str, Any], list[float]]]:
    """A JWKS the test edits (its "keys" list) and the times it was fetched."""
    served: dict[str, Any] = {"keys": [jwk(RSA_KEY.public_key(), RSAAlgorithm, "rsa-1", "RS256")]}
    fetched: list[float] = []

    async def serve_keys(request: Request) -> JSONResponse:
        fetched.append(time.monotonic())
        return JSONResponse(served)

    async with serve_app(Starlette(routes=[Route("/jwks.json", serve_keys)])) as (_, url):
        yield f"{url}/jwks.json", served, fetched


async def test_unknown_kids_refetch_the_jwks_at_most_once_per_interval(
    database_url: str, rotating_jwks: tuple[str, dict[str, Any], list[float]]
) -> None:
    url, _, fetched = rotating_jwks
    settings = make_settings(jwks_url=url, jwks_min_refresh_s=60)
    async with serve_gateway(settings, database_url) as gw:
        good = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
        async with session(gw.ws_url, good) as (_, ready):
            assert ready["role"] == "patient"
        for n in range(20):
            made_up = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": f"x{n}"})
            async with open_socket(gw.ws_url, made_up) as ws:
                assert "signing key not found" in (await recv(ws))["error"]["message"]
                assert await expect_close(ws) == 4401
    assert len(fetched) == 1


async def test_a_rotated_key_is_picked_up_and_a_withdrawn_one_expires(
    database_url: str, rotating_jwks: tuple[str, dict[str, Any], list[float]]
) -> None:
    url, served, fetched = rotating_jwks
    settings = make_settings(jwks_url=url, jwks_min_refresh_s=0, jwks_cache_s=0.3)
    old = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    async with serve_gateway(settings, database_url) as gw:
        async with session(gw.ws_url, old):
            pass
        # The issuer rotates: a new key appears and the old one is withdrawn.
        new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        served["keys"] = [jwk(new_key.public_key(), RSAAlgorithm, "rsa-2", "RS256")]
        new = jwt.encode(claims(), new_key, algorithm="RS256", headers={"kid": "rsa-2"})
        async with session(gw.ws_url, new) as (_, ready):
            assert ready["role"] == "patient"
        assert len(fetched) == 2
        # The old key was dropped by that fetch; even without it, it would expire.
        async with open_socket(gw.ws_url, old) as ws:
            assert "signing key not found" in (await recv(ws))["error"]["message"]
            assert await expect_close(ws) == 4401


async def test_cached_keys_expire(
    database_url: str, rotating_jwks: tuple[str, dict[str, Any], list[float]]
) -> None:
    url, served, fetched = rotating_jwks
    settings = make_settings(jwks_url=url, jwks_min_refresh_s=60, jwks_cache_s=0.3)
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    async with serve_gateway(settings, database_url) as gw:
        async with session(gw.ws_url, token):
            pass
        served["keys"] = []  # withdrawn; the gateway learns it when its cache expires
        deadline = time.monotonic() + 5
        while True:
            async with open_socket(gw.ws_url, token) as ws:
                first = await recv(ws)
                if first["type"] == "error":
                    assert "signing key not found" in first["error"]["message"]
                    break
            assert time.monotonic() < deadline, "the withdrawn key was still accepted after 5 s"
    assert len(fetched) >= 2
