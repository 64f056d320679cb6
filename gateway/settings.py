"""Settings from the environment and `.env`.

Names the original FastAPI backend used keep their meaning (`DATABASE_URL`,
`OPENAI_API_KEY`, `MODEL_NAME`, `VECTOR_DIM`, `DEBUG`, `SECRET_KEY`, `DEV_TOKEN`,
`SENTRY_DSN`). A bad value stops start-up with one line naming the variable; values are
never echoed, since several are secrets.
"""

from __future__ import annotations

from datetime import time as clock
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway import redis_address

# Accepted only with DEBUG=true, so a deployment that forgets SECRET_KEY refuses to start.
DEV_SECRET_KEY = "painar-development-secret-not-for-production"
DEV_TOKEN = "dev-token"


Capability = Literal["chat", "embedding", "transcription"]


class SettingsError(ValueError):
    """A configuration value is wrong; str() is one line naming the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    database_url: str | None = None
    redis_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    # Per capability, when they are served apart (local servers: llama.cpp for chat, an
    # embedding server, faster-whisper-server); each falls back to OPENAI_BASE_URL.
    chat_base_url: str | None = None
    embedding_base_url: str | None = None
    transcription_base_url: str | None = None
    model_name: str = "gpt-4o-mini"
    embedding_model: str = "text-embedding-3-small"
    transcription_model: str = "whisper-1"
    # pgvector's HNSW index takes at most 2000 dimensions for `vector`.
    vector_dim: Annotated[int, Field(ge=1, le=2000)] = 1536
    debug: bool = False
    secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)
    dev_token: SecretStr = SecretStr(DEV_TOKEN)
    sentry_dsn: str | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    data_dir: Path = Path(".data")
    log_level: str = "INFO"
    # Realtime: authentication, limits advertised in session.ready, drain.
    jwks_url: str | None = None
    # Tokens living longer than this (exp - iat) are refused; JWT_ISSUER, when set, must
    # be the token's `iss`.
    max_token_ttl_s: Annotated[float, Field(ge=60)] = 86400.0
    jwt_issuer: Annotated[str, Field(min_length=1)] | None = None
    # With JWKS_URL set, HS256 tokens (signed with SECRET_KEY) are refused unless allowed.
    jwt_allow_hs256: bool = False
    # Signing keys from JWKS_URL are refetched after JWKS_CACHE_S, and on a token naming
    # an unknown kid at most once per JWKS_MIN_REFRESH_S.
    jwks_cache_s: Annotated[float, Field(gt=0)] = 300.0
    jwks_min_refresh_s: Annotated[float, Field(ge=0)] = 30.0
    revocation_check_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    allowed_origins: Annotated[list[str], NoDecode] = []
    auth_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    heartbeat_s: Annotated[float, Field(gt=0)] = 20.0
    max_frame_bytes: Annotated[int, Field(ge=1024)] = 256 * 1024
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024  # REST request bodies
    max_audio_bytes: Annotated[int, Field(ge=1024)] = 25 * 1024 * 1024
    frames_per_s: Annotated[float, Field(gt=0)] = 100.0
    burst: Annotated[int, Field(ge=1)] = 300
    send_queue_frames: Annotated[int, Field(ge=1)] = 1000
    send_queue_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    # A pulled page's JSON stays under this (unset: a quarter of SEND_QUEUE_BYTES).
    sync_page_bytes: Annotated[int, Field(ge=1024)] | None = None
    drain_seconds: Annotated[float, Field(ge=0)] = 10.0
    db_pool_min: Annotated[int, Field(ge=1)] = 1
    db_pool_max: Annotated[int, Field(ge=1)] = 10
    # Fair shares: waiting for a free connection ends in busy/503 after this long; one
    # patient may have this many replies streaming and pushes being written at once.
    db_acquire_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    max_replies_per_patient: Annotated[int, Field(ge=1)] = 2
    max_writes_per_patient: Annotated[int, Field(ge=1)] = 4
    # A patient's sockets on all processes (devices; observers are not counted), and
    # the REST requests one token's subject may make per second (and at once).
    max_sockets_per_patient: Annotated[int, Field(ge=1)] = 10
    # Frames all of one patient's sockets on a process may send (FRAMES_PER_S and BURST
    # hold per socket): more sockets do not buy a patient more of the gateway.
    patient_frames_per_s: Annotated[float, Field(gt=0)] = 200.0
    patient_burst: Annotated[int, Field(ge=1)] = 300
    rest_requests_per_s: Annotated[float, Field(gt=0)] = 10.0
    rest_burst: Annotated[int, Field(ge=1)] = 30
    # Chat: retrieval, prompt, the upstream's timeouts and retries, delta coalescing.
    retrieval_k: Annotated[int, Field(ge=0, le=50)] = 6
    retrieval_min_similarity: Annotated[float, Field(ge=-1, le=1)] = 0.0
    # Unset: chosen by VECTOR_DIM (storage.memories.exact_limit_for).
    retrieval_exact_limit: Annotated[int, Field(ge=0)] | None = None
    chat_history_tokens: Annotated[int, Field(ge=0)] = 3000
    chat_connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    chat_first_token_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    chat_idle_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    chat_retries: Annotated[int, Field(ge=0, le=10)] = 2
    chat_retry_backoff_s: Annotated[float, Field(ge=0)] = 0.5
    chat_coalesce_ms: Annotated[float, Field(ge=0, le=1000)] = 20.0
    reply_lease_s: Annotated[float, Field(ge=5)] = 60.0
    # Voice: which transcription provider, its limits and resources.
    # Unset: openai when OPENAI_API_KEY or OPENAI_BASE_URL is set, else local when the
    # local-asr extra is installed, else none.
    transcription_provider: Literal["openai", "local", "none"] | None = None
    transcription_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    transcription_cpu_threads: Annotated[int, Field(ge=1, le=64)] = 2
    max_audio_seconds: Annotated[float, Field(gt=0, le=3600)] = 300.0
    audio_idle_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    audio_spool_bytes: Annotated[int, Field(ge=0)] = 2 * 1024 * 1024
    audio_spool_dir: Path | None = None  # unset: a private directory under the system's
    max_audio_streams: Annotated[int, Field(ge=1, le=64)] = 4  # open per socket
    # Observation: the snapshot's size, how often live observations are checked against
    # the care team (a revoked grant ends within about this long), the audit retention.
    observe_snapshot_messages: Annotated[int, Field(ge=0, le=500)] = 50
    observe_recheck_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    audit_retention_days: Annotated[int, Field(ge=1)] = 2192  # six years (HIPAA)
    # Memory: the embedding queue's worker.
    embed_batch: Annotated[int, Field(ge=1, le=2048)] = 64
    embed_poll_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    embed_max_backoff_s: Annotated[float, Field(gt=0)] = 300.0
    embed_rest_factor: Annotated[float, Field(ge=0, le=100)] = 3.0
    # Thread summaries: the daily run's local time (HH:MM; "off": on demand only), its time
    # zone, and what one run may spend.
    summary_at: str | None = "03:00"
    summary_timezone: str = "UTC"
    summary_concurrency: Annotated[int, Field(ge=1, le=32)] = 2
    summary_max_threads: Annotated[int, Field(ge=1)] = 1000
    summary_max_chars: Annotated[int, Field(ge=100, le=4000)] = 600
    # FHIR export: the FHIR server's base URL that pain reports are sent to (unset: none
    # are sent), its bearer token, and how the worker batches and retries.
    fhir_webhook_url: str | None = None
    fhir_webhook_token: SecretStr | None = None
    fhir_export_batch: Annotated[int, Field(ge=1, le=1000)] = 100
    fhir_export_poll_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    fhir_export_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    fhir_export_max_backoff_s: Annotated[float, Field(gt=0)] = 300.0

    @field_validator("database_url")
    @classmethod
    def _postgres_uri(cls, value: str | None) -> str | None:
        if not value:
            return None
        scheme = urlsplit(value).scheme
        # The original backend used SQLAlchemy URLs such as postgresql+psycopg://; the
        # driver suffix means nothing to asyncpg, so it is dropped.
        base = scheme.split("+", 1)[0]
        if base not in ("postgres", "postgresql"):
            raise ValueError("must be a postgresql:// URI")
        return "postgresql" + value[len(scheme) :]

    @field_validator("summary_at")
    @classmethod
    def _clock_time(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("", "off"):
            return None
        try:
            clock.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("must be a time of day such as 03:00, or off") from None
        return value.strip()

    @field_validator("summary_timezone")
    @classmethod
    def _time_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as Europe/Lisbon") from None
        return value

    @property
    def summary_time(self) -> clock | None:
        return clock.fromisoformat(self.summary_at) if self.summary_at else None

    @field_validator("redis_url")
    @classmethod
    def _redis_uri(cls, value: str | None) -> str | None:
        if not value:
            return None
        redis_address.validate(value)
        return value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("sentry_dsn")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return _http_url(value)

    @field_validator(
        "openai_base_url",
        "chat_base_url",
        "embedding_base_url",
        "transcription_base_url",
        "jwks_url",
        "fhir_webhook_url",
    )
    @classmethod
    def _https_off_loopback(cls, value: str | None) -> str | None:
        """Keys, prompts and records travel over these: plain http only to this machine."""
        value = _http_url(value)
        if value is not None and urlsplit(value).scheme == "http" and not _loopback(value):
            raise ValueError("must be https:// (http:// only to localhost)")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @model_validator(mode="after")
    def _secrets_fit_the_mode(self) -> Settings:
        secret = self.secret_key.get_secret_value()
        if not self.debug and secret == DEV_SECRET_KEY:
            raise SettingsError(
                "SECRET_KEY: set a secret of at least 32 characters "
                "(the development default is accepted only with DEBUG=true)"
            )
        if not secret:
            raise SettingsError("SECRET_KEY: must not be empty")
        if not self.debug and len(secret) < 32:
            raise SettingsError("SECRET_KEY: must be at least 32 characters")
        if self.sync_page_bytes is not None and self.sync_page_bytes > self.send_queue_bytes // 2:
            raise SettingsError("SYNC_PAGE_BYTES: must be at most half of SEND_QUEUE_BYTES")
        if self.db_pool_max < self.db_pool_min:
            raise SettingsError("DB_POOL_MAX: must not be below DB_POOL_MIN")
        if self.debug and not _loopback_host(self.host):
            if secret == DEV_SECRET_KEY or self.dev_token.get_secret_value() == DEV_TOKEN:
                raise SettingsError(
                    "DEBUG: on a non-loopback HOST set SECRET_KEY and DEV_TOKEN explicitly "
                    "(the development defaults are published)"
                )
        if self.transcription_provider == "openai" and not self.over_http("transcription"):
            raise SettingsError(
                "TRANSCRIPTION_PROVIDER: openai needs OPENAI_API_KEY, OPENAI_BASE_URL or "
                "TRANSCRIPTION_BASE_URL"
            )
        return self

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    def base_url(self, capability: Capability) -> str | None:
        """Where this capability's OpenAI-compatible server is (None: OpenAI itself)."""
        specific = {
            "chat": self.chat_base_url,
            "embedding": self.embedding_base_url,
            "transcription": self.transcription_base_url,
        }[capability]
        return specific or self.openai_base_url

    def over_http(self, capability: Capability) -> bool:
        """Whether a model server answers this capability (else the offline one does)."""
        return self.openai_api_key is not None or self.base_url(capability) is not None


def _http_url(value: str | None) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value


def _loopback_host(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def _loopback(url: str) -> bool:
    return _loopback_host(urlsplit(url).hostname or "")


def load_settings(**overrides: object) -> Settings:
    """Read the settings; raises SettingsError with one line naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    error = exc.errors(include_input=False, include_url=False)[0]
    ctx = error.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, SettingsError):
        return str(inner)
    loc = error["loc"]
    name = str(loc[0]).upper() if loc else "settings"
    message = str(inner) if inner is not None else error["msg"]
    return f"{name}: {message}"
