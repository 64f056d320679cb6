"""Liveness and readiness.

`/healthz` says the process answers. `/readyz` says this process can do its work now:
it is not draining, the database answers a query and the fan-out broker answers a ping.
Each failing part is named so an operator knows where to look.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0

Probe = Callable[[], Awaitable[object]]


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


class Readiness:
    def __init__(self, probes: dict[str, Probe], draining: Callable[[], bool]) -> None:
        self.probes = probes  # part name -> a check that raises unless it works now
        self.draining = draining

    async def check(self) -> dict[str, object]:
        """`status` (ready, draining, unavailable), and `failing` and `checks` unless
        draining (then nothing is probed)."""
        if self.draining():
            # Shutting down: the load balancer should send new clients elsewhere.
            return {"status": "draining", "failing": ["draining"]}
        probes = self.probes
        results = await asyncio.gather(*(_run(name, probe) for name, probe in probes.items()))
        checks = dict(zip(probes, results, strict=True))
        failing = [name for name, result in checks.items() if result != "ok"]
        if failing:
            return {"status": "unavailable", "failing": failing, "checks": checks}
        return {"status": "ready", "checks": checks}

    async def endpoint(self, request: Request) -> JSONResponse:
        body = await self.check()
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)


async def _run(name: str, probe: Probe) -> str:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await probe()
    except TimeoutError:
        log.warning("readiness: %s timed out", name)
        return "timeout"
    except Exception as exc:  # any failure of the probed part means "not ready"
        log.warning("readiness: %s failed: %s", name, type(exc).__name__)
        return "unreachable"
    return "ok"
