"""The heartbeat over a raw TCP WebSocket client whose ping handling the test controls."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from urllib.parse import urlsplit

import pytest

from tests.support import TIMEOUT_S, Gateway
from tests.wsclient import patient_token

PING, PONG, CLOSE, TEXT = 0x9, 0xA, 0x8, 0x1


class RawSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, ws_url: str, token: str) -> RawSocket:
        url = urlsplit(ws_url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        response = await reader.readuntil(b"\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 101"), response
        return cls(reader, writer)

    async def frame(self) -> tuple[int, bytes]:
        """The next frame from the server (unmasked): (opcode, payload)."""
        head = await self.reader.readexactly(2)
        length = head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", await self.reader.readexactly(8))
        return head[0] & 0x0F, await self.reader.readexactly(length)

    def send(self, opcode: int, payload: bytes) -> None:
        """A masked client frame (payloads under 126 bytes)."""
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)


@pytest.mark.parametrize("gateway", [{"heartbeat_s": 0.3}], indirect=True)
async def test_a_peer_that_stops_answering_pings_is_dropped(gateway: Gateway) -> None:
    raw = await RawSocket.open(gateway.ws_url, patient_token())
    seen: list[int] = []
    close_code = None
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            try:
                opcode, payload = await raw.frame()
            except asyncio.IncompleteReadError:
                break  # the server closed the connection
            seen.append(opcode)
            if opcode == CLOSE:
                (close_code,) = struct.unpack(">H", payload[:2])
    raw.writer.close()
    assert PING in seen
    assert close_code == 1011  # "keepalive ping timeout"


@pytest.mark.parametrize("gateway", [{"heartbeat_s": 0.3}], indirect=True)
async def test_a_peer_that_answers_pings_stays_connected(gateway: Gateway) -> None:
    raw = await RawSocket.open(gateway.ws_url, patient_token())
    pings = 0
    async with asyncio.timeout(TIMEOUT_S):
        while pings < 4:  # four heartbeats: well past the first timeout
            opcode, payload = await raw.frame()
            assert opcode != CLOSE
            if opcode == PING:
                pings += 1
                raw.send(PONG, payload)
        raw.send(TEXT, b'{"type":"ping","ts":7}')
        while True:
            opcode, payload = await raw.frame()
            if opcode == PING:
                raw.send(PONG, payload)
            elif opcode == TEXT and b'"pong"' in payload:
                assert payload == b'{"type":"pong","ts":7}'
                break
    raw.writer.close()
