"""`chat.send` and `chat.cancel` over the socket."""

from __future__ import annotations

from dataclasses import replace

from gateway.auth import PatientIdentity
from gateway.chat.replies import ChatRequest
from gateway.chat.service import ChatService
from gateway.realtime.router import Peer, Router
from protocol.codec import ProtocolError
from protocol.codes import ErrorCode
from protocol.frames import Ack, ChatCancel, ChatSend


class ChatHandlers:
    def __init__(self, service: ChatService) -> None:
        self.service = service

    def register(self, router: Router) -> None:
        router.for_patients(ChatSend, self.send)
        router.for_patients(ChatCancel, self.cancel)

    async def send(self, peer: Peer[PatientIdentity], frame: ChatSend) -> None:
        identity = peer.identity
        request = ChatRequest(
            patient_id=identity.patient_id,
            thread_id=frame.thread_id,
            text=frame.text,
            device_id=identity.device_key,
            svg_path=frame.svg_path,
            client_message_id=frame.client_message_id,
        )
        outcome = await self.service.accept(
            request,
            ack=lambda response_id: peer.send(Ack(ref=frame.id, response_id=response_id)),
            notify=lambda error: peer.send_error(replace(error, ref=frame.id)),
        )
        if isinstance(outcome, ProtocolError):
            error = replace(outcome, ref=frame.id)
            if error.code == ErrorCode.FORBIDDEN:  # another patient's thread
                peer.report_refusal(frame, error)
            peer.send_error(error)

    async def cancel(self, peer: Peer[PatientIdentity], frame: ChatCancel) -> None:
        stopped = await self.service.cancel(peer.identity.patient_id, frame.response_id)
        peer.send(Ack(ref=frame.id, stopped=stopped))
