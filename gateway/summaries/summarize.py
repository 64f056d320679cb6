"""What a thread's summary says. Pure: no I/O.

With a model, the prompt below over the thread's turns (the newest kept when it is long);
offline, an extractive summary: the patient's own sentences that say most about their
pain (its words, numbers, what helped or made it worse), in the order said, within the
length allowed."""

from __future__ import annotations

import re

from storage.summaries import Transcript

SUMMARY_PROMPT = """\
Summarise this conversation between a patient living with pain and PainAR, their
companion app, for later conversations with the same patient. In two or three plain
sentences: where and how much it hurt, what helped or made it worse, and any plan or
question left open. Say only what was said; no advice, no diagnosis."""

TRANSCRIPT_CHARS = 12_000  # of the thread given to the model (the newest turns kept)

_SALIENT = re.compile(
    r"\b(pain|pains|hurt|hurts|ache|aches|aching|sore|stiff|burn\w*|stab\w*|throb\w*|"
    r"sharp|dull|worse|better|help\w*|eas\w*|sleep\w*|walk\w*|sit\w*|stand\w*|"
    r"medic\w*|pill\w*|heat|ice|exercise\w*|stretch\w*|back|knee|neck|hip|shoulder|head)\b|"
    r"\b\d+\b",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def prompt(transcript: Transcript) -> list[dict[str, str]]:
    lines: list[str] = []
    used = 0
    for turn in reversed(transcript.turns):
        line = f"{'Patient' if turn.role == 'user' else 'PainAR'}: {turn.content}"
        used += len(line)
        if used > TRANSCRIPT_CHARS and lines:
            break
        lines.append(line)
    heading = f"Conversation: {transcript.title}\n" if transcript.title else ""
    return [
        {"role": "system", "content": SUMMARY_PROMPT},
        {"role": "user", "content": heading + "\n".join(reversed(lines))},
    ]


def extractive(transcript: Transcript, max_chars: int) -> str:
    """The patient's most telling sentences, in the order said, within `max_chars`."""
    sentences: list[tuple[int, int, str]] = []  # (position, score, sentence)
    for turn in transcript.turns:
        if turn.role != "user":
            continue
        for sentence in _SENTENCE.split(turn.content.strip()):
            sentence = " ".join(sentence.split())
            if sentence:
                sentences.append((len(sentences), len(_SALIENT.findall(sentence)), sentence))
    if not sentences:
        return ""
    chosen: list[tuple[int, str]] = []
    used = len("The patient said: ")
    for position, _, sentence in sorted(sentences, key=lambda s: (-s[1], s[0])):
        if used + len(sentence) + 1 > max_chars:
            continue
        chosen.append((position, sentence))
        used += len(sentence) + 1
    if not chosen:  # one very long sentence: its start
        return "The patient said: " + sentences[0][2][: max_chars - 21].rstrip() + "…"
    return "The patient said: " + " ".join(s for _, s in sorted(chosen))
