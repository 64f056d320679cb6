"""Voice: audio streams in, transcripts out to every device of the patient, and (with
`respond`) into the conversation as a `source: "voice"` message.

Each socket's streams are its own; they end at commit, cancel, an error, the socket's
close or shutdown, and their audio goes with them (gateway/audio/spool.py). With
`server_vad` a voice-activity detector (gateway/audio/vad.py) finds each utterance's end
and it is transcribed on its own while the stream stays open. Transcriptions run at most
`concurrency` at a time on this process; a commit past that is answered `busy`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from uuid import UUID

from gateway.audio.config import AudioConfig
from gateway.audio.metrics import AUDIO_BYTES_IN, AUDIO_FAILURES, AUDIO_STREAMS_OPEN, VAD_UTTERANCES
from gateway.audio.spool import Spool
from gateway.audio.stream import AudioStream, Limits, StreamEnded
from gateway.audio.transcription import Respond, Transcriptions
from gateway.audio.turns import SpeechStarted, SpeechStopped, TurnDetector
from gateway.audio.vad import VoiceActivity
from gateway.auth import PatientIdentity
from gateway.providers.base import Transcriber
from gateway.realtime.hub import Hub
from gateway.realtime.router import Peer
from protocol.codec import ProtocolError
from protocol.codes import ErrorCode
from protocol.frames import (
    Ack,
    AudioAppend,
    AudioCancel,
    AudioCommit,
    AudioSpeechStarted,
    AudioSpeechStopped,
    AudioStart,
    ServerFrame,
)

VadFactory = Callable[[int], VoiceActivity]  # sample rate -> a detector for one stream


class AudioService:
    def __init__(
        self,
        config: AudioConfig,
        *,
        hub: Hub,
        transcriber: Transcriber | None,
        spool_dir: Path,
        respond: Respond,
        vad: VadFactory | None,
        unavailable_reason: str = "",
    ) -> None:
        self.config = config
        self.spool_dir = spool_dir
        self.vad = vad
        self.unavailable_reason = unavailable_reason
        self.transcriptions = (
            None
            if transcriber is None
            else Transcriptions(config, hub=hub, transcriber=transcriber, respond=respond)
        )
        self._streams: dict[Peer[PatientIdentity], dict[UUID, _Open]] = {}

    # ---- frames ---------------------------------------------------------------------

    async def start(self, peer: Peer[PatientIdentity], frame: AudioStart) -> None:
        if self.transcriptions is None:
            message = (
                f"audio: transcription is not enabled on this gateway; {self.unavailable_reason}"
            )
            peer.send_error(ProtocolError(ErrorCode.UNAVAILABLE, message.strip("; "), frame.id))
            return
        if frame.turn_detection == "server_vad" and self.vad is None:
            peer.send_error(
                ProtocolError(
                    ErrorCode.UNAVAILABLE,
                    "turn_detection: server_vad needs the local-asr extra "
                    "(pip install 'painar-gateway[local-asr]')",
                    frame.id,
                )
            )
            return
        streams = self._streams.get(peer)
        if streams is None:
            streams = self._streams[peer] = {}
            peer.on_close(lambda: self._socket_closed(peer))
        if frame.stream_id in streams:
            peer.send_error(
                ProtocolError(
                    ErrorCode.CONFLICT, "stream_id: a stream with this id is open", frame.id
                )
            )
            return
        if len(streams) >= self.config.max_streams_per_socket:
            limit = self.config.max_streams_per_socket
            peer.send_error(
                ProtocolError(
                    ErrorCode.BUSY,
                    f"stream_id: at most {limit} audio streams may be open per socket",
                    frame.id,
                    retryable=True,
                )
            )
            return
        detector = vad = None
        if frame.turn_detection == "server_vad":
            assert self.vad is not None and frame.sample_rate is not None
            vad = self.vad(frame.sample_rate)
            detector = TurnDetector(window_ms=vad.window_ms, silence_ms=frame.silence_ms)
        stream = AudioStream(
            frame,
            peer.identity,
            Spool(self.spool_dir, self.config.spool_memory_bytes),
            Limits(self.config.max_bytes, self.config.max_seconds),
            detector,
        )
        streams[frame.stream_id] = _Open(stream, vad)
        AUDIO_STREAMS_OPEN.inc()
        self._touch(peer, streams[frame.stream_id])
        peer.send(Ack(ref=frame.id))

    async def append(self, peer: Peer[PatientIdentity], frame: AudioAppend) -> None:
        current = self._find(peer, frame.stream_id, None)
        if current is None:
            return
        AUDIO_BYTES_IN.inc(len(frame.audio))
        try:
            ready = current.stream.append(frame.seq, frame.audio)
        except StreamEnded as ended:
            self._end(peer, current, ended.kind, ended.error)
            return
        self._touch(peer, current)
        if ready and current.vad is not None:
            probabilities = current.vad.feed(ready)
            for event in current.stream.speech(probabilities):
                self._speech(peer, current, event)

    async def commit(self, peer: Peer[PatientIdentity], frame: AudioCommit) -> None:
        current = self._find(peer, frame.stream_id, frame.id)
        if current is None:
            return
        stream = current.stream
        problem = stream.check_complete()
        if problem is not None:
            AUDIO_FAILURES.labels("gap" if problem.message.startswith("seq") else "empty").inc()
            peer.send_error(replace(problem, ref=frame.id))
            return
        transcriptions = self._transcriptions()
        # Taken before the detector is told the stream ended: a busy commit changes nothing.
        if not transcriptions.take_slot():
            AUDIO_FAILURES.labels("busy").inc()
            peer.send_error(transcriptions.busy(frame.id))
            return
        utterance, start, end = stream.utterances, stream.transcribed_to, stream.spool.size
        if stream.detector is not None:
            stopped = stream.detector.finish()
            if stopped is not None:  # still speaking: that utterance is the last
                self._speech_event(peer, stream, stopped)
                utterance = stopped.utterance
                start, end = stream.utterance_bytes(stopped)
            elif stream.utterances > 0:
                end = start  # every utterance was transcribed already
        self._forget(peer, current)
        peer.send(Ack(ref=frame.id))
        audio = stream.audio(start, end) if end > start else None
        stream.close()  # the audio to transcribe is in hand; nothing stays on disk
        if audio is None:
            transcriptions.free_slot()
            return
        peer.spawn(transcriptions.run(peer, stream, utterance, audio, frame.id))

    async def cancel(self, peer: Peer[PatientIdentity], frame: AudioCancel) -> None:
        current = self._find(peer, frame.stream_id, None)
        if current is not None:
            self._forget(peer, current)
            current.stream.close()

    async def close(self) -> None:
        """At shutdown: every stream's audio goes."""
        if self.transcriptions is not None:
            self.transcriptions.closing = True
        for peer in tuple(self._streams):
            for current in tuple(self._streams.get(peer, {}).values()):
                self._forget(peer, current)
                current.stream.close()

    # ---- streams ----------------------------------------------------------------------

    def _find(self, peer: Peer[PatientIdentity], stream_id: UUID, ref: str | None) -> _Open | None:
        current = self._streams.get(peer, {}).get(stream_id)
        if current is None:
            peer.send_error(
                ProtocolError(
                    ErrorCode.NOT_FOUND, "stream_id: no open audio stream with this id", ref
                )
            )
        return current

    def _touch(self, peer: Peer[PatientIdentity], current: _Open) -> None:
        """Restart the stream's idle timer."""
        if current.idle is not None:
            current.idle.cancel()
        loop = asyncio.get_running_loop()
        current.idle = loop.call_later(self.config.idle_timeout_s, self._idle, peer, current)

    def _idle(self, peer: Peer[PatientIdentity], current: _Open) -> None:
        current.idle = None
        error = ProtocolError(
            ErrorCode.INVALID,
            f"stream_id: no audio for {self.config.idle_timeout_s:g} s; "
            "the stream was ended and its audio discarded",
        )
        self._end(peer, current, "idle", error)

    def _end(
        self, peer: Peer[PatientIdentity], current: _Open, kind: str, error: ProtocolError
    ) -> None:
        AUDIO_FAILURES.labels(kind).inc()
        self._forget(peer, current)
        current.stream.close()
        peer.send_error(error)

    def _forget(self, peer: Peer[PatientIdentity], current: _Open) -> None:
        streams = self._streams.get(peer, {})
        if streams.pop(current.stream.id, None) is not None:
            AUDIO_STREAMS_OPEN.dec()
        if current.idle is not None:
            current.idle.cancel()
            current.idle = None

    async def _socket_closed(self, peer: Peer[PatientIdentity]) -> None:
        for current in tuple(self._streams.get(peer, {}).values()):
            self._forget(peer, current)
            current.stream.close()
        self._streams.pop(peer, None)

    # ---- utterances (server_vad) ------------------------------------------------------

    def _speech(
        self, peer: Peer[PatientIdentity], current: _Open, event: SpeechStarted | SpeechStopped
    ) -> None:
        stream = current.stream
        self._speech_event(peer, stream, event)
        if not isinstance(event, SpeechStopped):
            return
        VAD_UTTERANCES.inc()
        start, end = stream.utterance_bytes(event)
        transcriptions = self._transcriptions()
        stream.transcribed_to = end
        if not transcriptions.take_slot():
            AUDIO_FAILURES.labels("busy").inc()
            peer.send_error(transcriptions.busy(None))
            return
        audio = stream.audio(start, end)
        peer.spawn(transcriptions.run(peer, stream, event.utterance, audio, None))

    def _speech_event(
        self, peer: Peer[PatientIdentity], stream: AudioStream, event: SpeechStarted | SpeechStopped
    ) -> None:
        patient_id = stream.patient.patient_id
        frame: ServerFrame
        if isinstance(event, SpeechStarted):
            frame = AudioSpeechStarted(
                patient_id=patient_id,
                stream_id=stream.id,
                utterance=event.utterance,
                audio_start_ms=event.start_ms,
            )
        else:
            stream.utterances = event.utterance + 1
            frame = AudioSpeechStopped(
                patient_id=patient_id,
                stream_id=stream.id,
                utterance=event.utterance,
                audio_end_ms=event.end_ms,
            )
        peer.spawn(self._transcriptions().publish(patient_id, frame))

    def _transcriptions(self) -> Transcriptions:
        # Streams open only when transcription is enabled (start() checks).
        assert self.transcriptions is not None
        return self.transcriptions


class _Open:
    """An open stream with what runs beside it."""

    __slots__ = ("stream", "vad", "idle")

    def __init__(self, stream: AudioStream, vad: VoiceActivity | None) -> None:
        self.stream = stream
        self.vad = vad
        self.idle: asyncio.TimerHandle | None = None
