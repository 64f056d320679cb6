"""Real speech for the voice suites: synthesised at test time with espeak-ng, resampled
with sox to 16 kHz mono 16-bit PCM, and encoded into the containers clients send (WAV,
Ogg/Opus, WebM/Opus as a browser's MediaRecorder writes it: no duration, no cues)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import wave
from pathlib import Path

import av
import numpy as np
import pytest

RATE = 16000
BYTES_PER_MS = RATE * 2 // 1000

# What espeak-ng says clearly enough for Whisper tiny.en ("my knee hurts" it does not:
# tiny.en hears "my leader is").
SCRIPTS = {
    "back": "The pain in my lower back is worse in the morning.",
    "sleep": "I could not sleep last night because of the pain.",
}


def tools_missing() -> list[str]:
    return [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]


def synthesise(text: str, directory: Path) -> bytes:
    """`text` spoken, as 16 kHz mono 16-bit little-endian PCM."""
    spoken = directory / "spoken.wav"
    raw = directory / "spoken.raw"
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(spoken), text],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "sox",
            str(spoken),
            "-r",
            str(RATE),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            "-t",
            "raw",
            str(raw),
        ],
        check=True,
        capture_output=True,
    )
    return raw.read_bytes()


def silence(ms: int) -> bytes:
    return b"\x00\x00" * (RATE * ms // 1000)


def as_wav(pcm: bytes, rate: int = RATE) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return out.getvalue()


def as_opus(pcm: bytes, container: str) -> bytes:
    """Opus in `ogg` or `webm`; the WebM is written as a live stream (no duration, no
    cues), the way a browser's MediaRecorder writes it."""
    out = io.BytesIO()
    options = {"live": "1"} if container == "webm" else {}
    with av.open(out, "w", format=container, options=options) as muxer:
        stream = muxer.add_stream("libopus", rate=48000, layout="mono")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = RATE
        for resampled in resampler.resample(frame):
            for packet in stream.encode(resampled):
                muxer.mux(packet)
        for packet in stream.encode(None):
            muxer.mux(packet)
    return out.getvalue()


def encoded(pcm: bytes, audio_format: str) -> bytes:
    if audio_format == "pcm16":
        return pcm
    if audio_format == "wav":
        return as_wav(pcm)
    return as_opus(pcm, audio_format)


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance over the reference's length (case and punctuation
    ignored)."""
    ref, hyp = _words(reference), _words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        current = [i]
        for j, other in enumerate(hyp, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
            )
        previous = current
    return previous[-1] / max(1, len(ref))


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Each script of SCRIPTS, spoken (synthesised once per test session)."""
    missing = tools_missing()
    assert not missing, f"install {missing} (Debian: apt-get install espeak-ng sox)"
    directory = tmp_path_factory.mktemp("speech")
    return {name: synthesise(text, directory) for name, text in SCRIPTS.items()}
