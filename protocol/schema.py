"""JSON Schema of every frame, for client developers (`painar-gateway schema`)."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from protocol.frames import (
    PROTOCOL_VERSION,
    AnyClientFrame,
    AnyServerFrame,
    MessageFields,
    ThreadFields,
)


def _with_mutation(schema: dict[str, Any]) -> dict[str, Any]:
    """The shapes of a mutation's `data`, which sync.push checks one mutation at a time."""
    defs = schema.setdefault("$defs", {})
    for model in (ThreadFields, MessageFields):
        defs[model.__name__] = model.model_json_schema(ref_template="#/$defs/{model}")
    return schema


def server_frames_schema(ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The server frames' union. Described from the fields, so a frame's `type` (which has
    a default) is marked required: every server frame always carries it, and clients
    discriminate on it."""
    schema = TypeAdapter(AnyServerFrame).json_schema(mode="validation", ref_template=ref_template)
    for model in schema["$defs"].values():
        if "type" in model.get("properties", {}) and "default" in model["properties"]["type"]:
            model["required"] = ["type", *model.get("required", [])]
    return schema


def protocol_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"PainAR wire protocol, version {PROTOCOL_VERSION}",
        "description": (
            "Text frames are JSON objects with a `type`. `client` lists what clients send, "
            "`server` what the gateway sends. Binary frames carry audio: 16 bytes stream_id "
            "(UUID), 4 bytes seq (unsigned 32-bit big-endian), then the audio bytes."
        ),
        "client": _with_mutation(TypeAdapter(AnyClientFrame).json_schema()),
        "server": server_frames_schema(),
    }
