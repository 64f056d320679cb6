"""The offline embedder: feature hashing, for runs with no model server configured.

Words, word pairs and the character 3- to 5-grams of each word are hashed into
VECTOR_DIM signed buckets, and the vector is L2-normalised, so cosine similarity reflects
shared words and word pieces ("knee" and "knees" share most of theirs). It knows nothing
of meaning, but it is deterministic, fast and keeps retrieval working end to end.
"""

from __future__ import annotations

import hashlib
import math
import re

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
