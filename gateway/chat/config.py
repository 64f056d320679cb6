"""Chat's settings, read once from the environment's (gateway/settings.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from uuid import UUID

from gateway.settings import Settings


@dataclass(frozen=True)
class ChatConfig:
    coalesce_s: float
    reply_lease_s: float
    max_replies_per_patient: int
    retrieval_k: int
    retrieval_min_similarity: float
    history_tokens: int
    first_token_timeout_s: float
    idle_timeout_s: float
    retries: int
    retry_backoff_s: float
    # Namespace of the ids of messages sent with a client_message_id (a resend names the
    # same message): derived from SECRET_KEY, so that nobody can compute another
    # patient's next id and take it first.
    message_ids: UUID

    @classmethod
    def from_settings(cls, settings: Settings) -> ChatConfig:
        secret = settings.secret_key.get_secret_value().encode()
        return cls(
            coalesce_s=settings.chat_coalesce_ms / 1000,
            reply_lease_s=settings.reply_lease_s,
            max_replies_per_patient=settings.max_replies_per_patient,
            retrieval_k=settings.retrieval_k,
            retrieval_min_similarity=settings.retrieval_min_similarity,
            history_tokens=settings.chat_history_tokens,
            first_token_timeout_s=settings.chat_first_token_timeout_s,
            idle_timeout_s=settings.chat_idle_timeout_s,
            retries=settings.chat_retries,
            retry_backoff_s=settings.chat_retry_backoff_s,
            message_ids=UUID(bytes=hashlib.sha256(b"painar message ids:" + secret).digest()[:16]),
        )
