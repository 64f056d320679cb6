"""The composition root: every service built once from the settings, each feature's
frame handlers registered with the router, the HTTP routes, and the process's
start-up and shut-down (docs/architecture.md draws the result)."""

from __future__ import annotations

import gc
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway.audio import handlers as audio_handlers
from gateway.audio import vad
from gateway.audio.config import AudioConfig
from gateway.audio.service import AudioService
from gateway.audio.spool import private_directory
from gateway.auth import Authenticator, PatientIdentity
from gateway.chat.config import ChatConfig
from gateway.chat.handlers import ChatHandlers
from gateway.chat.replies import ChatRequest
from gateway.chat.routes import ChatRoute
from gateway.chat.service import ChatService
from gateway.console.routes import console_routes
from gateway.export.routes import FhirRoutes
from gateway.export.webhook import ExportConfig, FhirExporter
from gateway.http.contract import asyncapi, upgrade_required
from gateway.http.health import Readiness, healthz
from gateway.http.limits import BodyLimitMiddleware, RestRateLimit
from gateway.http.metrics import HttpMetricsMiddleware, MetricsEndpoint
from gateway.http.rest import BearerAuth, error_response
from gateway.jwks import JwksKeys
from gateway.memory.worker import EmbeddingWorker, MemoryConfig
from gateway.observe import handlers as observe_handlers
from gateway.observe.audit import AuditLog
from gateway.observe.care_team import CareTeams
from gateway.observe.config import ObserveConfig
from gateway.observe.routes import AdminRoutes, ClinicianRoutes
from gateway.observe.service import ObserveService
from gateway.ops.batching import Batched
from gateway.providers import NO_TRANSCRIPTION, Models, make_models
from gateway.realtime import control
from gateway.realtime.broker import Broker
from gateway.realtime.broker.choose import broker_for
from gateway.realtime.endpoint import WS_PATH, websocket_endpoint
from gateway.realtime.hub import Hub
from gateway.realtime.presence import PresenceService
from gateway.realtime.presence_stores import presence_store_for
from gateway.realtime.revocations import RevocationWatcher
from gateway.realtime.router import Router
from gateway.realtime.service import RealtimeConfig, RealtimeService
from gateway.settings import Settings
from gateway.summaries.job import SummaryConfig, SummaryJob
from gateway.sync.handlers import SyncHandlers
from gateway.sync.routes import SyncRoutes
from gateway.sync.service import SyncService
from gateway.sync.writes import ChangeWriter
from protocol.codec import ProtocolError
from protocol.frames import ChatResume
from storage.database import Database, DatabaseUnavailable, PoolExhausted
from storage.replies import ready_states

log = logging.getLogger(__name__)


