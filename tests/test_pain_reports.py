"""Pain reports: a synced entity beside threads and messages. They round-trip over the
socket and REST and reach the patient's other devices, bad values are rejected naming the
field with nothing stored, a delete erases every version, and the prompt carries the
patient's recent reports, dated."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.chat.prompt import build_messages
from storage.pain_reports import PainReport
from tests.chatkit import Upstream, chat_send, until
from tests.support import TIMEOUT_S, Gateway
from tests.test_sync import next_delta, push, thread
from tests.wsclient import patient_token, recv, send, session

LOWER_BACK = "M38 78 H62 V90 H38 Z"


def pain_report(mutation_id: str, report_id: uuid.UUID, **data: Any) -> dict[str, Any]:
    return {
        "mutation_id": mutation_id,
        "entity": "pain_report",
        "op": "upsert",
        "id": str(report_id),
        "data": {"intensity": 7, **data},
    }


def delete(mutation_id: str, report_id: uuid.UUID) -> dict[str, Any]:
    return {
        "mutation_id": mutation_id,
        "entity": "pain_report",
        "op": "delete",
        "id": str(report_id),
    }


async def delta_at(ws: Any, version: int) -> dict[str, Any]:
    """The delta that reaches `version`, skipping earlier ones."""
    while (delta := await next_delta(ws))["version"] < version:
        pass
    return delta


async def stored_reports(db: asyncpg.Connection, patient: uuid.UUID) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM pain_reports WHERE patient_id = $1", patient)


async def test_a_pain_report_reaches_every_device_and_its_edit_and_delete_too(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient, report, t = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    full = {
        "intensity": 7,
        "svg_path": LOWER_BACK,
        "region": "lower back",
        "qualities": ["aching", "dull"],
        "note": "worse after sitting",
        "onset_at": "2026-11-20T08:00:00+01:00",
        "recorded_at": "2026-11-28T18:30:00Z",
        "thread_id": str(t),
    }
    async with (
        session(gateway.ws_url, patient_token(patient, "headset")) as (headset, _),
        session(gateway.ws_url, patient_token(patient, "phone")) as (phone, _),
    ):
        ack = await push(headset, "p1", thread("t", t), pain_report("r1", report, **full))
        assert ack["applied"] == ["t", "r1"] and ack["rejected"] == []
        delta = await next_delta(phone)
        change = delta["changes"][-1]
        assert (change["entity"], change["op"], change["id"]) == (
            "pain_report",
            "upsert",
            str(report),
        )
        data = change["data"]
        assert {k: data[k] for k in ("intensity", "svg_path", "region", "qualities", "note")} == {
            k: full[k] for k in ("intensity", "svg_path", "region", "qualities", "note")
        }
        assert data["onset_at"] == "2026-11-20T07:00:00Z"  # stored in UTC
        assert data["recorded_at"] == "2026-11-28T18:30:00Z"
        assert data["thread_id"] == str(t) and data["device_id"] == "headset"
        assert change["device_id"] == "headset" and change["mutation_id"] == "r1"

        # A replay changes nothing; an edit replaces the fields but keeps the time recorded.
        assert (await push(headset, "p2", pain_report("r1", report, **full)))["duplicates"] == [
            "r1"
        ]
        edited = await push(
            phone, "p3", pain_report("r2", report, intensity=4, region="lower back")
        )
        assert edited["applied"] == ["r2"]
        data = (await delta_at(headset, edited["version"]))["changes"][0]["data"]
        assert data["intensity"] == 4 and data["qualities"] == [] and "note" not in data
        assert data["recorded_at"] == "2026-11-28T18:30:00Z"

        # A delete reaches the other device and erases every version of the report.
        deleted = await push(headset, "p4", delete("r3", report))
        assert deleted["applied"] == ["r3"]
        gone = (await delta_at(phone, deleted["version"]))["changes"][0]
        assert (gone["entity"], gone["op"], gone["data"]) == ("pain_report", "delete", None)
        await send(phone, {"type": "sync.pull", "id": "all", "since": 0})
        page = await recv(phone, skip=("presence", "sync.delta"))
        of_report = [c for c in page["changes"] if c["id"] == str(report)]
        assert len(of_report) == 3 and all(c["data"] is None for c in of_report)
        [row] = await stored_reports(db, patient)
        assert row["deleted"] and row["intensity"] is None and row["note"] is None
        assert row["region"] is None and row["svg_path"] is None and row["qualities"] == []
        # A delete is final.
        again = await push(headset, "p5", pain_report("r4", report))
        assert again["rejected"] == [
            {"mutation_id": "r4", "code": "conflict", "message": "id: the pain report was deleted"}
        ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"intensity": 11}, "data.intensity: Input should be less than or equal to 10"),
        ({"intensity": -1}, "data.intensity: Input should be greater than or equal to 0"),
        ({"intensity": "7"}, "data.intensity: Input should be a valid integer"),
        ({"intensity": 6.5}, "data.intensity: Input should be a valid integer"),
        ({"intensity": True}, "data.intensity: Input should be a valid integer"),
        ({"intensity": None}, "data.intensity: Input should be a valid integer"),
        ({"qualities": ["itchy"]}, "data.qualities.0: Input should be 'burning', 'stabbing'"),
        ({"qualities": ["aching", "aching"]}, "data.qualities: each quality at most once"),
        ({"qualities": "aching"}, "data.qualities: Input should be a valid list"),
        ({"region": ""}, "data.region: String should have at least 1 character"),
        ({"region": "x" * 101}, "data.region: String should have at most 100 characters"),
        ({"note": "x" * 2001}, "data.note: String should have at most 2000 characters"),
        ({"svg_path": "circle"}, "data.svg_path: "),
        ({"onset_at": "yesterday"}, "data.onset_at: "),
        ({"recorded_at": "2026-13-01T00:00:00Z"}, "data.recorded_at: "),
        ({"thread_id": "not-a-uuid"}, "data.thread_id: "),
        ({"mood": "low"}, "data.mood: Extra inputs are not permitted"),
    ],
)
async def test_a_bad_pain_report_is_rejected_naming_the_field_and_stores_nothing(
    gateway: Gateway, db: asyncpg.Connection, data: dict[str, Any], message: str
) -> None:
    patient = uuid.uuid4()
    mutation = pain_report("bad", uuid.uuid4(), **data)
    if data.get("intensity", 0) is None:
        del mutation["data"]["intensity"]
        message = "data.intensity: Field required"
    async with session(gateway.ws_url, patient_token(patient)) as (ws, _):
        ack = await push(ws, "p", mutation)
        assert ack["applied"] == [] and ack["version"] == 0
        [rejected] = ack["rejected"]
        assert rejected["code"] == "invalid" and rejected["message"].startswith(message), rejected
        # The socket goes on: the same report, put right, is taken.
        fixed = pain_report("good", uuid.uuid4())
        assert (await push(ws, "q", fixed))["applied"] == ["good"]
    assert len(await stored_reports(db, patient)) == 1


async def test_another_patients_thread_or_report_is_refused(gateway: Gateway) -> None:
    patient, other = uuid.uuid4(), uuid.uuid4()
    theirs, their_report = uuid.uuid4(), uuid.uuid4()
    async with (
        session(gateway.ws_url, patient_token(patient)) as (ws, _),
        session(gateway.ws_url, patient_token(other)) as (them, _),
    ):
        await push(them, "t", thread("t", theirs), pain_report("r", their_report))
        ack = await push(
            ws,
            "p",
            pain_report("a", uuid.uuid4(), thread_id=str(theirs)),
            pain_report("b", uuid.uuid4(), thread_id=str(uuid.uuid4())),
            pain_report("c", their_report, intensity=0),
            delete("d", their_report),
            delete("e", uuid.uuid4()),
        )
    assert ack["applied"] == [] and ack["version"] == 0
    assert [(r["mutation_id"], r["code"], r["message"]) for r in ack["rejected"]] == [
        ("a", "forbidden", "thread_id: the thread belongs to another patient"),
        ("b", "not_found", "thread_id: no such thread"),
        ("c", "forbidden", "id: the pain report belongs to another patient"),
        ("d", "forbidden", "id: the pain report belongs to another patient"),
        ("e", "not_found", "id: no such pain report"),
    ]


async def test_the_original_sync_route_takes_pain_reports(gateway: Gateway) -> None:
    patient, report = uuid.uuid4(), uuid.uuid4()
    headers = {"Authorization": f"Bearer {patient_token(patient, 'phone')}"}
    item = {"id": str(report), "intensity": 5, "region": "neck", "operation": "insert"}
    body = {"pain_reports": [item], "client_id": "mobile-app-v1", "sync_timestamp": 1}
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S, headers=headers) as http,
        session(gateway.ws_url, patient_token(patient, "headset")) as (headset, _),
    ):
        posted = await http.post("/sync/", json=body)
        assert posted.status_code == 200
        [applied] = posted.json()["applied"]
        assert applied.startswith("rest:")
        delta = await next_delta(headset)
        assert delta["changes"][0]["entity"] == "pain_report"
        assert delta["changes"][0]["data"]["region"] == "neck"
        retried = await http.post("/sync/", json=body)
        assert retried.json()["duplicates"] == posted.json()["applied"]
        pulled = (await http.get("/sync/")).json()
        assert [c["entity"] for c in pulled["changes"]] == ["pain_report"]

        # Bad values: 422 naming the item's field; an insert without intensity is rejected.
        bad = {**body, "pain_reports": [{**item, "intensity": 12}], "sync_timestamp": 2}
        refused = await http.post("/sync/", json=bad)
        assert refused.status_code == 422
        assert refused.json()["error"]["message"].startswith("pain_reports.0.intensity: ")
        unrated = {k: v for k, v in item.items() if k != "intensity"} | {"id": str(uuid.uuid4())}
        missing = await http.post(
            "/sync/", json={**body, "pain_reports": [unrated], "sync_timestamp": 3}
        )
        assert missing.json()["rejected"][0]["message"] == "data.intensity: Field required"
        gone = {"id": str(report), "operation": "delete"}
        deleted = await http.post(
            "/sync/", json={**body, "pain_reports": [gone], "sync_timestamp": 4}
        )
        assert len(deleted.json()["applied"]) == 1


async def test_the_prompt_carries_the_patients_recent_pain_reports(
    chat_gateway: Gateway, upstream: Upstream
) -> None:
    patient, t = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    yesterday = (now - timedelta(days=1)).isoformat()
    long_ago = (now - timedelta(days=90)).isoformat()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await push(
            ws,
            "p",
            pain_report("old", uuid.uuid4(), intensity=9, region="knee", recorded_at=long_ago),
            pain_report(
                "y", uuid.uuid4(), region="lower back", qualities=["aching"], recorded_at=yesterday
            ),
            pain_report("t", uuid.uuid4(), intensity=4, region="lower back"),
        )
        await send(ws, chat_send(t, "How is my back doing?", "c"))
        await until(ws, "chat.done")
    prompt: list[dict[str, str]] = upstream.behaviour.chat_requests[-1]["messages"]  # type: ignore[assignment]
    [reports] = [m["content"] for m in prompt if "pain reports" in m["content"]]
    lines = reports.splitlines()[1:]
    assert len(lines) == 2  # the one from 90 days ago is not recent
    assert lines[0].endswith("UTC: 4/10, lower back")
    assert lines[1].endswith("UTC: 7/10, lower back (aching)")
    assert f"today is {now:%Y-%m-%d}" in reports


def test_a_report_reads_as_a_dated_line() -> None:
    report = PainReport(
        id=uuid.uuid4(),
        intensity=6,
        recorded_at=datetime(2026, 11, 28, 18, 30, tzinfo=UTC),
        region=None,
        svg_path=LOWER_BACK,
        qualities=("burning", "sharp"),
        note="after gardening",
        onset_at=datetime(2026, 11, 27, tzinfo=UTC),
        thread_id=None,
    )
    [_, reports, _] = build_messages("hi", pain_reports=[report])
    assert reports["content"].splitlines()[1] == (
        "- 2026-11-28 18:30 UTC: 6/10, a region marked on the body map (burning, sharp), "
        "began 2026-11-27: after gardening"
    )
