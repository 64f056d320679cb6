"""What the running gateway shares between its routes and sockets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING
from uuid import UUID

from gateway.auth import Authenticator
from gateway.hub import Hub
from gateway.outbox import Flusher
from gateway.presence import PresenceService
from gateway.providers import Models
from gateway.replies import Replies
from gateway.settings import Settings
from protocol.frames import Limits, Providers
from storage.database import Pool
from storage.memories import exact_limit_for

if TYPE_CHECKING:
    from gateway.session import Session


@dataclass
class Runtime:
    settings: Settings
    pool: Pool
    hub: Hub
    presence: PresenceService
    authenticator: Authenticator
    models: Models
    replies: Replies = field(default_factory=Replies)
    sessions: set[Session] = field(default_factory=set)
    flusher: Flusher = field(default_factory=Flusher)
    draining: bool = False

    @property
    def limits(self) -> Limits:
        s = self.settings
        return Limits(
            max_frame_bytes=s.max_frame_bytes,
            max_audio_bytes=s.max_audio_bytes,
            frames_per_s=s.frames_per_s,
            burst=s.burst,
        )

    @cached_property
    def message_ids(self) -> UUID:
        """Namespace of the ids of messages sent with a client_message_id (a resend names
        the same message): derived from SECRET_KEY, so that nobody can compute another
        patient's next id and take it first."""
        secret = self.settings.secret_key.get_secret_value().encode()
        return UUID(bytes=hashlib.sha256(b"painar message ids:" + secret).digest()[:16])

    @property
    def exact_limit(self) -> int:
        """Up to how many memories a patient's retrieval is an exact scan."""
        configured = self.settings.retrieval_exact_limit
        return exact_limit_for(self.settings.vector_dim) if configured is None else configured

    @property
    def providers(self) -> Providers:
        return self.models.providers
