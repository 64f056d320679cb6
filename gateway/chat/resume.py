"""Catching a socket up on the replies streaming when it starts watching a patient: one
`chat.resume` per reply (its text so far, up to its last delta's seq), from whichever
process runs it.

The asker joins a topic of its own and signals the patient's topic; each process answers
for the replies it runs, reading each one's state at once (no delta can slip between the
state read and its seq). The asker must be listening to the patient's topic before it
asks: then every delta after a resume's `seq` reaches it too, and it drops the ones at or
before it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from uuid import UUID

import orjson

from gateway.chat.replies import LiveReplies
from gateway.realtime.broker import BrokerUnavailable
from gateway.realtime.hub import Hub, patient_topic
from protocol.frames import ChatResume
from storage.database import Database
from storage.replies import streaming_replies

RESUME_SIGNAL = "chat.resume?"  # payload: the topic to answer on
ANSWER_WAIT_S = 0.5  # a reply that ended meanwhile does not answer


class ResumeCollector:
    """The asker's end: listens on its own topic until every reply has answered."""

    def __init__(self, expected: set[UUID]) -> None:
        self.expected = expected
        self.frames: dict[UUID, ChatResume] = {}
        self.complete = asyncio.Event()

    def deliver(self, text: str) -> None:
        frame = ChatResume.model_validate(orjson.loads(text))
        self.frames[frame.response_id] = frame
        if self.expected <= self.frames.keys():
            self.complete.set()

    def broker_recovered(self) -> None:
        return None


class Resumes:
    def __init__(self, db: Database, hub: Hub, replies: LiveReplies) -> None:
        self.db = db
        self.hub = hub
        self.replies = replies
        hub.on_signal(RESUME_SIGNAL, self._asked)

    async def ask(self, patient_id: UUID) -> list[ChatResume]:
        """The patient's streaming replies, as resumes (call once listening to the
        patient's topic)."""
        async with self.db.acquire() as conn:
            expected = await streaming_replies(conn, patient_id)
        return await self.collect(patient_id, expected)

    async def collect(self, patient_id: UUID, expected: Iterable[UUID]) -> list[ChatResume]:
        """Resumes of these streaming replies, from the processes streaming them (those
        that do not answer in time ended meanwhile)."""
        wanted = set(expected)
        if not wanted:
            return []
        collector = ResumeCollector(wanted)
        answer_topic = f"resume:{uuid.uuid4()}"
        await self.hub.join(answer_topic, collector)
        try:
            await self.hub.signal(patient_topic(patient_id), RESUME_SIGNAL, answer_topic.encode())
            async with asyncio.timeout(ANSWER_WAIT_S):
                await collector.complete.wait()
        except (TimeoutError, BrokerUnavailable):
            pass  # those that did not answer ended meanwhile (or cannot be reached)
        finally:
            await self.hub.leave(answer_topic, collector)
        return sorted(collector.frames.values(), key=lambda f: str(f.response_id))

    def _asked(self, topic: str, payload: bytes) -> None:
        answer_topic = payload.decode()
        for reply in tuple(self.replies.by_id.values()):
            if reply.topic != topic:
                continue
            seq, text = reply.stream.sent  # read now: later deltas have a higher seq
            request = reply.request
            frame = ChatResume(
                patient_id=request.patient_id,
                thread_id=request.thread_id,
                response_id=reply.id,
                seq=seq,
                text=text,
            )
            task = asyncio.create_task(self._answer(answer_topic, frame))
            self.replies.tasks.add(task)
            task.add_done_callback(self.replies.tasks.discard)

    async def _answer(self, topic: str, frame: ChatResume) -> None:
        try:
            await self.hub.publish(topic, frame)
        except BrokerUnavailable:
            pass
