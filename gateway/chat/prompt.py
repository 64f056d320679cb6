"""The prompt for one reply: who the assistant is, the patient's recent pain reports
(dated), summaries of earlier conversations and what the patient said before that are
relevant (with dates), the recent turns of the thread within a budget, and the message,
with the body-map region when the patient marked one. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from storage.memories import Memory
from storage.pain_reports import PainReport
from storage.summaries import SummaryMemory

SYSTEM_PROMPT = """\
You are PainAR, a supportive companion for people living with pain, speaking with a
patient through their augmented-reality headset. Be warm, brief and practical: pacing,
gentle movement, posture, sleep, heat or cold, breathing and relaxation, and how to talk
with their care team. You do not diagnose and you do not change prescribed treatment;
say so when asked, and encourage the patient to discuss changes with their clinician.

Urgent care comes first. If the patient describes any red-flag symptom, tell them
plainly to seek urgent medical care now (emergency services or the nearest emergency
department) before anything else — for example: loss of bladder or bowel control,
numbness in the groin or inner thighs (saddle area), chest pain or pressure, sudden
weakness or numbness in the face, arm or leg, sudden severe headache, fever with back
pain, pain after a fall or injury with deformity, or thoughts of harming themselves.

Use what the patient told you earlier when it helps, and say when you do. Keep replies
short enough to read in a headset: a few sentences, plain words."""

CHARS_PER_TOKEN = 4  # a rough measure, enough to keep the prompt within its budget


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    content: str


def build_messages(
    text: str,
    *,
    memories: Sequence[Memory] = (),
    recent: Sequence[Turn] = (),
    svg_path: str | None = None,
    pain_reports: Sequence[PainReport] = (),
    summaries: Sequence[SummaryMemory] = (),
    today: datetime | None = None,
    budget_tokens: int = 3000,
) -> list[dict[str, str]]:
    """Chat messages for the model; `recent` oldest first, the newest kept when trimming;
    `pain_reports` newest first."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    if pain_reports:
        lines = [f"- {_report(r)}" for r in pain_reports]
        heading = "The patient's recent pain reports (0-10 numeric rating scale), newest first"
        if today is not None:
            heading += f"; today is {_date(today)} (UTC)"
        messages.append({"role": "system", "content": heading + ":\n" + "\n".join(lines)})
    if summaries:
        lines = [
            f"- ({_date(s.summarized_at)}) {s.content}" if s.summarized_at else f"- {s.content}"
            for s in summaries
        ]
        messages.append(
            {
                "role": "system",
                "content": "Summaries of the patient's earlier conversations that may be "
                "relevant:\n" + "\n".join(lines),
            }
        )
    if memories:
        lines = [f"- ({_date(m.created_at)}) {m.content}" for m in memories]
        messages.append(
            {
                "role": "system",
                "content": "Things the patient said earlier that may be relevant:\n"
                + "\n".join(lines),
            }
        )
    budget = budget_tokens * CHARS_PER_TOKEN - sum(len(m["content"]) for m in messages)
    budget -= len(text)
    kept: list[Turn] = []
    for turn in reversed(recent):
        budget -= len(turn.content)
        if budget < 0:
            break
        kept.append(turn)
    messages += [{"role": t.role, "content": t.content} for t in reversed(kept)]
    if svg_path:
        text += (
            f"\n\n(The patient marked this region on the body map, as SVG path data: {svg_path})"
        )
    messages.append({"role": "user", "content": text})
    return messages


def _date(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _report(report: PainReport) -> str:
    text = f"{report.recorded_at.strftime('%Y-%m-%d %H:%M')} UTC: {report.intensity}/10"
    if report.region:
        text += f", {report.region}"
    elif report.svg_path:
        text += ", a region marked on the body map"
    if report.qualities:
        text += f" ({', '.join(report.qualities)})"
    if report.onset_at:
        text += f", began {_date(report.onset_at)}"
    if report.note:
        text += f": {report.note}"
    return text
