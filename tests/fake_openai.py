"""A local HTTP server speaking the OpenAI wire format, so the real `openai` client runs end
to end in tests: streamed chat completions (SSE chunks, a usage chunk, `data: [DONE]`),
embeddings and transcriptions. Tests tell it how to behave: tokens, delays, failures, cut
streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.providers.offline import embed


@dataclass
class Behaviour:
    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " there", "."])
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    token_delays: list[float] | None = None  # per token, instead of token_delay_s
    # Before the chunk that says why the stream stopped: a model's stop is a decoding step
    # of its own, so a real stream's end comes about one token interval after its last text.
    finish_delay_s: float = 0.0
    fail_with: list[int] = field(default_factory=list)  # statuses for the next requests
    cut_after: int | None = None  # drop the connection after this many tokens
    error_after: int | None = None  # send an error event after this many tokens
    requests: list[dict[str, object]] = field(default_factory=list)
    aborted: int = 0  # streams the client closed before their end
    # Embeddings: failures and a delay for the next requests, and every text embedded.
    embedding_fail_with: list[int] = field(default_factory=list)
    embedding_delay_s: float = 0.0
    embedded: list[str] = field(default_factory=list)
    # Transcriptions: what /audio/transcriptions answers, and what each upload was.
    transcript: str = "My knee hurts when I climb the stairs."
    transcription_delay_s: float = 0.0
    uploads: list[dict[str, object]] = field(default_factory=list)
    # Dialects of the servers people run locally (llama.cpp, Ollama, vLLM, TGI): the
    # finish reason sent (None: none at all, only `[DONE]`), whether a usage chunk comes,
    # and whether `dimensions` in an embeddings request is refused (400).
    finish_reason: str | None = "stop"
    send_usage: bool = True
    refuse_dimensions: bool = False
    # Benchmarks: each token is the time it was sent ("<unix time> "), and the first one
    # starts with the time the request arrived ("R<unix time> ").
    stamp: bool = False

    @property
    def chat_requests(self) -> list[dict[str, object]]:
        return [r for r in self.requests if "messages" in r]


def fake_openai_app(behaviour: Behaviour) -> Starlette:
    async def chat(request: Request) -> Response:
        received = time.time()
        body = orjson.loads(await request.body())
        behaviour.requests.append(body)
        if behaviour.fail_with:
            status = behaviour.fail_with.pop(0)
            return JSONResponse(
                {"error": {"message": "fake failure", "type": "server_error"}}, status
            )

        async def events() -> AsyncIterator[bytes]:
            base = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body["model"],
            }
            try:
                await asyncio.sleep(behaviour.first_token_delay_s)
                for n, token in enumerate(behaviour.tokens):
                    if behaviour.cut_after is not None and n >= behaviour.cut_after:
                        raise ConnectionResetError("cut by the test")
                    if behaviour.error_after is not None and n >= behaviour.error_after:
                        error = {"error": {"message": "overloaded", "type": "server_error"}}
                        yield b"data: " + orjson.dumps(error) + b"\n\n"
                        return
                    if behaviour.token_delays is not None:
                        await asyncio.sleep(behaviour.token_delays[n])
                    elif n:
                        await asyncio.sleep(behaviour.token_delay_s)
                    if behaviour.stamp:
                        token = f"{time.time():.6f} "
                        if n == 0:
                            token = f"R{received:.6f} {token}"
                    content = {"content": token}
                    choice = {"index": 0, "delta": content, "finish_reason": None}
                    yield b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"
                if behaviour.finish_delay_s:
                    await asyncio.sleep(behaviour.finish_delay_s)
            except (asyncio.CancelledError, GeneratorExit):
                behaviour.aborted += 1
                raise
            if behaviour.finish_reason is not None:
                finish = {"index": 0, "delta": {}, "finish_reason": behaviour.finish_reason}
                yield b"data: " + orjson.dumps({**base, "choices": [finish]}) + b"\n\n"
            if behaviour.send_usage:
                usage = {
                    "prompt_tokens": 11,
                    "completion_tokens": len(behaviour.tokens),
                    "total_tokens": 11 + len(behaviour.tokens),
                }
                yield b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        body = orjson.loads(await request.body())
        behaviour.requests.append(body)
        if behaviour.embedding_fail_with:
            status = behaviour.embedding_fail_with.pop(0)
            return JSONResponse({"error": {"message": "fake failure"}}, status)
        await asyncio.sleep(behaviour.embedding_delay_s)
        if behaviour.refuse_dimensions and "dimensions" in body:
            error = {"message": "unknown parameter: dimensions", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, 400)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        behaviour.embedded.extend(inputs)
        dim = int(body.get("dimensions") or 1536)
        data = [
            {"object": "embedding", "index": i, "embedding": embed(text, dim)}
            for i, text in enumerate(inputs)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )

    async def transcriptions(request: Request) -> Response:
        """The multipart upload is checked the way OpenAI checks it: a model, a file with
        a name and a type, and known fields only."""
        async with request.form() as form:
            upload = form.get("file")
            fields = {k: v for k, v in form.items() if k != "file"}
            if not isinstance(upload, UploadFile) or "model" not in fields:
                return JSONResponse({"error": {"message": "file and model are required"}}, 400)
            unknown = set(fields) - {"model", "language", "prompt", "response_format"}
            if unknown:
                return JSONResponse({"error": {"message": f"unknown {sorted(unknown)}"}}, 400)
            data = await upload.read()
            behaviour.uploads.append(
                {
                    **fields,
                    "filename": upload.filename,
                    "content_type": upload.content_type,
                    "size": len(data),
                    "data": data,
                }
            )
        if behaviour.fail_with:
            status = behaviour.fail_with.pop(0)
            return JSONResponse({"error": {"message": "fake failure"}}, status)
        await asyncio.sleep(behaviour.transcription_delay_s)
        return JSONResponse({"text": behaviour.transcript})

    async def configure(request: Request) -> Response:
        """Change the behaviour from another process (benchmarks)."""
        for name, value in orjson.loads(await request.body()).items():
            setattr(behaviour, name, value)
        return JSONResponse({})

    return Starlette(
        routes=[
            Route("/behaviour", configure, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        ]
    )
