"""`painar-gateway` as an operator runs it: a real process, real signals, real files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import jwt
import pytest

from gateway.auth import AUDIENCE
from gateway.settings import DEV_SECRET_KEY, Settings, SettingsError, load_settings
from storage.changes import MessageData, Mutation, ThreadData, apply_mutations, current_version
from storage.database import connect
from storage.migrations import default_directory
from tests.conftest import RedisServer, gateway_process
from tests.support import SETTING_NAMES, TEST_SECRET, TIMEOUT_S, free_port, gateway_env
from tests.support import wait_ready as support_wait_ready
from tests.wsclient import patient_token, session

ROOT = Path(__file__).parent.parent


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env=gateway_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"VECTOR_DIM": "abc"}, "VECTOR_DIM"),
        ({"VECTOR_DIM": "4096"}, "VECTOR_DIM"),
        ({"PORT": "70000"}, "PORT"),
        ({"DATABASE_URL": "mysql://db/painar"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://localhost:6379"}, "REDIS_URL"),
        ({"REDIS_URL": "redis+cluster://"}, "REDIS_URL"),  # no node
        ({"REDIS_URL": "redis+cluster://10.0.0.1:7000,10.0.0.2:port"}, "REDIS_URL"),
        ({"REDIS_URL": "rediss+cluster://:6379"}, "REDIS_URL"),  # no host
        ({"REDIS_URL": "redis://r:6379?ssl_ca_certs=/etc/hostname"}, "REDIS_URL"),  # no TLS
        ({"REDIS_URL": "rediss://r:6380?ssl_ca_certs=/nonexistent/ca.pem"}, "REDIS_URL"),
        ({"REDIS_URL": "rediss://r:6380?ssl_cert_reqs=none"}, "REDIS_URL"),  # unverified: no
        ({"OPENAI_BASE_URL": "localhost:8080"}, "OPENAI_BASE_URL"),
        ({"SENTRY_DSN": "not a url"}, "SENTRY_DSN"),
        ({"DEBUG": "perhaps"}, "DEBUG"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"SECRET_KEY": "too-short"}, "SECRET_KEY"),
        ({"SECRET_KEY": "", "DEBUG": "true"}, "SECRET_KEY"),
        ({"DB_POOL_MIN": "5", "DB_POOL_MAX": "2"}, "DB_POOL_MAX"),
        ({"DB_POOL_MIN": "0"}, "DB_POOL_MIN"),
        ({"RETRIEVAL_K": "51"}, "RETRIEVAL_K"),
        ({"RETRIEVAL_MIN_SIMILARITY": "2"}, "RETRIEVAL_MIN_SIMILARITY"),
        ({"RETRIEVAL_EXACT_LIMIT": "-1"}, "RETRIEVAL_EXACT_LIMIT"),
        ({"CHAT_FIRST_TOKEN_TIMEOUT_S": "0"}, "CHAT_FIRST_TOKEN_TIMEOUT_S"),
        ({"CHAT_RETRIES": "11"}, "CHAT_RETRIES"),
        ({"CHAT_COALESCE_MS": "-1"}, "CHAT_COALESCE_MS"),
        ({"REPLY_LEASE_S": "1"}, "REPLY_LEASE_S"),
        ({"TRANSCRIPTION_PROVIDER": "whisper"}, "TRANSCRIPTION_PROVIDER"),
        ({"TRANSCRIPTION_PROVIDER": "openai"}, "TRANSCRIPTION_PROVIDER"),  # no key, no URL
        ({"TRANSCRIPTION_CONCURRENCY": "0"}, "TRANSCRIPTION_CONCURRENCY"),
        ({"TRANSCRIPTION_CPU_THREADS": "0"}, "TRANSCRIPTION_CPU_THREADS"),
        ({"MAX_AUDIO_SECONDS": "0"}, "MAX_AUDIO_SECONDS"),
        ({"AUDIO_IDLE_TIMEOUT_S": "0"}, "AUDIO_IDLE_TIMEOUT_S"),
        ({"AUDIO_SPOOL_BYTES": "-1"}, "AUDIO_SPOOL_BYTES"),
        ({"MAX_AUDIO_STREAMS": "0"}, "MAX_AUDIO_STREAMS"),
        ({"OBSERVE_RECHECK_S": "0"}, "OBSERVE_RECHECK_S"),
        ({"OBSERVE_SNAPSHOT_MESSAGES": "501"}, "OBSERVE_SNAPSHOT_MESSAGES"),
        ({"AUDIT_RETENTION_DAYS": "0"}, "AUDIT_RETENTION_DAYS"),
        ({"EMBED_BATCH": "0"}, "EMBED_BATCH"),
        ({"EMBED_POLL_S": "0"}, "EMBED_POLL_S"),
        ({"EMBED_REST_FACTOR": "-1"}, "EMBED_REST_FACTOR"),
        ({"MAX_TOKEN_TTL_S": "10"}, "MAX_TOKEN_TTL_S"),
        ({"REVOCATION_CHECK_S": "0"}, "REVOCATION_CHECK_S"),
        ({"OPENAI_BASE_URL": "http://10.1.2.3:8000/v1"}, "OPENAI_BASE_URL"),  # not https
        ({"JWKS_URL": "http://id.example/jwks.json"}, "JWKS_URL"),
        ({"MAX_BODY_BYTES": "10"}, "MAX_BODY_BYTES"),
        ({"DB_ACQUIRE_TIMEOUT_S": "0"}, "DB_ACQUIRE_TIMEOUT_S"),
        ({"MAX_REPLIES_PER_PATIENT": "0"}, "MAX_REPLIES_PER_PATIENT"),
        ({"MAX_WRITES_PER_PATIENT": "0"}, "MAX_WRITES_PER_PATIENT"),
        ({"MAX_SOCKETS_PER_PATIENT": "0"}, "MAX_SOCKETS_PER_PATIENT"),
        ({"REST_REQUESTS_PER_S": "0"}, "REST_REQUESTS_PER_S"),
        ({"REST_BURST": "0"}, "REST_BURST"),
        ({"PATIENT_FRAMES_PER_S": "0"}, "PATIENT_FRAMES_PER_S"),
        ({"PATIENT_BURST": "0"}, "PATIENT_BURST"),
        ({"JWKS_CACHE_S": "0"}, "JWKS_CACHE_S"),
        ({"JWKS_MIN_REFRESH_S": "-1"}, "JWKS_MIN_REFRESH_S"),
        ({"SYNC_PAGE_BYTES": "10"}, "SYNC_PAGE_BYTES"),
        ({"SYNC_PAGE_BYTES": "4194304"}, "SYNC_PAGE_BYTES"),
        ({"FHIR_WEBHOOK_URL": "http://fhir.example/r4"}, "FHIR_WEBHOOK_URL"),  # not https
        ({"FHIR_WEBHOOK_URL": "ftp://fhir.example/r4"}, "FHIR_WEBHOOK_URL"),
        ({"FHIR_EXPORT_BATCH": "0"}, "FHIR_EXPORT_BATCH"),
        ({"SUMMARY_AT": "25:00"}, "SUMMARY_AT"),
        ({"SUMMARY_AT": "nightly"}, "SUMMARY_AT"),
        ({"SUMMARY_TIMEZONE": "Mars/Olympus"}, "SUMMARY_TIMEZONE"),
        ({"SUMMARY_CONCURRENCY": "0"}, "SUMMARY_CONCURRENCY"),
        ({"SUMMARY_MAX_THREADS": "0"}, "SUMMARY_MAX_THREADS"),
        ({"SUMMARY_MAX_CHARS": "50"}, "SUMMARY_MAX_CHARS"),
        ({"FHIR_EXPORT_POLL_S": "0"}, "FHIR_EXPORT_POLL_S"),
        ({"FHIR_EXPORT_TIMEOUT_S": "0"}, "FHIR_EXPORT_TIMEOUT_S"),
        ({"FHIR_EXPORT_MAX_BACKOFF_S": "0"}, "FHIR_EXPORT_MAX_BACKOFF_S"),
    ],
)
def test_a_bad_setting_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert message.startswith(f"{variable}: ") and "\n" not in message


def test_the_development_secret_needs_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SettingsError, match="^SECRET_KEY: .*DEBUG=true"):
        load_settings(_env_file=None)
    assert load_settings(_env_file=None, debug=True).debug


def test_the_original_backends_database_url_is_accepted() -> None:
    settings = load_settings(
        _env_file=None,
        secret_key=TEST_SECRET,
        database_url="postgresql+psycopg://user:password@localhost:5432/painar",
    )
    assert settings.database_url == "postgresql://user:password@localhost:5432/painar"
    socket = load_settings(
        _env_file=None, secret_key=TEST_SECRET, database_url="postgresql:///painar?host=/run/pg"
    )
    assert socket.database_url == "postgresql:///painar?host=/run/pg"


def test_a_bad_setting_stops_serve_with_exit_2_and_one_line(tmp_path: Path) -> None:
    result = run_cli("serve", cwd=tmp_path, SECRET_KEY=TEST_SECRET, VECTOR_DIM="abc")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("painar-gateway: configuration error: VECTOR_DIM:")
    assert not (tmp_path / ".data").exists()  # nothing was started


def test_settings_come_from_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("VECTOR_DIM=not-a-number\n")
    result = run_cli("serve", cwd=tmp_path, SECRET_KEY=TEST_SECRET)
    assert result.returncode == 2
    assert "VECTOR_DIM" in result.stderr


def test_values_of_bad_settings_are_not_echoed(tmp_path: Path) -> None:
    secret_url = "mysql://admin:hunter2-secret@db/painar"
    result = run_cli("serve", cwd=tmp_path, SECRET_KEY=TEST_SECRET, DATABASE_URL=secret_url)
    assert result.returncode == 2
    assert "hunter2" not in result.stderr


def test_token_prints_a_jwt_for_the_gateway_audience(tmp_path: Path) -> None:
    sub = uuid.uuid4()
    result = run_cli(
        "token",
        "--role",
        "patient",
        "--sub",
        str(sub),
        "--device-id",
        "headset-1",
        "--ttl",
        "60",
        cwd=tmp_path,
        SECRET_KEY=TEST_SECRET,
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), TEST_SECRET, ["HS256"], audience=AUDIENCE)
    assert claims["sub"] == claims["patient_id"] == str(sub)
    assert (claims["role"], claims["device_id"]) == ("patient", "headset-1")
    assert claims["exp"] - claims["iat"] == 60


def test_the_readmes_token_command_works_in_a_fresh_shell(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert 'just token --role patient --sub "$(python3' in readme
    just = shutil.which("just")
    assert just, "`just` is missing (pip install rust-just)"
    sub = uuid.uuid4()
    result = subprocess.run(
        [
            just,
            "--justfile",
            str(ROOT / "justfile"),
            "token",
            "--role",
            "patient",
            "--sub",
            str(sub),
        ],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},  # no SECRET_KEY, no DEBUG
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # Signed with what `just run` verifies with: the development default under DEBUG.
    claims = jwt.decode(result.stdout.strip(), DEV_SECRET_KEY, ["HS256"], audience=AUDIENCE)
    assert claims["sub"] == str(sub) and claims["exp"] - claims["iat"] == 3600
    help_text = run_cli("token", "--help", cwd=tmp_path).stdout
    assert "default 3600" in help_text


def test_token_for_a_clinician_names_no_patient(tmp_path: Path) -> None:
    args = ["token", "--role", "clinician", "--sub", str(uuid.uuid4())]
    result = run_cli(*args, cwd=tmp_path, SECRET_KEY=TEST_SECRET)
    assert result.returncode == 0
    claims = jwt.decode(result.stdout.strip(), TEST_SECRET, ["HS256"], audience=AUDIENCE)
    assert claims["role"] == "clinician" and "patient_id" not in claims

    refused = run_cli(
        *args, "--patient-id", str(uuid.uuid4()), cwd=tmp_path, SECRET_KEY=TEST_SECRET
    )
    assert refused.returncode == 2
    assert "patient_id" in refused.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["token", "--role", "nurse", "--sub", str(uuid.UUID(int=1))],
        ["token", "--role", "patient", "--sub", "not-a-uuid"],
        ["token", "--role", "patient", "--sub", str(uuid.UUID(int=1)), "--ttl", "0"],
    ],
)
def test_token_refuses_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    result = run_cli(*args, cwd=tmp_path, SECRET_KEY=TEST_SECRET)
    assert result.returncode == 2
    assert result.stdout == ""


def test_migrate_applies_once_then_finds_nothing_to_do(
    tmp_path: Path, blank_database_url: str
) -> None:
    env = {"SECRET_KEY": TEST_SECRET, "DATABASE_URL": blank_database_url, "VECTOR_DIM": "8"}
    first = run_cli("migrate", cwd=tmp_path, **env)
    assert first.returncode == 0, first.stderr
    files = len(list(default_directory().glob("*.sql")))
    assert f"{files} migration(s) applied" in first.stderr
    second = run_cli("migrate", cwd=tmp_path, **env)
    assert second.returncode == 0
    assert "0 migration(s) applied" in second.stderr
    wrong_dim = run_cli("migrate", cwd=tmp_path, **{**env, "VECTOR_DIM": "9"})
    assert wrong_dim.returncode == 1
    assert "VECTOR_DIM is 9" in wrong_dim.stderr


def test_serve_refuses_an_unreachable_database_in_one_line(tmp_path: Path) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/painar"
    result = run_cli("serve", cwd=tmp_path, SECRET_KEY=TEST_SECRET, DATABASE_URL=dsn)
    assert result.returncode == 1
    assert "database unreachable" in result.stderr
    assert "Traceback" not in result.stderr


async def start_serving(data_dir: Path, port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        cwd=data_dir,
        env=gateway_env(DEBUG="true", DATA_DIR=str(data_dir / ".data"), PORT=str(port)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_ready(port: int) -> None:
    await support_wait_ready(port, 60, "the gateway to become ready")


def embedded_dsn(pgdata: Path) -> str:
    """The running embedded server's socket directory is line 5 of postmaster.pid."""
    socket_dir = (pgdata / "postmaster.pid").read_text().splitlines()[4]
    return f"postgresql://postgres@/postgres?host={socket_dir}"


