"""The web console (/console/) in real headless Chromium (Debian's, driven by Playwright):
a patient page and a clinician page side by side on two gateway processes. The patient
types and speaks (Chromium's fake microphone playing espeak-ng speech, transcribed by the
local Whisper) and rates the pain on the body map, the clinician watches it come in
read-only, the network is cut and restored and both pages converge without duplicates,
a clinician without a grant is refused in words, and axe-core finds no serious
accessibility violation in either view.
Screenshots go to PAINAR_SCREENSHOTS when set (`just screenshots`)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, async_playwright, expect

from storage.care_team import grant, revoke
from tests.chatkit import Upstream, until
from tests.conftest import RedisServer, gateway_process
from tests.speech import RATE, SCRIPTS, as_wav, silence, synthesise
from tests.support import TIMEOUT_S, Gateway
from tests.wsclient import clinician_token, patient_token, recv, send, session

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT_MS = TIMEOUT_S * 3 * 1000  # a transcription on two busy cores included
# Without the networking switches Chromium keeps trying Google's hosts (closed here).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
REPLY = (
    "I'm sorry your lower back hurts. Does it ease when you lie down, or is it there all the "
    "time? Gentle movement and heat often help; let's note how it changes through the day."
)


@asynccontextmanager
async def chromium(*extra_args: str) -> AsyncIterator[Browser]:
    assert os.path.exists(CHROMIUM), "Debian's chromium is missing (just test installs it)"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args]
        )
        try:
            yield browser
        finally:
            await browser.close()


def http_url(ws_url: str) -> str:
    return ws_url.replace("ws://", "http://").removesuffix("/v1/ws")


async def connect(page: Page, base: str, token: str) -> None:
    await page.goto(f"{base}/console/")
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Connect").click()
    await expect(page.locator("#connection")).to_have_text("Connected", timeout=WAIT_MS)


async def serious_violations(page: Page) -> list[str]:
    results = await Axe().run(page)
    violations = results.response["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']}"
        for v in violations
        if v["impact"] in ("serious", "critical")
    ]


async def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.png"
    await page.screenshot(path=path, full_page=True)
    assert path.stat().st_size > 0
    target = os.environ.get("PAINAR_SCREENSHOTS")
    if target:
        shutil.copy(path, Path(target) / path.name)


async def no_duplicates(page: Page, scope: str) -> list[str]:
    """The ids of the messages the page shows, checked to be each shown once."""
    ids = await page.locator(f"{scope} li.message").evaluate_all(
        "items => items.map(item => item.dataset.id)"
    )
    assert len(ids) == len(set(ids)), ids
    return list(ids)


async def test_a_patient_and_an_observing_clinician_side_by_side_on_two_processes(
    database_url: str,
    redis_server: RedisServer,
    upstream: Upstream,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    patient, clinician = uuid.uuid4(), uuid.uuid4()
    await grant(db, clinician, patient, granted_by=uuid.uuid4())
    # Word by word over ~1.2 s: long enough to be seen streaming.
    upstream.behaviour.tokens = re.findall(r"\S+\s*", REPLY)
    upstream.behaviour.token_delay_s = 0.04
    spoken = tmp_path / "spoken.wav"
    speech = synthesise(SCRIPTS["back"], tmp_path)
    spoken.write_bytes(as_wav(silence(300) + speech + silence(700)))
    speech_s = len(speech) / (2 * RATE) + 1.0

    env = {"OPENAI_BASE_URL": upstream.url, "TRANSCRIPTION_PROVIDER": "local"}
    async with (
        gateway_process(database_url, redis_server.url, tmp_path / "a.log", **env) as (_, a_ws),
        gateway_process(database_url, redis_server.url, tmp_path / "b.log", **env) as (_, b_ws),
        chromium(f"--use-file-for-fake-audio-capture={spoken}%noloop") as browser,
    ):
        patient_context = await browser.new_context(permissions=["microphone"])
        clinician_context = await browser.new_context()
        headset, desk = await patient_context.new_page(), await clinician_context.new_page()
        await connect(headset, http_url(a_ws), patient_token(patient, "browser"))
        await connect(desk, http_url(b_ws), clinician_token(clinician))

        # The clinician picks the patient from their care team.
        await desk.get_by_role("button", name=f"Observe patient {str(patient)[:8]}").click()
        pane = desk.locator(f'section.pane[data-patient-id="{patient}"]')
        await expect(pane.locator("[data-presence]")).to_contain_text(
            "Devices connected: browser", timeout=WAIT_MS
        )
        await expect(headset.locator("[data-presence]")).to_contain_text(
            f"Observed by: clinician {str(clinician)[:8]}", timeout=WAIT_MS
        )
        # Read-only: the clinician's page has nothing that writes.
        assert await pane.locator("textarea, [data-composer], [data-microphone]").count() == 0

        # The patient types; the clinician sees the message and the reply stream in.
        await headset.get_by_label("Message").fill("My lower back hurts when I stand up")
        await headset.get_by_label("Where it hurts (optional)").select_option("Lower back")
        await headset.get_by_role("button", name="Send").click()
        user = pane.locator('li[data-role="user"]', has_text="My lower back hurts")
        await expect(user).to_contain_text("at Lower back", timeout=WAIT_MS)
        await expect(pane.locator('li[data-state="streaming"]')).to_have_count(1, timeout=WAIT_MS)
        for page, scope in ((headset, "#patient-view"), (desk, "section.pane")):
            stored = page.locator(f'{scope} li[data-role="assistant"][data-state="stored"]')
            await expect(stored).to_have_text(re.compile(re.escape(REPLY)), timeout=WAIT_MS)

        # The patient rates the pain where it hurts; the clinician's pane shows it.
        await headset.get_by_label("Where it hurts (optional)").select_option("Lower back")
        await headset.get_by_label("Pain now (0 none – 10 worst)").select_option("7")
        await headset.get_by_role("button", name="Record pain").click()
        for page, scope in ((headset, "#patient-view"), (desk, "section.pane")):
            rated = page.locator(f"{scope} [data-pain-reports] li")
            await expect(rated).to_have_count(1, timeout=WAIT_MS)
            await expect(rated).to_contain_text("7/10 · Lower back")
        stored_report = await db.fetchrow(
            "SELECT intensity, region FROM pain_reports WHERE patient_id = $1", patient
        )
        assert stored_report is not None and tuple(stored_report) == (7, "Lower back")

        # The patient speaks: Chromium's microphone plays the spoken file.
        await headset.get_by_role("button", name="Start speaking").click()
        status = headset.locator("[data-voice-status]")
        await expect(status).to_have_text(re.compile(r"Recording"), timeout=WAIT_MS)
        await headset.wait_for_function(
            """seconds => {
                const m = /Recording… ([0-9.]+) s/.exec(
                    document.querySelector("[data-voice-status]").textContent);
                return m !== null && Number(m[1]) >= seconds;
            }""",
            arg=speech_s,
            timeout=WAIT_MS,
        )
        await headset.get_by_role("button", name="Stop speaking").click()
        heard = re.compile(r"lower back", re.IGNORECASE)
        for page, scope in ((headset, "#patient-view"), (desk, "section.pane")):
            await expect(page.locator(f"{scope} [data-transcripts] li").first).to_have_text(
                heard, timeout=WAIT_MS
            )
            voice = page.locator(f'{scope} li[data-role="user"]', has_text="by voice")
            await expect(voice).to_have_text(heard, timeout=WAIT_MS)
            replies = page.locator(f'{scope} li[data-role="assistant"][data-state="stored"]')
            await expect(replies).to_have_count(2, timeout=WAIT_MS)
        await expect(status).to_have_text(heard)

        assert await serious_violations(headset) == []
        assert await serious_violations(desk) == []
        await screenshot(headset, "console-patient", tmp_path)
        await screenshot(desk, "console-clinician", tmp_path)

        # The network goes; meanwhile the patient's phone writes and gets a reply.
        thread = await headset.locator("[data-threads] button[aria-current]").get_attribute(
            "data-thread-id"
        )
        assert thread is not None
        for context in (patient_context, clinician_context):
            await context.set_offline(True)
        for page in (headset, desk):
            await expect(page.locator("#connection")).to_have_text(
                re.compile("reconnecting"), timeout=WAIT_MS
            )
        async with session(a_ws, patient_token(patient, "phone")) as (phone, _):
            note = {"thread_id": thread, "role": "user", "content": "Written on the phone"}
            mutation = {
                "mutation_id": "phone-1",
                "entity": "message",
                "op": "upsert",
                "id": str(uuid.uuid4()),
                "data": note,
            }
            await send(phone, {"type": "sync.push", "id": "p1", "mutations": [mutation]})
            await until(phone, "sync.ack")
            asked = {"type": "chat.send", "id": "c1", "thread_id": thread, "text": "And now?"}
            await send(phone, asked)
            await until(phone, "chat.done")
        for context in (patient_context, clinician_context):
            await context.set_offline(False)

        rows = await db.fetch(
            "SELECT id FROM messages WHERE thread_id = $1 AND NOT deleted", uuid.UUID(thread)
        )
        assert len(rows) == 7  # typed + reply, spoken + reply, phone's note, asked + reply
        for page, scope in ((headset, "#patient-view"), (desk, "section.pane")):
            await expect(page.locator("#connection")).to_have_text("Connected", timeout=WAIT_MS)
            shown = page.locator(f"{scope} li.message")
            await expect(shown).to_have_count(7, timeout=WAIT_MS)
            await expect(shown.filter(has_text="Written on the phone")).to_have_count(1)
            assert sorted(await no_duplicates(page, scope)) == sorted(str(r["id"]) for r in rows)

        # The grant is revoked: the clinician's pane closes and says why.
        assert await revoke(db, clinician, patient)
        await expect(desk.get_by_role("alert")).to_contain_text(
            f"Observation of patient {patient} ended", timeout=WAIT_MS
        )
        await expect(desk.locator("section.pane")).to_have_count(0)


async def test_refusals_are_shown_in_words_and_the_page_fits_a_phone(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient, clinician = uuid.uuid4(), uuid.uuid4()
    async with chromium() as browser:
        page = await browser.new_page()
        # A token the gateway refuses: the reason, not a silent failure.
        await page.goto(f"{gateway.url}/console/")
        await page.get_by_label("Token").fill("not-a-jwt")
        await page.get_by_role("button", name="Connect").click()
        await expect(page.get_by_role("alert")).to_contain_text("invalid token")
        await expect(page.get_by_label("Token")).to_be_visible()

        # A clinician with no grant: an empty team, and a patient they may not observe.
        await connect(page, gateway.url, clinician_token(clinician))
        await expect(page.locator("#team")).to_have_text("No patient on your care team yet.")
        await page.get_by_label("Patient ID").fill("someone")
        await page.get_by_role("button", name="Observe", exact=True).click()
        await expect(page.get_by_role("alert")).to_have_text(
            "Patient ID: must be a UUID such as 3f2b9c1e-…"
        )
        await page.get_by_label("Patient ID").fill(str(patient))
        await page.get_by_role("button", name="Observe", exact=True).click()
        await expect(page.get_by_role("alert")).to_contain_text(
            f"Cannot observe patient {patient}: patient_id: not on this patient's care team"
        )
        await expect(page.locator("section.pane")).to_have_count(0)
        refused = await db.fetchval(
            "SELECT count(*) FROM access_audit WHERE patient_id = $1 AND outcome = 'denied'",
            patient,
        )
        assert refused == 1

        # The patient's page at a phone's width: one column, nothing wider than the screen.
        phone = await browser.new_page(viewport={"width": 375, "height": 740})
        await connect(phone, gateway.url, patient_token(patient, "phone"))
        await expect(phone.get_by_label("Message")).to_be_visible()
        overflow = await phone.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        assert await serious_violations(phone) == []
        assert await serious_violations(page) == []


async def test_a_clinician_observes_several_patients_in_panes_of_their_own(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    clinician, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for patient in (first, second):
        await grant(db, clinician, patient, granted_by=uuid.uuid4())
    async with (
        session(gateway.ws_url, patient_token(first, "first-phone")) as (first_phone, _),
        session(gateway.ws_url, patient_token(second, "second-phone")) as (second_phone, _),
        chromium() as browser,
    ):
        for phone, patient in ((first_phone, first), (second_phone, second)):
            thread = str(uuid.uuid4())
            mutations = [
                {"mutation_id": "t", "entity": "thread", "op": "upsert", "id": thread,
                 "data": {"title": f"Thread of {patient}"}},
                {"mutation_id": "m", "entity": "message", "op": "upsert", "id": str(uuid.uuid4()),
                 "data": {"thread_id": thread, "role": "user", "content": f"Note of {patient}"}},
            ]  # fmt: skip
            await send(phone, {"type": "sync.push", "id": "p", "mutations": mutations})
            await until(phone, "sync.ack")

        page = await browser.new_page()
        await connect(page, gateway.url, clinician_token(clinician))
        for patient in (first, second):
            await page.get_by_role("button", name=f"Observe patient {str(patient)[:8]}").click()
        for patient, other in ((first, second), (second, first)):
            pane = page.locator(f'section.pane[data-patient-id="{patient}"]')
            await expect(pane.locator("li.message")).to_have_text(
                [re.compile(f"Note of {patient}")]
            )
            await expect(pane.locator("[data-threads] button")).to_have_text(
                [f"Thread of {patient}"]
            )
            await expect(pane).not_to_contain_text(str(other))

        # Stop observing the first: its pane goes, its devices see the observer leave.
        first_pane = page.locator(f'section.pane[data-patient-id="{first}"]')
        await first_pane.get_by_role("button", name="Stop observing").click()
        await expect(page.locator("section.pane")).to_have_count(1)
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                frame = await recv(first_phone, skip=("sync.delta",))
                if frame["type"] == "presence" and frame["observers"] == []:
                    break


async def test_the_console_is_served_with_a_strict_policy_and_clinicians_list_their_team(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient, clinician = uuid.uuid4(), uuid.uuid4()
    await grant(db, clinician, patient, granted_by=uuid.uuid4())
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        moved = await http.get("/console")
        assert moved.status_code == 308 and moved.headers["location"] == "/console/"
        page = await http.get("/console/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        script = await http.get("/console/client/client.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert (await http.get("/console/nothing.js")).status_code == 404

        def bearer(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        missing = await http.get("/v1/care-team")
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthenticated"
        patients = await http.get("/v1/care-team", headers=bearer(patient_token(patient)))
        assert patients.status_code == 403
        assert patients.json()["error"]["message"] == "/v1/care-team is for clinicians"
        team = await http.get("/v1/care-team", headers=bearer(clinician_token(clinician)))
        assert team.status_code == 200
        [entry] = team.json()["patients"]
        assert entry["patient_id"] == str(patient) and entry["expires_at"] is None
        other = await http.get("/v1/care-team", headers=bearer(clinician_token()))
        assert other.json() == {"patients": []}
