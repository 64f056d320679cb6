"""The router: what features registered is what sockets get; a frame type nobody handles
answers `unavailable`, a role nobody registered for answers `forbidden`; and what
registration refuses."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from gateway.auth import Identity, PatientIdentity
from gateway.realtime import control
from gateway.realtime.router import Peer, Router
from gateway.sync.handlers import SyncHandlers
from protocol.codec import encode_audio_frame
from protocol.frames import CLIENT_FRAMES, ChatSend, Observe, Ping
from tests.support import Gateway
from tests.wsclient import clinician_token, patient_token, recv, send, session

ID = str(uuid.UUID(int=1))
# One valid frame of every client type (auth is only valid as a socket's first frame).
SAMPLES: dict[str, dict[str, Any]] = {
    "ping": {"type": "ping"},
    "chat.send": {"type": "chat.send", "id": "f", "thread_id": ID, "text": "hi"},
    "chat.cancel": {"type": "chat.cancel", "id": "f", "response_id": ID},
    "audio.start": {
        "type": "audio.start",
        "id": "f",
        "stream_id": ID,
        "thread_id": ID,
        "format": "pcm16",
        "sample_rate": 16000,
    },
    "audio.append": {"type": "audio.append", "stream_id": ID, "seq": 0, "audio": "AAA="},
    "audio.commit": {"type": "audio.commit", "id": "f", "stream_id": ID},
    "audio.cancel": {"type": "audio.cancel", "stream_id": ID},
    "sync.push": {"type": "sync.push", "id": "f", "mutations": [{}]},
    "sync.pull": {"type": "sync.pull", "id": "f", "since": 0},
    "observe": {"type": "observe", "id": "f", "patient_id": ID},
    "unobserve": {"type": "unobserve", "id": "f", "patient_id": ID},
}


def test_every_client_frame_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(CLIENT_FRAMES) - {"auth"}


def token_for(role: str) -> str:
    return patient_token() if role == "patient" else clinician_token()


def only_control_and_sync(gateway: Gateway) -> Router:
    """The running gateway's router replaced by one with fewer features: the socket layer
    with sync alone (patients only), as a gateway would be before the others land."""
    router = Router()
    control.register(router, gateway.services.authenticator)
    SyncHandlers(gateway.services.sync).register(router)
    gateway.services.realtime.router = router
    return router


async def test_a_frame_type_no_feature_registered_answers_unavailable(gateway: Gateway) -> None:
    handled = only_control_and_sync(gateway).handled()
    unhandled = [kind for kind in SAMPLES if kind not in handled]
    assert {"chat.send", "audio.start", "observe"} <= set(unhandled)
    for kind in unhandled:
        role = sorted(CLIENT_FRAMES[kind].senders)[0]
        async with session(gateway.ws_url, token_for(role)) as (ws, _):
            await send(ws, SAMPLES[kind])
            error = (await recv(ws))["error"]
            assert error["code"] == "unavailable", kind
            assert error["message"] == f"{kind} is not available on this gateway yet"
            await send(ws, {"type": "ping", "ts": 2})  # the socket stays usable
            assert await recv(ws) == {"type": "pong", "ts": 2}


async def test_a_handler_registered_for_one_role_refuses_the_other(gateway: Gateway) -> None:
    """sync.pull is one the protocol lets clinicians send; here only patients have one."""
    only_control_and_sync(gateway)
    async with session(gateway.ws_url, clinician_token()) as (ws, _):
        await send(ws, {**SAMPLES["sync.pull"], "patient_id": ID})
        error = (await recv(ws))["error"]
        assert (error["code"], error["message"]) == (
            "forbidden",
            "sync.pull is not allowed for clinicians",
        )


async def test_every_frame_type_has_a_handler_for_every_role_the_protocol_allows(
    gateway: Gateway,
) -> None:
    handled = gateway.services.router.handled()
    for kind, model in CLIENT_FRAMES.items():
        assert set(handled.get(kind, {})) == set(model.senders), kind


async def test_frames_the_protocol_keeps_from_a_role_are_forbidden_registered_or_not(
    gateway: Gateway,
) -> None:
    async with session(gateway.ws_url, patient_token()) as (ws, _):
        await send(ws, SAMPLES["observe"])  # clinicians only, and not handled yet
        assert (await recv(ws))["error"]["code"] == "forbidden"
    async with session(gateway.ws_url, clinician_token()) as (ws, _):
        await send(ws, SAMPLES["chat.send"])  # patients only, handled
        assert (await recv(ws))["error"]["code"] == "forbidden"
        await ws.send(encode_audio_frame(uuid.uuid4(), 0, b"\x00\x00"))
        assert (await recv(ws))["error"]["code"] == "forbidden"


async def _pong(peer: Peer[Identity], frame: Ping) -> None:
    return None


async def _send(peer: Peer[PatientIdentity], frame: ChatSend) -> None:
    return None


def test_registration_refuses_roles_the_protocol_forbids_and_second_handlers() -> None:
    router = Router()
    router.for_everyone(Ping, _pong)
    with pytest.raises(ValueError, match="ping: a handler for clinicians is already registered"):
        router.for_everyone(Ping, _pong)
    with pytest.raises(ValueError, match="observe: the protocol does not let patients send it"):
        router.for_patients(Observe, _send)  # type: ignore[arg-type]
    router.for_patients(ChatSend, _send)
    assert {kind: sorted(roles) for kind, roles in router.handled().items()} == {
        "ping": ["clinician", "patient"],
        "chat.send": ["patient"],
    }