async def stop_with(process: asyncio.subprocess.Process, signum: int) -> str:
    process.send_signal(signum)
    async with asyncio.timeout(TIMEOUT_S * 3):
        _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stderr.decode()


async def test_serve_on_embedded_defaults_stops_cleanly_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    port = free_port()
    pgdata = tmp_path / ".data" / "postgres"
    patient = uuid.uuid4()

    process = await start_serving(tmp_path, port)
    try:
        await wait_ready(port)
        conn = await connect(embedded_dsn(pgdata))
        try:
            thread = Mutation("thread", "upsert", uuid.uuid4(), ThreadData("kept"))
            await apply_mutations(conn, patient, [thread])
        finally:
            await conn.close()
    finally:
        log = await stop_with(process, signal.SIGTERM)
    assert "stopping embedded PostgreSQL" in log
    assert not (pgdata / "postmaster.pid").exists()

    process = await start_serving(tmp_path, port)
    try:
        await wait_ready(port)
        conn = await connect(embedded_dsn(pgdata))
        try:
            assert await current_version(conn, patient) == 1
        finally:
            await conn.close()
    finally:
        await stop_with(process, signal.SIGINT)
    assert not (pgdata / "postmaster.pid").exists()


def test_schema_prints_the_json_schema_of_every_frame(tmp_path: Path) -> None:
    result = run_cli("schema", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["title"] == "PainAR wire protocol, version 1"
    assert set(schema) >= {"client", "server"}
    assert "chat.send" in result.stdout and "session.ready" in result.stdout


def test_care_team_grant_list_revoke_and_the_audit_trail(tmp_path: Path, database_url: str) -> None:
    env = {"SECRET_KEY": TEST_SECRET, "DATABASE_URL": database_url}
    clinician, patient = str(uuid.uuid4()), str(uuid.uuid4())
    pair = ["--clinician", clinician, "--patient", patient]
    granted = run_cli("care-team", "grant", *pair, "--expires", "2099-01-01", cwd=tmp_path, **env)
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout.strip() == (
        f"clinician {clinician} patient {patient} until 2099-01-01T00:00:00+00:00"
    )
    listed = run_cli("care-team", "list", "--patient", patient, cwd=tmp_path, **env)
    assert listed.stdout == granted.stdout
    assert run_cli("care-team", "revoke", *pair, cwd=tmp_path, **env).returncode == 0
    again = run_cli("care-team", "revoke", *pair, cwd=tmp_path, **env)
    assert again.returncode == 3 and "no such grant" in again.stderr
    bad = run_cli("care-team", "grant", *pair, "--expires", "soon", cwd=tmp_path, **env)
    assert bad.returncode == 2 and "not an ISO-8601 time" in bad.stderr
    trail = run_cli("audit", "--patient", patient, "--format", "json", cwd=tmp_path, **env)
    assert trail.returncode == 0, trail.stderr
    events = [json.loads(line) for line in trail.stdout.splitlines()]
    assert [(e["action"], e["outcome"], e["actor_role"]) for e in events] == [
        ("grant", "allowed", "admin"),
        ("revoke", "allowed", "admin"),
        ("revoke", "denied", "admin"),
    ]
    assert all(e["patient_id"] == patient and e["at"] for e in events)
    table = run_cli("audit", "--patient", patient, cwd=tmp_path, **env)
    assert len(table.stdout.splitlines()) == 3


def test_token_for_an_admin(tmp_path: Path) -> None:
    sub = str(uuid.uuid4())
    result = run_cli("token", "--role", "admin", "--sub", sub, cwd=tmp_path, SECRET_KEY=TEST_SECRET)
    assert result.returncode == 0
    claims = jwt.decode(result.stdout.strip(), TEST_SECRET, ["HS256"], audience=AUDIENCE)
    assert (claims["role"], claims["sub"]) == ("admin", sub) and "patient_id" not in claims


async def test_reembed_queues_every_live_message_again(tmp_path: Path, database_url: str) -> None:
    patient, thread = uuid.uuid4(), uuid.uuid4()
    conn = await connect(database_url)
    try:
        await apply_mutations(
            conn,
            patient,
            [
                Mutation("thread", "upsert", thread, ThreadData("t")),
                Mutation("message", "upsert", uuid.uuid4(), MessageData(thread, "user", "one")),
                Mutation("message", "upsert", uuid.uuid4(), MessageData(thread, "user", "two")),
            ],
        )
        await conn.execute("DELETE FROM embedding_queue")  # as if embedded already
        env = {"SECRET_KEY": TEST_SECRET, "DATABASE_URL": database_url}
        result = run_cli("reembed", "--patient", str(patient), cwd=tmp_path, **env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("queued 2 message(s)")
        assert await conn.fetchval("SELECT count(*) FROM embedding_queue") == 2
    finally:
        await conn.close()


def test_debug_on_a_reachable_address_needs_its_own_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SettingsError, match="^DEBUG: on a non-loopback HOST"):
        load_settings(_env_file=None, debug=True, host="0.0.0.0")
    with pytest.raises(SettingsError, match="^DEBUG: on a non-loopback HOST"):
        load_settings(_env_file=None, debug=True, host="0.0.0.0", secret_key=TEST_SECRET)
    explicit = load_settings(
        _env_file=None, debug=True, host="0.0.0.0", secret_key=TEST_SECRET, dev_token="x" * 24
    )
    assert explicit.debug
    assert load_settings(_env_file=None, debug=True).host == "127.0.0.1"  # just run's case
    result = run_cli("serve", cwd=tmp_path, DEBUG="true", HOST="0.0.0.0")
    assert result.returncode == 2 and "DEBUG: on a non-loopback HOST" in result.stderr


def test_every_setting_is_in_the_readmes_configuration_table() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme[readme.index("## Configuration") :]
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in table]
    assert not missing, f"settings missing from README's configuration table: {missing}"


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
async def test_the_log_has_no_line_per_socket_and_log_level_holds_for_uvicorn(
    database_url: str, redis_server: RedisServer, tmp_path: Path, level: str
) -> None:
    log_path = tmp_path / "gateway.log"
    async with gateway_process(database_url, redis_server.url, log_path, LOG_LEVEL=level) as (
        process,
        url,
    ):
        for device in ("a", "b"):
            async with session(url, patient_token(uuid.uuid4(), device)):
                pass
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT_S):
            await process.wait()
    lines = log_path.read_text().splitlines()
    assert not [line for line in lines if "connection open" in line or "connection closed" in line]
    assert not [line for line in lines if '"WebSocket /v1/ws"' in line]
    infos = [line for line in lines if " INFO " in line]
    if level == "INFO":
        assert any("Uvicorn running on" in line for line in infos)  # start and stop stay
        assert any("Finished server process" in line for line in infos)
    else:
        assert infos == []
