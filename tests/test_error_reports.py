"""No patient text reaches Sentry: events are captured by a local transport and searched.

Each test plants one distinctive phrase everywhere an error report can pick text up — an
exception message, a local variable of the raising frame, log breadcrumbs and log events,
user, extra and context data, a request's body, headers and query string, a pydantic
ValidationError quoting its input — and then looks for it in the serialized envelopes,
the bytes that would have gone over the wire. A control run without the scrubbers shows
the same plants do reach the envelopes, so an empty search means something.

The phrase is kept out of this file's source on purpose (rot13 below): Sentry sends the
source lines around each stack frame, and a literal here would be found in them.
"""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pydantic
import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport
from sentry_sdk.types import Event, Hint
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.ops.error_reports import REDACTED, init_error_reports, scrub_breadcrumb, scrub_event

# The control setups below call sentry_sdk.init with send_default_pii themselves.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The send_default_pii option is deprecated:DeprecationWarning"
)

PLANTED = codecs.decode("CYNAGRQ-CNGVRAG-GRKG-ybff bs oynqqre pbageby", "rot13")
# Searched for case-insensitively: the whole phrase and pieces a partial copy would keep.
PLANTED_FORMS = (PLANTED, PLANTED.split("-")[-1], "patient-text", "bladder")
# Nothing listens on the discard port, and the local transport never uses it anyway.
DSN = "http://public@127.0.0.1:9/1"
LOGGER_NAME = "tests.error_reports.intake"
# The tests' own initialisations bypass the init_calls spy below.
sentry_init = sentry_sdk.init


class LocalTransport(Transport):
    """Keeps every envelope's serialized bytes instead of sending them."""

    def __init__(self) -> None:
        super().__init__({"dsn": DSN})
        self.envelopes: list[bytes] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope.serialize())

    def events(self) -> list[dict[str, Any]]:
        found = []
        for raw in self.envelopes:
            for item in Envelope.deserialize(raw).items:
                if item.type == "event":
                    found.append(json.loads(item.get_bytes()))
        return found


class IntakeError(Exception):
    pass


class PainReport(pydantic.BaseModel):
    pain_level: int


def leaked_forms(envelopes: list[bytes]) -> list[str]:
    wire = b"\n".join(envelopes).lower()
    return [form for form in PLANTED_FORMS if form.lower().encode() in wire]


