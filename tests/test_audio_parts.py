"""The parts of a voice stream, synchronously: chunks put in order, the turn detector's
start and stop decisions, the spool moving to a private file and away, the VAD model fed
piece by piece and at another sample rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.audio.chunks import ChunkOrder
from gateway.audio.spool import Spool, private_directory
from gateway.audio.turns import SpeechStarted, SpeechStopped, TurnDetector
from gateway.audio.vad import SileroVad
from tests.speech import BYTES_PER_MS, silence


def test_chunks_leave_in_order_duplicates_are_ignored_and_a_gap_is_named() -> None:
    order = ChunkOrder()
    assert order.add(0, b"a") == [b"a"]
    assert order.add(0, b"a") == []  # a resend
    assert order.add(2, b"c") == [] and order.missing == 1
    assert order.add(3, b"d") == [] and order.waiting_bytes == 2
    assert order.add(2, b"c") == []  # a resend of a waiting chunk
    assert order.add(1, b"b") == [b"b", b"c", b"d"]
    assert order.missing is None and order.waiting_bytes == 0 and order.next_seq == 4


def detect(probabilities: list[float], silence_ms: int = 96) -> list[object]:
    detector = TurnDetector(window_ms=32, silence_ms=silence_ms, min_speech_ms=64)
    events = [detector.feed(p) for p in probabilities]
    return [e for e in events if e is not None] + [detector.finish()]


def test_speech_starts_after_enough_speech_and_stops_after_enough_silence() -> None:
    # 2 quiet windows, a blip, 1 quiet, 4 speech, a soft window (between the thresholds),
    # 3 quiet: the blip is too short; the soft window does not end the utterance.
    probabilities = [0.1, 0.1, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.4, 0.1, 0.1, 0.1]
    assert detect(probabilities) == [
        SpeechStarted(0, 128),
        SpeechStopped(0, 128, 288),
        None,
    ]


def test_two_utterances_are_numbered_and_one_still_going_ends_at_finish() -> None:
    speech, quiet = [0.9] * 3, [0.05] * 3
    assert detect(speech + quiet + speech) == [
        SpeechStarted(0, 0),
        SpeechStopped(0, 0, 96),
        SpeechStarted(1, 192),
        SpeechStopped(1, 192, 288),
    ]


def test_a_spool_moves_to_a_private_file_past_its_memory_limit_and_deletes_it(
    tmp_path: Path,
) -> None:
    directory = private_directory(tmp_path)
    assert directory.stat().st_mode & 0o777 == 0o700
    spool = Spool(directory, memory_limit=4)
    spool.write(b"abc")
    assert not spool.on_disk and list(directory.iterdir()) == []
    spool.write(b"defg")
    [file] = list(directory.iterdir())
    assert spool.on_disk and file.stat().st_mode & 0o777 == 0o600
    spool.write(b"h")
    assert spool.read() == b"abcdefgh" and spool.read(2, 5) == b"cde" and spool.size == 8
    spool.close()
    assert list(directory.iterdir()) == []


def speech_windows(vad: SileroVad, pcm: bytes, chunk: int) -> list[bool]:
    probabilities: list[float] = []
    for start in range(0, len(pcm), chunk):
        probabilities += vad.feed(pcm[start : start + chunk])
    return [p >= 0.5 for p in probabilities]


def test_the_vad_hears_the_same_speech_piecewise_at_once_and_at_48_khz(
    speech: dict[str, bytes],
) -> None:
    """Real speech between silences: fed in 40 ms pieces the detector decides as on the
    whole audio at once, and a 48 kHz copy (resampled inside) nearly the same way."""
    pcm = silence(500) + speech["back"] + silence(500)
    whole = speech_windows(SileroVad(16000), pcm, len(pcm))
    pieces = speech_windows(SileroVad(16000), pcm, 40 * BYTES_PER_MS)
    assert pieces == whole
    assert not any(whole[:10]) and not any(whole[-10:]) and sum(whole) > len(whole) / 2
    samples = np.frombuffer(pcm, "<i2").astype("float32")
    upsampled = np.interp(np.arange(len(samples) * 3) / 3, np.arange(len(samples)), samples)
    high = speech_windows(
        SileroVad(48000), upsampled.astype("<i2").tobytes(), 40 * BYTES_PER_MS * 3
    )
    assert len(high) == len(whole)
    agree = sum(a == b for a, b in zip(high, whole, strict=True)) / len(whole)
    assert agree >= 0.95
