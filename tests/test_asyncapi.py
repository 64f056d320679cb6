"""The AsyncAPI document: valid for the official parser (`@asyncapi/parser`, run with
Node; `just test` installs it from tests/asyncapi/package-lock.json), every frame model
and every frame type of docs/protocol.md in it, served at /asyncapi.json and printed by
the CLI; and a plain GET of the socket's path says how to connect."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import get_args

import httpx

from protocol.asyncapi import BINARY_AUDIO, asyncapi_document
from protocol.frames import AnyClientFrame, AnyServerFrame
from tests.support import Gateway

ROOT = Path(__file__).parent.parent
CHECKER = Path(__file__).parent / "asyncapi"


def official_parser(document: dict[str, object]) -> tuple[int, list[dict[str, object]]]:
    """The parser's exit code (0: valid) and its diagnostics, then its verdict."""
    node = shutil.which("node")
    assert node, "Node.js is missing (the AsyncAPI parser runs on it)"
    assert (CHECKER / "node_modules" / "@asyncapi" / "parser").exists(), (
        "the AsyncAPI parser is not installed: `npm ci --prefix tests/asyncapi` (just test does)"
    )
    done = subprocess.run(
        [node, "check.mjs"],
        cwd=CHECKER,
        input=json.dumps(document),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, lines


def test_the_document_is_valid_asyncapi_3_for_the_official_parser() -> None:
    code, lines = official_parser(asyncapi_document())
    assert code == 0, f"the parser refused the document: {lines}"
    *diagnostics, verdict = lines
    assert verdict["valid"] is True and verdict["version"] == "3.0.0"
    assert not [d for d in diagnostics if d["severity"] == 0]
    assert verdict["messages"] == len(asyncapi_document()["channels"]["socket"]["messages"])


def test_the_parser_would_catch_a_broken_document() -> None:
    broken = asyncapi_document()
    broken["operations"]["send.pong"]["channel"] = {"$ref": "#/channels/nowhere"}
    code, lines = official_parser(broken)
    assert code == 1 and any(line.get("severity") == 0 for line in lines)


def frame_types(union: object) -> set[str]:
    models = get_args(get_args(union)[0])
    return {str(get_args(model.model_fields["type"].annotation)[0]) for model in models}


def test_every_frame_model_and_every_documented_frame_is_in_it() -> None:
    messages = set(asyncapi_document()["channels"]["socket"]["messages"])
    client, server = frame_types(AnyClientFrame), frame_types(AnyServerFrame)
    assert client | server | {BINARY_AUDIO} == messages
    # docs/protocol.md: a heading per frame, from session.ready to the last server frame.
    protocol = (ROOT / "docs" / "protocol.md").read_text()
    frames = protocol[protocol.index("## session.ready") : protocol.index("## Errors")]
    documented = {
        name.strip()
        for heading in re.findall(r"^#{2,3} (.+)$", frames, re.MULTILINE)
        for name in heading.split(" / ")
        if re.fullmatch(r"[a-z_]+(\.[a-z_]+)?", name.strip())
    }
    assert documented == client | server, (
        f"in docs/protocol.md only: {sorted(documented - client - server)}; "
        f"in the models only: {sorted(client | server - documented)}"
    )


def test_each_client_frame_names_the_frames_that_answer_it() -> None:
    document = asyncapi_document()
    push = document["operations"]["receive.sync.push"]
    assert push["action"] == "receive"
    assert [m["$ref"].rsplit("/", 1)[1] for m in push["reply"]["messages"]] == [
        "sync.ack",
        "error",
    ]
    codes = document["components"]["schemas"]["ErrorCode"]["enum"]
    assert "conflict" in codes and 4401 in document["components"]["schemas"]["CloseCode"]["enum"]


async def test_the_gateway_serves_it_naming_itself_and_the_cli_prints_it(
    gateway: Gateway,
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        served = await http.get("/asyncapi.json")
    assert served.status_code == 200
    body = served.json()
    assert body["asyncapi"] == "3.0.0"
    assert body["servers"]["gateway"]["host"] == gateway.url.removeprefix("http://")
    assert body["channels"] == asyncapi_document()["channels"]
    printed = subprocess.run(
        [sys.executable, "-m", "gateway", "asyncapi", "--host", "gw.example:443"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["servers"]["gateway"]["host"] == "gw.example:443"


async def test_a_plain_get_of_the_socket_path_says_how_to_connect(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        response = await http.get("/v1/ws")
    assert response.status_code == 426
    assert response.headers["upgrade"] == "websocket"
    error = response.json()["error"]
    assert error["code"] == "upgrade_required"
    assert error["message"].startswith("/v1/ws is a WebSocket endpoint")
