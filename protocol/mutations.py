"""One pushed mutation at a time: its shape, its data, and what devices may write.

A push is applied mutation by mutation: a bad one is rejected alone (with a code and a
message naming the field) and the others still apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from pydantic import ValidationError

from protocol.codec import describe
from protocol.codes import ErrorCode
from protocol.frames import (
    MAX_ID_CHARS,
    Entity,
    MessageFields,
    Mutation,
    PainReportFields,
    ThreadFields,
)

FIELDS: dict[Entity, type[ThreadFields | MessageFields | PainReportFields]] = {
    "thread": ThreadFields,
    "message": MessageFields,
    "pain_report": PainReportFields,
}


@dataclass(frozen=True)
class ValidMutation:
    mutation_id: str
    entity: Entity
    op: Literal["upsert", "delete"]
    id: UUID
    data: ThreadFields | MessageFields | PainReportFields | None  # None for deletes


@dataclass(frozen=True)
class InvalidMutation:
    mutation_id: str
    code: ErrorCode
    message: str


def parse_mutation(raw: Any) -> ValidMutation | InvalidMutation:
    if not isinstance(raw, dict):
        return InvalidMutation("", ErrorCode.INVALID, "mutation: must be an object")
    given = raw.get("mutation_id")
    mutation_id = given[:MAX_ID_CHARS] if isinstance(given, str) else ""
    try:
        mutation = Mutation.model_validate(raw)
    except ValidationError as exc:
        return InvalidMutation(mutation_id, ErrorCode.INVALID, describe(exc))
    if mutation.op == "delete":
        if mutation.data is not None:
            return InvalidMutation(
                mutation_id, ErrorCode.INVALID, "data: must be null for a delete"
            )
        return ValidMutation(mutation_id, mutation.entity, mutation.op, mutation.id, None)
    if mutation.data is None:
        return InvalidMutation(mutation_id, ErrorCode.INVALID, "data: required for an upsert")
    try:
        data = FIELDS[mutation.entity].model_validate(mutation.data)
    except ValidationError as exc:
        return InvalidMutation(mutation_id, ErrorCode.INVALID, "data." + describe(exc))
    if isinstance(data, MessageFields) and data.role != "user":
        return InvalidMutation(
            mutation_id, ErrorCode.FORBIDDEN, "data.role: devices write only user messages"
        )
    return ValidMutation(mutation_id, mutation.entity, mutation.op, mutation.id, data)