def paths_with_plant(value: Any, path: str = "") -> list[str]:
    """Where in a decoded event the phrase (or a piece of it) appears."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in paths_with_plant(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in paths_with_plant(v, f"{path}[{i}]")]
    text = str(value).lower()
    return [path] if any(form.lower() in text for form in PLANTED_FORMS) else []


def exception_types(events: list[dict[str, Any]]) -> set[str]:
    return {
        exception["type"]
        for event in events
        for exception in (event.get("exception") or {}).get("values", [])
    }


@pytest.fixture
def transport() -> Iterator[LocalTransport]:
    local = LocalTransport()
    try:
        yield local
    finally:
        # Leave no client behind: later tests (and the app under test) see Sentry off.
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)


@pytest.fixture
def init_calls(monkeypatch: pytest.MonkeyPatch, transport: LocalTransport) -> list[dict[str, Any]]:
    """Routes init_error_reports' own sentry_sdk.init call to the local transport.

    Everything else init_error_reports passes goes through untouched, so the tests run
    the real initialisation with the real options and scrubbers.
    """
    calls: list[dict[str, Any]] = []
    real_init = sentry_sdk.init

    def init_with_local_transport(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_init(*args, transport=transport, **kwargs)

    monkeypatch.setattr(sentry_sdk, "init", init_with_local_transport)
    return calls


def init_production(init_calls: list[dict[str, Any]], transport: LocalTransport) -> None:
    assert init_error_reports(DSN, environment="test", release="painar@test") is True
    assert len(init_calls) == 1
    assert init_calls[0]["before_send"] is scrub_event
    assert init_calls[0]["before_breadcrumb"] is scrub_breadcrumb
    assert sentry_sdk.get_client().is_active()
    assert sentry_sdk.get_client().transport is transport


def init_permissive_with_scrubbers(transport: LocalTransport) -> None:
    """The SDK set to send everything it can; only our scrubbers stand in the way."""
    sentry_init(
        dsn=DSN,
        transport=transport,
        send_default_pii=True,
        include_local_variables=True,
        max_request_body_size="always",
        before_send=scrub_event,
        before_send_transaction=scrub_event,
        before_breadcrumb=scrub_breadcrumb,
    )


def init_without_scrubbers(transport: LocalTransport) -> None:
    sentry_init(
        dsn=DSN,
        transport=transport,
        send_default_pii=True,
        include_local_variables=True,
        max_request_body_size="always",
    )


def fail_intake(note: str) -> None:
    transcript = note  # a local of the raising frame, for include_local_variables
    raise IntakeError(f"could not parse intake note: {transcript}")


def add_request(event: Event, hint: Hint) -> Event:
    event["request"] = {
        "method": "POST",
        "url": "https://gateway.example/intake",
        "query_string": f"note={PLANTED}",
        "headers": {"X-Complaint": PLANTED},
        "data": {"note": PLANTED},
        "cookies": {"draft": PLANTED},
        "env": {"REMOTE_NOTE": PLANTED},
    }
    return event


def report_everything(caplog: pytest.LogCaptureFixture) -> None:
    """Plants the phrase everywhere and reports four events: two exceptions, a log
    error and a message."""
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    logger = logging.getLogger(LOGGER_NAME)
    with sentry_sdk.isolation_scope() as scope:
        scope.set_user({"id": PLANTED, "username": PLANTED, "email": PLANTED})
        scope.set_extra("note", PLANTED)
        scope.set_context("patient", {"complaint": PLANTED})
        scope.add_event_processor(add_request)

        logger.info("patient said %s", PLANTED)  # a breadcrumb, through LoggingIntegration

        try:
            fail_intake(PLANTED)
        except IntakeError as error:
            sentry_sdk.capture_exception(error)

        try:
            PainReport.model_validate({"pain_level": PLANTED})
        except pydantic.ValidationError as error:
            assert PLANTED in str(error)  # pydantic quotes the input it rejected
            sentry_sdk.capture_exception(error)

        logger.error("intake failed for %s", PLANTED)  # an event, through LoggingIntegration
        sentry_sdk.capture_message(f"unparsed note: {PLANTED}")
    sentry_sdk.get_client().flush()


def assert_reports_arrived_without_plant(transport: LocalTransport) -> None:
    events = transport.events()
    assert len(events) == 4
    assert leaked_forms(transport.envelopes) == [], [paths_with_plant(e) for e in events]
    # Still useful: what failed and where.
    assert exception_types(events) == {"IntakeError", "ValidationError"}
    assert b"IntakeError" in b"".join(transport.envelopes)
    intake = next(e for e in events if exception_types([e]) == {"IntakeError"})
    (exception,) = intake["exception"]["values"]
    assert exception["value"] == REDACTED
    frames = exception["stacktrace"]["frames"]
    assert frames[-1]["function"] == "fail_intake"
    assert all("vars" not in frame for frame in frames)
    crumbs = intake["breadcrumbs"]["values"]
    assert {"category": LOGGER_NAME, "level": "info"}.items() <= crumbs[-1].items()
    assert "message" not in crumbs[-1]
    log_event = next(e for e in events if e.get("logger") == LOGGER_NAME)
    assert log_event["level"] == "error"
    assert log_event["logentry"] == {"message": REDACTED}
    for event in events:
        assert "user" not in event
        assert "extra" not in event
        assert "patient" not in event.get("contexts", {})
        assert event["request"] == {"method": "POST"}


def test_init_error_reports_sends_reports_without_patient_text(
    init_calls: list[dict[str, Any]],
    transport: LocalTransport,
    caplog: pytest.LogCaptureFixture,
) -> None:
    init_production(init_calls, transport)
    report_everything(caplog)
    assert_reports_arrived_without_plant(transport)
    assert {e["environment"] for e in transport.events()} == {"test"}
    assert {e["release"] for e in transport.events()} == {"painar@test"}


def test_scrubbers_alone_remove_patient_text_when_the_sdk_sends_everything(
    transport: LocalTransport, caplog: pytest.LogCaptureFixture
) -> None:
    init_permissive_with_scrubbers(transport)
    report_everything(caplog)
    assert_reports_arrived_without_plant(transport)


def test_without_scrubbers_every_plant_reaches_the_envelopes(
    transport: LocalTransport, caplog: pytest.LogCaptureFixture
) -> None:
    """The control: the search above would have found each plant."""
    init_without_scrubbers(transport)
    report_everything(caplog)
    events = transport.events()
    assert len(events) == 4
    assert leaked_forms(transport.envelopes) == list(PLANTED_FORMS)
    paths = {p for event in events for p in paths_with_plant(event)}
    expected = {
        ".exception.values[0].value",
        ".user.id",
        ".extra.note",
        ".contexts.patient.complaint",
        ".request.query_string",
        ".request.headers.X-Complaint",
        ".request.data.note",
        ".logentry.params[0]",
        ".message",
    }
    assert expected <= paths
    assert any(p.startswith(".breadcrumbs.values[") for p in paths)
    assert any(".stacktrace.frames[" in p and ".vars.transcript" in p for p in paths)


def make_intake_app() -> Starlette:
    async def intake(request: Request) -> Response:
        body = await request.body()
        raise IntakeError(f"bad intake {request.path_params['note']}: {body.decode()}")

    return Starlette(routes=[Route("/intake/{note}", intake, methods=["POST"])])


async def post_intake() -> httpx.Response:
    transport = httpx.ASGITransport(app=make_intake_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        return await client.post(
            f"/intake/{PLANTED}",
            params={"note": PLANTED},
            headers={"X-Complaint": PLANTED},
            json={"note": PLANTED},
        )


@pytest.mark.parametrize("scrubbed", [True, False], ids=["production", "control"])
async def test_starlette_request_reports_carry_no_patient_text(
    init_calls: list[dict[str, Any]], transport: LocalTransport, scrubbed: bool
) -> None:
    if scrubbed:
        init_production(init_calls, transport)
    else:
        init_without_scrubbers(transport)
    with sentry_sdk.isolation_scope():
        response = await post_intake()
    sentry_sdk.get_client().flush()
    assert response.status_code == 500
    events = transport.events()
    assert len(events) == 1
    assert exception_types(events) == {"IntakeError"}
    assert events[0]["request"]["method"] == "POST"
    if scrubbed:
        assert leaked_forms(transport.envelopes) == [], paths_with_plant(events[0])
        assert events[0]["request"] == {"method": "POST"}
        assert events[0]["transaction"] == "/intake/{note}"
    else:
        paths = set(paths_with_plant(events[0]))
        assert {".request.url", ".request.query_string", ".request.data.note"} <= paths
        assert any(p.lower() == ".request.headers.x-complaint" for p in paths)


def test_scrub_event_keeps_where_and_drops_what() -> None:
    frame = {"filename": "gateway/app.py", "function": "intake", "lineno": 7}
    event: dict[str, Any] = {
        "level": "error",
        "message": PLANTED,
        "logentry": {"message": "said %s", "params": [PLANTED], "formatted": PLANTED},
        "user": {"id": PLANTED},
        "extra": {"note": PLANTED},
        "server_name": "host-1",
        "modules": {"sentry-sdk": "2"},
        "tags": {"route": "/intake"},
        "request": {"method": "POST", "url": f"/x?{PLANTED}", "data": PLANTED},
        "contexts": {
            "runtime": {"name": "CPython"},
            "trace": {"trace_id": "abc"},
            "patient": {"complaint": PLANTED},
        },
        "exception": {
            "values": [
                {
                    "type": "IntakeError",
                    "value": PLANTED,
                    "stacktrace": {"frames": [{**frame, "vars": {"note": PLANTED}}]},
                }
            ]
        },
        "threads": {"values": [{"stacktrace": {"frames": [{**frame, "vars": {"n": PLANTED}}]}}]},
        "breadcrumbs": {
            "values": [
                {"type": "default", "category": "intake", "level": "info", "message": PLANTED}
            ]
        },
        "spans": [{"op": "db", "data": {"query": PLANTED}}],
    }
    scrubbed = scrub_event(event, {})
    assert paths_with_plant(scrubbed) == []
    assert scrubbed == {
        "level": "error",
        "message": REDACTED,
        "logentry": {"message": REDACTED},
        "tags": {"route": "/intake"},
        "request": {"method": "POST"},
        "contexts": {"runtime": {"name": "CPython"}, "trace": {"trace_id": "abc"}},
        "exception": {
            "values": [
                {"type": "IntakeError", "value": REDACTED, "stacktrace": {"frames": [frame]}}
            ]
        },
        "threads": {"values": [{"stacktrace": {"frames": [frame]}}]},
        "breadcrumbs": {"values": [{"type": "default", "category": "intake", "level": "info"}]},
        "spans": [{"op": "db"}],
    }


def test_scrub_breadcrumb_keeps_only_type_category_level_and_time() -> None:
    crumb = {
        "type": "http",
        "category": "httpx",
        "level": "info",
        "timestamp": "2024-01-01T00:00:00Z",
        "message": PLANTED,
        "data": {"url": f"https://api.example/?q={PLANTED}"},
    }
    assert scrub_breadcrumb(crumb, {}) == {
        "type": "http",
        "category": "httpx",
        "level": "info",
        "timestamp": "2024-01-01T00:00:00Z",
    }
    assert scrub_breadcrumb({"message": PLANTED}) == {}


@pytest.mark.parametrize("dsn", [None, ""])
def test_without_a_dsn_error_reports_stay_off(
    init_calls: list[dict[str, Any]], dsn: str | None
) -> None:
    assert init_error_reports(dsn, environment="x", release="y") is False
    assert init_calls == []
    assert sentry_sdk.get_client().is_active() is False
