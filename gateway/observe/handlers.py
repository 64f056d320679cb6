"""Registers observation with the router: the clinicians' frames, and the relationship
check and audit of refusals that every client frame passes."""

from __future__ import annotations

from gateway.observe.service import ObserveService
from gateway.realtime.router import Router
from protocol.frames import Observe, SyncPull, Unobserve


def register(router: Router, service: ObserveService) -> None:
    router.for_clinicians(Observe, service.observe)
    router.for_clinicians(Unobserve, service.unobserve)
    router.for_clinicians(SyncPull, service.pull)
    router.guard(service.guard)
    router.on_denied(service.denied)
