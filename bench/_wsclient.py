"""A lean WebSocket client for load generation: an asyncio.Protocol that parses frames
straight from data_received (no stream reader, no task per socket), so the clients, on
the same cores as the gateways, cost as little as possible per received frame. Server
frames are unmasked; pings are answered."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable

from websockets.speedups import apply_mask

PING, PONG, CLOSE, TEXT = 0x9, 0xA, 0x8, 0x1


class ClientProtocol(asyncio.Protocol):
    def __init__(self, token: str, on_text: Callable[[bytes], None]) -> None:
        self.token = token
        self.on_text = on_text
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()  # the connection ended
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {self.token}\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            if not head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(RuntimeError(head.split(b"\r\n", 1)[0].decode()))
                return
            self.upgraded.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buffer, offset = self.buffer, 0
        while len(buffer) - offset >= 2:
            opcode, length = buffer[offset] & 0x0F, buffer[offset + 1] & 0x7F
            start = offset + 2
            if length == 126:
                if len(buffer) - offset < 4:
                    break
                (length,) = struct.unpack_from(">H", buffer, start)
                start += 2
            elif length == 127:
                if len(buffer) - offset < 10:
                    break
                (length,) = struct.unpack_from(">Q", buffer, start)
                start += 8
            end = start + length
            if end > len(buffer):
                break
            if opcode == TEXT:
                self.on_text(buffer[start:end])
            elif opcode == PING and self.transport is not None:
                mask = os.urandom(4)
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buffer[start:end]))
                self.transport.write(bytes([0x80 | PONG, 0x80 | length]) + mask + payload)
            offset = end
        self.buffer = buffer[offset:]

    def send_text(self, text: bytes) -> None:
        """One masked text frame (client frames must be masked)."""
        assert self.transport is not None
        mask = os.urandom(4)
        length = len(text)
        if length < 126:
            head = bytes([0x80 | TEXT, 0x80 | length])
        elif length < 1 << 16:
            head = bytes([0x80 | TEXT, 0x80 | 126]) + struct.pack(">H", length)
        else:
            head = bytes([0x80 | TEXT, 0x80 | 127]) + struct.pack(">Q", length)
        self.transport.write(head + mask + apply_mask(text, mask))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_client(port: int, token: str, on_text: Callable[[bytes], None]) -> ClientProtocol:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: ClientProtocol(token, on_text), "127.0.0.1", port
    )
    await protocol.upgraded
    return protocol