class Services:
    """What one gateway process runs, wired together."""

    def __init__(self, settings: Settings, database_url: str) -> None:
        self.settings = settings
        self.db = Database(
            database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            acquire_timeout_s=settings.db_acquire_timeout_s,
        )
        url = settings.redis_url
        self.broker: Broker = broker_for(url)
        self.hub = Hub(self.broker)
        self.presence = PresenceService(presence_store_for(url), self.hub)
        # session.ready's reads, made together while one is on its way (a reconnect storm)
        self._ready_states = Batched(self._read_ready_states)
        self.authenticator = Authenticator(
            settings.secret_key.get_secret_value(),
            jwks=JwksKeys(
                settings.jwks_url,
                max_age_s=settings.jwks_cache_s,
                min_refresh_s=settings.jwks_min_refresh_s,
            )
            if settings.jwks_url
            else None,
            dev_token=settings.dev_token.get_secret_value() if settings.debug else None,
            max_ttl_s=settings.max_token_ttl_s,
            issuer=settings.jwt_issuer,
            allow_hs256=settings.jwt_allow_hs256,
        )
        self.models = make_models(settings)
        self.embedding_worker = EmbeddingWorker(
            MemoryConfig.from_settings(settings), db=self.db, embedder=self.models.embedder
        )
        export = ExportConfig.from_settings(settings)
        self.fhir_exporter = FhirExporter(export, self.db) if export else None
        writer = ChangeWriter(self.db, self.hub)
        self.sync = SyncService(
            self.db,
            writer,
            max_writes_per_patient=settings.max_writes_per_patient,
            page_bytes=settings.sync_page_bytes or settings.send_queue_bytes // 4,
        )
        self.chat = ChatService(
            ChatConfig.from_settings(settings),
            db=self.db,
            hub=self.hub,
            writer=writer,
            models=self.models,
        )
        self.summaries = summary_job(settings, self.db, writer, self.models)
        self.spool_dir = private_directory(settings.audio_spool_dir)
        self.audio = AudioService(
            AudioConfig.from_settings(settings),
            hub=self.hub,
            transcriber=self.models.transcriber,
            spool_dir=self.spool_dir,
            respond=self._voice_message,
            vad=vad.SileroVad.for_stream if vad.available() else None,
            unavailable_reason=NO_TRANSCRIPTION,
        )
        observe_config = ObserveConfig.from_settings(settings)
        self.audit_log = AuditLog(self.db, observe_config.audit_retention_days)
        self.care_teams = CareTeams(self.db)
        self.observe = ObserveService(
            observe_config,
            db=self.db,
            hub=self.hub,
            presence=self.presence,
            audit=self.audit_log,
            version_of=self.sync.version,
            pull=self._pull,
            resumes=self.chat.resumes.ask,
        )
        self.router = Router()
        control.register(self.router, self.authenticator)
        SyncHandlers(self.sync).register(self.router)
        ChatHandlers(self.chat).register(self.router)
        audio_handlers.register(self.router, self.audio)
        observe_handlers.register(self.router, self.observe)
        self.realtime = RealtimeService(
            RealtimeConfig.from_settings(settings),
            hub=self.hub,
            presence=self.presence,
            authenticator=self.authenticator,
            router=self.router,
            providers=self.models.providers,
            sync_version=self.sync.version,
            ready_state=self._ready_state,
        )
        self.revocations = RevocationWatcher(
            self.db, self.authenticator.revoked, self.realtime, settings.revocation_check_s
        )

    def routes(self) -> list[BaseRoute]:
        auth = BearerAuth(self.authenticator, on_refused=self.observe.refused_request)
        readiness = Readiness(
            {"database": self.db.ping, "broker": self.broker.ping},
            draining=lambda: self.realtime.draining,
        )
        return [
            Route("/healthz", healthz, methods=["GET"]),
            Route("/asyncapi.json", asyncapi, methods=["GET"]),
            # A plain GET of the socket's path (a browser, curl): how to connect instead.
            Route(WS_PATH, upgrade_required, methods=["GET"]),
            Route("/readyz", readiness.endpoint, methods=["GET"]),
            Route("/metrics", MetricsEndpoint(readiness, self.db.use).endpoint, methods=["GET"]),
            Route("/sync/", SyncRoutes(self.sync, auth).endpoint, methods=["GET", "POST"]),
            Route("/chat/", ChatRoute(self.chat, auth).endpoint, methods=["POST"]),
            *AdminRoutes(self.care_teams, auth).routes(),
            *ClinicianRoutes(self.care_teams, auth).routes(),
            *FhirRoutes(self.db, auth, self.audit_log.write).routes(),
            *console_routes(),
        ]

    async def start(self) -> None:
        await self.db.open()
        await self.revocations.start()
        await self.hub.start()
        self.presence.start()
        self.audit_log.start()
        self.observe.start()
        self.embedding_worker.start()
        if self.fhir_exporter is not None:
            self.fhir_exporter.start()
        self.summaries.start()

    async def close(self) -> None:
        await self.revocations.close()
        await self.embedding_worker.close()
        if self.fhir_exporter is not None:
            await self.fhir_exporter.close()
        await self.summaries.close()
        await self.observe.close()
        await self.audit_log.close()
        await self.audio.close()
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        await self.chat.close()
        await self.models.close()
        await self.presence.close()
        await self.hub.close()
        await self.db.close()

    async def _voice_message(
        self,
        patient: PatientIdentity,
        thread_id: UUID,
        text: str,
        key: str,
        notify: Callable[[ProtocolError], None],
    ) -> ProtocolError | None:
        """A transcript enters the conversation like a typed message (voice -> chat)."""
        request = ChatRequest(
            patient_id=patient.patient_id,
            thread_id=thread_id,
            text=text,
            device_id=patient.device_key,
            client_message_id=key,
            source="voice",
        )
        outcome = await self.chat.accept(request, ack=lambda _: None, notify=notify)
        return outcome if isinstance(outcome, ProtocolError) else None

    async def _read_ready_states(
        self, patient_ids: list[UUID]
    ) -> dict[UUID, tuple[int, list[UUID]]]:
        async with self.db.acquire(read_only=True) as conn:
            return await ready_states(conn, patient_ids)

    async def _ready_state(self, patient_id: UUID) -> tuple[int, list[ChatResume]]:
        """A socket's session.ready: the sync version and the streaming replies in one
        round trip (shared with the sockets connecting meanwhile), then the replies' text
        so far (realtime -> sync, chat)."""
        version, streaming = await self._ready_states.get(patient_id)
        try:
            resumes = await self.chat.resumes.collect(patient_id, streaming)
        except Exception as exc:  # the replies still reach the device through sync
            log.warning("resuming replies failed: %s", type(exc).__name__)
            resumes = []
        return version, resumes

    async def _pull(self, patient_id: UUID, since: int, limit: int) -> tuple[int, list[Any], bool]:
        """sync.pull for observers (sync -> observe)."""
        pulled = await self.sync.pull(patient_id, since, limit)
        return pulled.version, pulled.changes, pulled.has_more

    async def drain(self) -> None:
        """Before shutting down: sockets are told to reconnect elsewhere, in-flight work
        (their frames' and the replies still streaming) gets DRAIN_SECONDS to end."""
        await self.realtime.drain(self.settings.drain_seconds, self.chat.in_flight())


