"""Voice-activity detection for `server_vad` streams: the Silero VAD model that ships
inside faster-whisper (ONNX, run by onnxruntime on one thread), fed as audio arrives.

The model takes 32 ms windows of 16 kHz audio (512 samples, plus the 64 samples before
them as context) and carries an LSTM state from window to window; a batch of windows is
one sequence, so each piece of a stream is classified in one call that continues the
stream's state. Audio at other rates is resampled linearly first (enough for telling
speech from silence; the transcriber gets the original audio). Runs on the event loop:
the cost per second of audio is small (docs/benchmarks.md, audio section).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Protocol

RATE = 16000
WINDOW = 512  # samples: 32 ms at 16 kHz
CONTEXT = 64  # samples of the previous window the model sees with each window


class VoiceActivity(Protocol):
    window_ms: float

    def feed(self, pcm: bytes) -> list[float]:
        """Speech probability of each whole window the audio so far completes."""


def available() -> bool:
    try:
        import faster_whisper  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _session() -> Any:
    import faster_whisper
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    path = Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"
    return onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"], sess_options=options
    )


class SileroVad:
    window_ms = WINDOW * 1000 / RATE

    def __init__(self, sample_rate: int) -> None:
        import numpy as np

        self._np = np
        self._session = _session()
        self._rate = sample_rate
        self._state = (np.zeros((1, 1, 128), "float32"), np.zeros((1, 1, 128), "float32"))
        self._context = np.zeros(CONTEXT, "float32")
        self._pending = np.zeros(0, "float32")  # 16 kHz samples short of a window
        self._position = 0.0  # resampling: where the next output sample falls
        self._previous = 0.0  # resampling: the last input sample of the previous piece

    @classmethod
    def for_stream(cls, sample_rate: int) -> SileroVad:
        return cls(sample_rate)

    def feed(self, pcm: bytes) -> list[float]:
        np = self._np
        samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], "<i2").astype("float32")
        samples /= 32768.0
        if self._rate != RATE:
            samples = self._resample(samples)
        pending = np.concatenate([self._pending, samples])
        count = len(pending) // WINDOW
        self._pending = pending[count * WINDOW :]
        if count == 0:
            return []
        windows = pending[: count * WINDOW].reshape(count, WINDOW)
        contexts = np.concatenate([self._context[None, :], windows[:-1, -CONTEXT:]])
        batch = np.concatenate([contexts, windows], axis=1)
        output, h, c = self._session.run(
            None, {"input": batch, "h": self._state[0], "c": self._state[1]}
        )
        self._state = (h, c)
        self._context = windows[-1, -CONTEXT:].copy()
        return [float(p) for p in output.reshape(count, -1)[:, 0]]

    def _resample(self, samples: Any) -> Any:
        np = self._np
        extended = np.concatenate([[self._previous], samples])
        step = self._rate / RATE
        positions = np.arange(self._position, len(extended) - 1, step)
        self._position = (positions[-1] + step if len(positions) else self._position) - (
            len(extended) - 1
        )
        self._previous = float(extended[-1])
        return np.interp(positions, np.arange(len(extended)), extended).astype("float32")
