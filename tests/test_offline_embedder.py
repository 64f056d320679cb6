"""The offline feature-hashing embedder (pure: no loop, no I/O)."""

from __future__ import annotations

import math

from gateway.providers.offline import embed


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_vectors_have_the_configured_size_unit_length_and_are_deterministic() -> None:
    for dim in (8, 384, 1536):
        vector = embed("Sharp pain in my left knee", dim)
        assert len(vector) == dim
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0)
        assert embed("Sharp pain in my left knee", dim) == vector


def test_shared_words_and_word_pieces_make_texts_closer() -> None:
    dim = 1536
    knee = embed("my knee hurts when I climb stairs", dim)
    knees = embed("both knees hurt on the stairs", dim)
    unrelated = embed("what time does the pharmacy open", dim)
    assert cosine(knee, knees) > cosine(knee, unrelated)
    assert cosine(knee, knees) > 0.2


def test_a_text_without_words_still_has_a_direction() -> None:
    for text in ("", "   ", "?!"):
        vector = embed(text, 64)
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0)
