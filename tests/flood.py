"""One patient flooding a gateway from a process of its own, for tests/test_flood.py.

`python -m tests.flood WS_URL HTTP_URL SECONDS` with the patient's tokens in FLOOD_TOKENS
(one per socket, space-separated) and FLOOD_REST_TOKEN. It opens every socket at once;
on each one that stays open it sends `chat.send` on a new thread and `sync.push` of a new
thread by turns, each as soon as the last is answered; REST_LOOPS loops POST /sync/ the
same way. It prints "flooding" once under way, then one JSON report: answers by kind,
sockets closed by the gateway with their codes, and the slowest answer (a hang shows as
an answer that never came).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.test_sync import thread

REST_LOOPS = 4
ANSWER_TIMEOUT_S = 10.0


class Report:
    def __init__(self) -> None:
        self.answers: Counter[str] = Counter()
        self.closed: Counter[int] = Counter()
        self.unanswered = 0
        self.slowest_s = 0.0

    def answered(self, kind: str, started: float) -> None:
        self.answers[kind] += 1
        self.slowest_s = max(self.slowest_s, time.monotonic() - started)


def frames(n: int) -> dict[str, Any]:
    if n % 2:
        mutation = thread(f"m{n}", uuid.uuid4(), "flood")
        return {"type": "sync.push", "id": f"f{n}", "mutations": [mutation]}
    return {"type": "chat.send", "id": f"f{n}", "thread_id": str(uuid.uuid4()), "text": "flood"}


async def answer(ws: ClientConnection, ref: str) -> str:
    """The kind of the answer to frame `ref` (ack, sync.ack, or the error's code)."""
    while True:
        frame = orjson.loads(await ws.recv())
        if frame.get("ref") == ref and frame["type"] in ("ack", "sync.ack"):
            return str(frame["type"])
        error = frame.get("error")
        if frame["type"] == "error" and error.get("ref") in (ref, None):
            return str(error["code"])


async def flood_socket(
    url: str, token: str, until: float, report: Report, opened: asyncio.Barrier
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    waited = False
    try:
        async with connect(url, additional_headers=headers, max_size=None) as ws:
            await ws.recv()  # session.ready
            waited = True
            await opened.wait()
            n = 0
            while time.monotonic() < until:
                frame = frames(n)
                started = time.monotonic()
                await ws.send(orjson.dumps(frame).decode())
                try:
                    async with asyncio.timeout(ANSWER_TIMEOUT_S):
                        report.answered(await answer(ws, frame["id"]), started)
                except TimeoutError:
                    report.unanswered += 1
                    return
                n += 1
    except ConnectionClosed as closed:
        report.closed[closed.rcvd.code if closed.rcvd else 1006] += 1
    finally:
        if not waited:
            await opened.wait()


async def flood_rest(url: str, token: str, until: float, report: Report) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=ANSWER_TIMEOUT_S) as http:
        while time.monotonic() < until:
            thread = {"id": str(uuid.uuid4()), "title": "f", "operation": "insert"}
            body = {"client_id": "flood", "threads": [thread]}
            started = time.monotonic()
            try:
                response = await http.post("/sync/", json=body)
            except httpx.TimeoutException:
                report.unanswered += 1
                return
            report.answered(f"http {response.status_code}", started)


async def main(ws_url: str, http_url: str, seconds: float) -> None:
    tokens = os.environ["FLOOD_TOKENS"].split()
    until = time.monotonic() + seconds
    report = Report()
    # Every socket is open (or refused) before the flood starts, and then it says so.
    opened = asyncio.Barrier(len(tokens) + 1)
    work = [flood_socket(ws_url, token, until, report, opened) for token in tokens]
    rest_token = os.environ["FLOOD_REST_TOKEN"]
    work += [flood_rest(http_url, rest_token, until, report) for _ in range(REST_LOOPS)]
    flood = asyncio.gather(*work)
    await opened.wait()
    print("flooding", flush=True)
    await flood
    print(
        orjson.dumps(
            {
                "answers": dict(report.answers),
                "closed": {str(code): n for code, n in report.closed.items()},
                "unanswered": report.unanswered,
                "slowest_s": report.slowest_s,
            }
        ).decode(),
        flush=True,
    )


if __name__ == "__main__":
    # An attacker's machine is not the gateway's: on a shared test machine the flood's
    # own client work runs at the lowest priority, so what slows the other patient is
    # the gateway's work for the flood, not the cores this script takes.
    os.nice(19)
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
