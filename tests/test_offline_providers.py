"""The offline providers: the feature-hashing embedder and the responder."""

from __future__ import annotations

import math

from gateway.providers.offline import OfflineChat, OfflineEmbedder, embed


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


async def test_the_offline_responder_says_so_and_uses_what_was_remembered() -> None:
    messages = [
        {"role": "system", "content": "You are PainAR"},
        {
            "role": "system",
            "content": "Things the patient said earlier that may be relevant:\n"
            "- (2026-11-03) Ice helped my knee",
        },
        {"role": "user", "content": "It hurts again"},
    ]
    chunks = [c async for c in OfflineChat().stream(messages)]
    text = "".join(c.delta for c in chunks)
    assert "No language model is configured" in text
    assert "(2026-11-03) Ice helped my knee" in text
    assert "urgent medical care" in text
    assert chunks[-1].finish_reason == "stop" and len(chunks) > 10  # streamed word by word


async def test_the_offline_embedder_embeds_each_text() -> None:
    vectors = await OfflineEmbedder(16).embed(["a knee", "a back"])
    assert len(vectors) == 2 and all(len(v) == 16 for v in vectors)
