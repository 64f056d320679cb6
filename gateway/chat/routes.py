"""The original backend's chat route, on the same pipeline as `chat.send`.

`POST /chat/` with `Authorization: Bearer <patient token>` and `{"thread_id", "message",
"svg_path"?}` answers `text/event-stream`: `data: {"content": "..."}` per delta and
`event: done` / `data: {}` at the end (after `event: error` when the model failed). The
patient's sockets see the same message and reply. A client that hangs up does not stop
the reply: it is stored all the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

import orjson
from pydantic import ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.chat.replies import ChatRequest, ReplyEvent
from gateway.chat.service import ChatService
from gateway.http.rest import BearerAuth, error_response, read_body
from protocol.codec import ProtocolError
from protocol.codes import ErrorCode
from protocol.frames import MAX_TEXT_CHARS, ChatDelta, ChatDone, ClientText, SvgPath

_STATUS = {
    ErrorCode.BUSY: 409,
    ErrorCode.CONFLICT: 409,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.INVALID: 422,
}


class LegacyChat(ClientText):
    model_config = ConfigDict(extra="ignore")
    thread_id: UUID
    message: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    svg_path: SvgPath | None = None


class ChatRoute:
    def __init__(self, service: ChatService, auth: BearerAuth) -> None:
        self.service = service
        self.auth = auth

    async def endpoint(self, request: Request) -> Response:
        received = time.monotonic()
        identity = await self.auth.patient(request, "chat")
        if isinstance(identity, JSONResponse):
            return identity
        payload = await read_body(request, LegacyChat)
        if isinstance(payload, JSONResponse):
            return payload
        events: asyncio.Queue[ReplyEvent] = asyncio.Queue()
        chat_request = ChatRequest(
            patient_id=identity.patient_id,
            thread_id=payload.thread_id,
            text=payload.message,
            device_id=identity.device_key,
            svg_path=payload.svg_path,
            received=received,
        )
        outcome = await self.service.accept(
            chat_request, ack=lambda _: None, watcher=events.put_nowait
        )
        if isinstance(outcome, ProtocolError):
            if outcome.code == ErrorCode.FORBIDDEN:  # another patient's thread
                self.auth.refused(identity, "POST chat")
            headers = {"Retry-After": "1"} if outcome.retryable else None
            status = _STATUS.get(outcome.code, 500)
            return error_response(status, outcome.code.value, outcome.message, headers)
        assert outcome is not None  # without a client_message_id there are no replays
        reply = outcome

        async def stream() -> AsyncIterator[bytes]:
            try:
                while True:
                    event = await events.get()
                    if isinstance(event, ChatDelta):
                        yield b"data: " + orjson.dumps({"content": event.delta}) + b"\n\n"
                    elif isinstance(event, ChatDone):
                        yield b"event: done\ndata: {}\n\n"
                        return
                    else:
                        error = {"code": event.code.value, "message": event.message}
                        yield b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
            finally:
                reply.watchers.remove(events.put_nowait)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
