"""Offline providers, for runs with no model server configured.

The embedder: feature hashing.

Words, word pairs and the character 3- to 5-grams of each word are hashed into
VECTOR_DIM signed buckets, and the vector is L2-normalised, so cosine similarity reflects
shared words and word pieces ("knee" and "knees" share most of theirs). It knows nothing
of meaning, but it is deterministic, fast and keeps retrieval working end to end.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import AsyncGenerator, Mapping, Sequence

from gateway.providers.base import ChatChunk

_WORD = re.compile(r"\w+", re.UNICODE)
_EMPTY = "\x00empty"  # the one feature of a text without words (a zero vector has no angle)


def features(text: str) -> list[str]:
    words = [w.lower() for w in _WORD.findall(text)]
    out = [f"w:{w}" for w in words]
    out += [f"b:{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    for word in words:
        padded = f"<{word}>"
        for n in (3, 4, 5):
            out += [f"c:{padded[i : i + n]}" for i in range(len(padded) - n + 1)]
    return out or [_EMPTY]


def embed(text: str, dim: int) -> list[float]:
    vector = [0.0] * dim
    for feature in features(text):
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest[:6], "big") % dim
        vector[bucket] += 1.0 if digest[7] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:  # every feature cancelled another out: any fixed direction will do
        return [1.0] + [0.0] * (dim - 1)
    return [x / norm for x in vector]


# ---- the offline responder --------------------------------------------------------------

MEMORY_HEADER = "Things the patient said earlier that may be relevant:"
NO_MODEL = (
    "No language model is configured on this gateway, so this is an automatic reply, not advice."
)


def offline_reply(messages: Sequence[Mapping[str, str]]) -> str:
    """A short reply built from the prompt's retrieved memories, saying plainly that no
    language model is configured (so a default run still shows the whole pipeline)."""
    remembered: list[str] = []
    for message in messages:
        if message["role"] == "system" and message["content"].startswith(MEMORY_HEADER):
            lines = message["content"].splitlines()[1:]
            remembered = [line.removeprefix("- ") for line in lines if line.strip()]
    parts = [NO_MODEL]
    if remembered:
        parts.append("Earlier you mentioned: " + "; ".join(remembered[:3]) + ".")
    parts.append(
        "If you have red-flag symptoms such as loss of bladder or bowel control, numbness "
        "in the groin, chest pain or sudden weakness, seek urgent medical care now."
    )
    return " ".join(parts)


class OfflineChat:
    name = "offline"

    async def stream(
        self, messages: Sequence[Mapping[str, str]]
    ) -> AsyncGenerator[ChatChunk, None]:
        words = offline_reply(messages).split(" ")
        for n, word in enumerate(words):
            yield ChatChunk(word if n == 0 else " " + word)
        yield ChatChunk(finish_reason="stop")


class OfflineEmbedder:
    name = "offline"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        # CPU work on the event loop (~0.3 ms a text at 1536 dims): a batch gives the loop
        # a turn after each text, so sockets are not held up behind a whole batch.
        vectors = []
        for text in texts:
            vectors.append(embed(text, self.dim))
            if len(texts) > 1:
                await asyncio.sleep(0)
        return vectors