def summary_job(
    settings: Settings, db: Database, writer: ChangeWriter, models: Models
) -> SummaryJob:
    """The summary job on these models (the extractive summary when chat is offline)."""
    return SummaryJob(
        SummaryConfig.from_settings(settings),
        db=db,
        writer=writer,
        chat=models.chat,
        embedder=models.embedder,
        offline=models.chat.name == "offline",
    )


def create_app(settings: Settings, *, database_url: str) -> Starlette:
    """The gateway for a database whose schema is already prepared (`prepare_schema`)."""
    services = Services(settings, database_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await services.start()
        # What start-up made lives as long as the process: keep it out of the collector's
        # full passes, whose pauses would otherwise show up as delivery latency.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await services.close()

    app = Starlette(
        debug=False,  # tracebacks in responses could carry patient data
        routes=services.routes(),
        exception_handlers={PoolExhausted: database_busy, DatabaseUnavailable: database_down},
        middleware=[
            Middleware(HttpMetricsMiddleware),
            Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
        ],
        lifespan=lifespan,
    )
    app.state.services = services
    return app


async def database_busy(request: Request, exc: Exception) -> Response:
    return error_response(503, "busy", "the database is busy; retry shortly", {"Retry-After": "1"})


async def database_down(request: Request, exc: Exception) -> Response:
    message = "the database is unreachable; nothing was stored, retry shortly"
    return error_response(503, "unavailable", message, {"Retry-After": "1"})


def asgi_entry(app: Starlette) -> ASGIApp:
    """What the server runs: `/v1/ws` goes straight to the WebSocket endpoint with the
    server's own `send` (the hot path of every fan-out delivery skips Starlette's
    per-message wrappers); everything else, lifespan included, goes to `app`."""
    services: Services | None = getattr(app.state, "services", None)
    if services is None:
        return app  # not a gateway (the suites serve stand-ins the same way)

    settings = services.settings
    rate_limit = RestRateLimit(settings.rest_requests_per_s, settings.rest_burst)

    async def entry(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == WS_PATH:
            scope["app"] = app
            await websocket_endpoint(services.realtime, WebSocket(scope, receive, send), send)
            return
        if scope["type"] == "http" and not rate_limit.admits(scope):
            await rate_limit.refuse(send)
            return
        await app(scope, receive, send)

    return entry
