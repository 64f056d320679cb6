"""Traces: two gateway processes export spans over OTLP/HTTP to a receiver on loopback (a
stand-in for an OpenTelemetry collector). A push on process A reaches the patient's phone
on process B, then a chat exchange runs on A: the spans of every stage arrive, B's
deliveries are children of A's spans, and no exported byte holds the patient's text."""

from __future__ import annotations

import gzip
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import tracing
from tests.chatkit import Upstream, chat_send, until
from tests.conftest import RedisServer, gateway_process
from tests.support import TIMEOUT_S, eventually, serve_app
from tests.wsclient import patient_token, send, session


@dataclass(frozen=True)
class Exported:
    service: str
    name: str
    trace_id: bytes
    span_id: bytes
    parent_id: bytes
    attributes: dict[str, Any]


@dataclass
class Receiver:
    url: str = ""
    bodies: list[bytes] = field(default_factory=list)

    def spans(self) -> list[Exported]:
        found = []
        for body in self.bodies:
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource.resource.attributes
                    if a.key == "service.name"
                )
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        values = {a.key: a.value for a in span.attributes}
                        found.append(
                            Exported(
                                service,
                                span.name,
                                span.trace_id,
                                span.span_id,
                                span.parent_span_id,
                                values,
                            )
                        )
        return found


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    received = Receiver()

    async def traces(request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        received.bodies.append(body)
        return Response(b"", media_type="application/x-protobuf")

    app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
    async with serve_app(app) as (_, url):
        received.url = url
        yield received


def traced(receiver: Receiver, upstream: Upstream, name: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": name,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OPENAI_BASE_URL": upstream.url,
    }


def message_push(thread: uuid.UUID, text: str) -> dict[str, Any]:
    thread_mutation = {
        "mutation_id": "t1",
        "entity": "thread",
        "op": "upsert",
        "id": str(thread),
        "data": {"title": "knee"},
    }
    message = {
        "mutation_id": "m1",
        "entity": "message",
        "op": "upsert",
        "id": str(uuid.uuid4()),
        "data": {"thread_id": str(thread), "role": "user", "content": text},
    }
    return {"type": "sync.push", "id": "p1", "mutations": [thread_mutation, message]}


async def test_a_push_and_a_chat_exchange_are_traced_across_two_processes_without_their_text(
    database_url: str,
    redis_server: RedisServer,
    upstream: Upstream,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    pushed = f"pushed-{secrets.token_hex(8)}"
    asked = f"asked-{secrets.token_hex(8)}"
    answered = f"answered-{secrets.token_hex(8)}"
    upstream.behaviour.tokens = [answered, " and more"]
    patient, thread = uuid.uuid4(), uuid.uuid4()
    a_env = traced(receiver, upstream, "gateway-a")
    b_env = traced(receiver, upstream, "gateway-b")
    async with (
        gateway_process(database_url, redis_server.url, tmp_path / "a.log", **a_env) as (_, a),
        gateway_process(database_url, redis_server.url, tmp_path / "b.log", **b_env) as (_, b),
        session(a, patient_token(patient, "headset")) as (headset, _),
        session(b, patient_token(patient, "phone")) as (phone, _),
    ):
        await send(headset, message_push(thread, pushed))
        await until(headset, "sync.ack")
        assert (await until(phone, "sync.delta"))[1]["changes"]
        await send(headset, chat_send(thread, asked))
        await until(headset, "chat.done")
        await until(phone, "chat.done")

        async def exported() -> bool:
            # Spans go out in the order they end: a reply's own span ends last on A, and
            # chat.done is the last frame B delivers.
            spans = receiver.spans()
            return any(s.name == "chat.reply" for s in spans) and any(
                s.service == "gateway-b"
                and s.name == "hub.deliver"
                and s.attributes["painar.frame_type"].string_value == "chat.done"
                for s in spans
            )

        await eventually(exported, timeout=TIMEOUT_S, what="the spans to be exported")

    spans = receiver.spans()
    by_id = {s.span_id: s for s in spans}

    def parent(span: Exported) -> Exported:
        assert span.parent_id in by_id, f"{span.name}'s parent was not exported"
        return by_id[span.parent_id]

    def one(name: str, service: str = "gateway-a") -> Exported:
        found = [s for s in spans if s.name == name and s.service == service]
        assert len(found) >= 1, f"no {name} span from {service}"
        return found[0]

    # The push: sync.push > sync.write > sync.commit, sync.publish; B's delivery of its
    # sync.delta is a child of A's publish, in the same trace.
    push = one("sync.push")
    assert push.parent_id == b"" and push.attributes["painar.mutations"].int_value == 2
    write = one("sync.write")
    assert parent(write) == push
    assert parent(one("sync.commit")) == write
    publish = [s for s in spans if s.name == "sync.publish" and parent(parent(s)) == push][0]
    b_deliveries = [s for s in spans if s.name == "hub.deliver" and s.service == "gateway-b"]
    delta_on_b = [s for s in b_deliveries if s.parent_id == publish.span_id]
    assert delta_on_b and delta_on_b[0].trace_id == push.trace_id
    assert delta_on_b[0].attributes["painar.frame_type"].string_value == "sync.delta"

    # The chat exchange: chat.send > chat.reply > chat.retrieve, chat.relay > chat.model,
    # chat.done; the message's embedding and store under chat.send.
    send_span = one("chat.send")
    assert send_span.parent_id == b""
    assert send_span.attributes["painar.outcome"].string_value == "accepted"
    reply = one("chat.reply")
    assert parent(reply) == send_span
    assert reply.attributes["painar.finish_reason"].string_value == "stop"
    assert parent(one("chat.retrieve")) == reply
    relay = one("chat.relay")
    assert parent(relay) == reply and relay.attributes["painar.tokens"].int_value == 2
    assert parent(one("chat.model")) == relay
    assert parent(one("chat.done")) == reply
    embeds = {s.attributes["painar.what"].string_value: s for s in spans if s.name == "chat.embed"}
    assert parent(embeds["message"]) == send_span and parent(embeds["reply"]) == one("chat.done")
    assert any(parent(s) == send_span for s in spans if s.name == "sync.write")
    # The reply's words reached B as children of A's relay.
    relayed = [s for s in b_deliveries if s.parent_id == relay.span_id]
    assert relayed and {s.attributes["painar.frame_type"].string_value for s in relayed} == {
        "chat.delta"
    }

    # Each connect: ws.connect with ws.auth and ws.ready under it, on both processes.
    for service in ("gateway-a", "gateway-b"):
        connect = one("ws.connect", service)
        assert connect.attributes["painar.outcome"].string_value == "ready"
        assert parent(one("ws.auth", service)) == connect
        assert parent(one("ws.ready", service)) == connect

    # Not one exported byte holds what the patient wrote, asked or was answered.
    raw = b"".join(receiver.bodies)
    for text in (pushed, asked, answered, "knee"):
        assert text.encode() not in raw, f"the traces hold patient text ({text!r})"


def test_a_span_attribute_outside_the_list_is_refused_and_tracing_off_costs_nothing() -> None:
    assert not tracing.enabled()
    assert tracing.span("chat.send", patient_id="x") is tracing.OFF
    assert tracing.wire_context() == b""
    with pytest.raises(ValueError, match="'text' is not in gateway.tracing.ATTRIBUTES"):
        tracing.attributes_of({"text": "my knee hurts"})
