"""The FHIR export worker, one per gateway process when FHIR_WEBHOOK_URL is set: claims
due resources from the outbox (sql/0011, sql/0013: pain reports' Observations, thread
summaries' DocumentReferences), sends them as one transaction Bundle to the
FHIR server's base URL, and takes them off once the server answers 2xx. A failure (an
error status, no answer in time, a refused connection) keeps them queued, due again after
a doubling delay of at most FHIR_EXPORT_MAX_BACKOFF_S; its reason (a status or an error
type, never data) stays with the rows and is counted. A restart resumes where it stopped,
and a resend changes nothing on the server (PUT and DELETE by id)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import orjson

from gateway.export.fhir import FHIR_JSON, transaction
from gateway.export.metrics import FHIR_FAILURES, FHIR_QUEUE_DEPTH, FHIR_SECONDS, FHIR_SENT
from gateway.ops.polling import Every, poll_forever
from gateway.settings import Settings
from storage.database import Database
from storage.fhir_outbox import Due, back_off, claim, depth, sent

log = logging.getLogger(__name__)

DEPTH_EVERY_S = 5.0


@dataclass(frozen=True)
class ExportConfig:
    url: str  # the FHIR server's base URL
    token: str | None  # sent as `Authorization: Bearer` when set
    batch: int
    poll_s: float
    timeout_s: float
    max_backoff_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ExportConfig | None:
        if not settings.fhir_webhook_url:
            return None
        token = settings.fhir_webhook_token
        return cls(
            url=settings.fhir_webhook_url,
            token=token.get_secret_value() if token else None,
            batch=settings.fhir_export_batch,
            poll_s=settings.fhir_export_poll_s,
            timeout_s=settings.fhir_export_timeout_s,
            max_backoff_s=settings.fhir_export_max_backoff_s,
        )


class FhirExporter:
    def __init__(self, config: ExportConfig, db: Database) -> None:
        self.config = config
        self.db = db
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        self.http = httpx.AsyncClient(headers=headers, timeout=config.timeout_s)
        self._task: asyncio.Task[None] | None = None
        self._depth_due = Every(DEPTH_EVERY_S)

    def start(self) -> None:
        work = poll_forever(
            self._step, batch=self.config.batch, poll_s=self.config.poll_s, what="FHIR export"
        )
        self._task = asyncio.create_task(work)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.http.aclose()

    async def run_once(self) -> int:
        """Send one Bundle of what is due; how many reports were taken."""
        config = self.config
        async with self.db.acquire() as conn:
            # Leased for longer than an answer may take: a dead process's rows come back.
            due = await claim(conn, config.batch, config.timeout_s * 2 + 10)
        if not due:
            return 0
        reports = [d.report for d in due if d.report is not None]
        summaries = [(d.summary, d.patient_id) for d in due if d.summary is not None]
        gone = [(d.resource, d.resource_id) for d in due if d.report is None and d.summary is None]
        bundle = transaction(reports, summaries, gone, datetime.now(UTC))
        failure = await self._send(bundle)
        async with self.db.acquire() as conn:
            if failure is None:
                await sent(conn, due)
                FHIR_SENT.labels("put").inc(len(reports) + len(summaries))
                FHIR_SENT.labels("delete").inc(len(gone))
            else:
                FHIR_FAILURES.inc()
                log.warning("a FHIR transaction of %d resource(s) failed: %s", len(due), failure)
                await back_off(conn, due, self._delay(due), failure)
        return len(due)

    async def _send(self, bundle: dict[str, object]) -> str | None:
        """None when the server took the Bundle; otherwise why not (no data in it)."""
        started = time.perf_counter()
        try:
            response = await self.http.post(self.config.url, content=orjson.dumps(bundle))
        except httpx.HTTPError as exc:
            return type(exc).__name__
        finally:
            FHIR_SECONDS.observe(time.perf_counter() - started)
        if response.is_success:
            return None
        return f"HTTP {response.status_code}"

    def _delay(self, due: list[Due]) -> float:
        attempts = max(d.attempts for d in due)
        return float(min(self.config.max_backoff_s, 2.0 ** min(attempts, 16)))

    async def _step(self) -> int:
        taken = await self.run_once()
        if self._depth_due.due():
            async with self.db.acquire() as conn:
                FHIR_QUEUE_DEPTH.set(await depth(conn))
        return taken
