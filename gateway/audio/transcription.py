"""Transcription: at most `concurrency` at once on this process (past that, `busy`),
retried while a failure is retryable and nothing came back, the transcript published to
every device of the patient and, when the stream asked for it, handed to the
conversation as a voice message."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from uuid import UUID

from gateway import tracing
from gateway.audio.config import AudioConfig
from gateway.audio.metrics import AUDIO_FAILURES, TRANSCRIPTION_RTF, TRANSCRIPTION_SECONDS
from gateway.audio.stream import AudioStream
from gateway.auth import PatientIdentity
from gateway.providers.base import Audio, Transcriber, Transcript, UpstreamFailure
from gateway.realtime.broker import BrokerUnavailable
from gateway.realtime.hub import Hub, patient_topic
from gateway.realtime.router import Peer
from protocol.codec import ProtocolError
from protocol.codes import ErrorCode
from protocol.frames import AudioTranscript, ServerFrame

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 8.0
# A transcript for the conversation: (patient, thread, text, an id naming this utterance
# for idempotency, who hears about a refusal) -> the refusal, if any.
Respond = Callable[
    [PatientIdentity, UUID, str, str, Callable[[ProtocolError], None]],
    Awaitable[ProtocolError | None],
]


class Transcriptions:
    def __init__(
        self, config: AudioConfig, *, hub: Hub, transcriber: Transcriber, respond: Respond
    ) -> None:
        self.config = config
        self.hub = hub
        self.transcriber = transcriber
        self.respond = respond
        self._free_slots = config.concurrency
        self.closing = False

    def take_slot(self) -> bool:
        """One of the process's transcription slots, if one is free (None waits)."""
        if self._free_slots == 0 or self.closing:
            return False
        self._free_slots -= 1
        return True

    def free_slot(self) -> None:
        self._free_slots += 1

    def busy(self, ref: str | None) -> ProtocolError:
        return ProtocolError(
            ErrorCode.BUSY,
            f"audio: {self.config.concurrency} transcriptions are running on this gateway; "
            "commit again shortly",
            ref,
            retryable=True,
        )

    async def run(
        self,
        peer: Peer[PatientIdentity],
        stream: AudioStream,
        utterance: int,
        audio: Audio,
        ref: str | None,
    ) -> None:
        """Transcribe (holding a slot taken by the caller), publish the transcript to the
        patient's topic, and hand it to the conversation when the stream asked for it."""
        try:
            transcript = await self._transcript(audio)
        except UpstreamFailure as failure:
            AUDIO_FAILURES.labels("bad_audio" if failure.kind == "bad_audio" else "upstream").inc()
            log.warning("transcription failed: %s", failure.kind)
            peer.send_error(failure_error(failure, ref))
            return
        finally:
            self._free_slots += 1
        try:
            await self._deliver(peer, stream, utterance, transcript, ref)
        except Exception as exc:  # the database or the broker failed: say so, keep going
            log.error("a transcript's delivery failed: %s", type(exc).__name__, exc_info=exc)
            failed = ProtocolError(ErrorCode.INTERNAL, "internal error", ref, retryable=True)
            peer.send_error(failed)

    async def _deliver(
        self,
        peer: Peer[PatientIdentity],
        stream: AudioStream,
        utterance: int,
        transcript: Transcript,
        ref: str | None,
    ) -> None:
        patient, start = stream.patient, stream.start
        frame = AudioTranscript(
            patient_id=patient.patient_id,
            thread_id=start.thread_id,
            stream_id=stream.id,
            utterance=utterance,
            text=transcript.text,
            duration_ms=round(transcript.duration_s * 1000),
            language=transcript.language,
        )
        await self.publish(patient.patient_id, frame)
        if start.respond and transcript.text.strip():
            key = f"voice:{stream.id}:{utterance}"

            def notify(error: ProtocolError) -> None:
                peer.send_error(replace(error, ref=ref))

            refused = await self.respond(patient, start.thread_id, transcript.text, key, notify)
            if refused is not None:
                notify(refused)

    async def _transcript(self, audio: Audio) -> Transcript:
        """The transcriber's result, retried while failures are retryable."""
        assert self.transcriber is not None
        name = self.transcriber.name
        with tracing.span("audio.transcribe", model=name, bytes=len(audio.data)) as span:
            transcript = await self._attempts(audio, span)
            span.set(audio_seconds=round(transcript.duration_s, 3))
            return transcript

    async def _attempts(self, audio: Audio, span: tracing.Span) -> Transcript:
        assert self.transcriber is not None
        name = self.transcriber.name
        attempt = 0
        while True:
            started = time.monotonic()
            span.set(attempts=attempt + 1)
            try:
                transcript = await self.transcriber.transcribe(audio)
            except UpstreamFailure as failure:
                if not failure.retryable or attempt >= self.config.retries:
                    raise
                delay = min(MAX_BACKOFF_S, self.config.retry_backoff_s * 2**attempt)
                attempt += 1
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                continue
            took = time.monotonic() - started
            TRANSCRIPTION_SECONDS.labels(name).observe(took)
            if transcript.duration_s > 0:
                TRANSCRIPTION_RTF.labels(name).observe(took / transcript.duration_s)
            return transcript

    async def publish(self, patient_id: UUID, frame: ServerFrame) -> None:
        try:
            await self.hub.publish(patient_topic(patient_id), frame)
        except BrokerUnavailable:
            log.warning("publishing %s failed: the broker is unavailable", frame.type)


def failure_error(failure: UpstreamFailure, ref: str | None) -> ProtocolError:
    if failure.kind == "bad_audio":
        return ProtocolError(ErrorCode.INVALID, f"audio: {failure.message}", ref)
    code = ErrorCode.UPSTREAM_TIMEOUT if failure.timeout else ErrorCode.UPSTREAM_ERROR
    return ProtocolError(code, failure.message, ref, retryable=failure.kind != "client_error")
