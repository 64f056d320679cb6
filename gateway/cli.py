"""`painar-gateway` (also `python -m gateway`): serve, migrate, token, schema, care-team,
audit, revoke, reembed, erase, fhir-export, summarize."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from uuid import UUID

import asyncpg

from gateway import cli_admin, tracing
from gateway.auth import issue_token
from gateway.ops.error_reports import init_error_reports
from gateway.ops.logs import configure_logging
from gateway.settings import Settings, SettingsError, load_settings
from protocol.asyncapi import asyncapi_document
from protocol.schema import protocol_schema
from storage.database import prepare_schema
from storage.embedded import EmbeddedPostgres, EmbeddedPostgresUnavailable
from storage.migrations import MigrationError

log = logging.getLogger("gateway")

EXIT_CONFIG = 2  # bad settings or arguments
EXIT_STARTUP = 1  # a dependency could not be reached or prepared


class Terminated(Exception):
    """SIGTERM arrived: unwind so that the embedded database is stopped."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "schema":  # needs no settings
        print(json.dumps(protocol_schema(), indent=2))
        return 0
    if args.command == "asyncapi":
        print(json.dumps(asyncapi_document(args.host), indent=2))
        return 0
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"painar-gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    command = args.command or "serve"
    if command == "token":
        return _token(settings, args)
    configure_logging(settings.log_level)
    try:
        if command == "migrate":
            return _migrate(settings)
        admin = ("care-team", "audit", "reembed", "revoke", "erase", "fhir-export", "summarize")
        if command in admin:
            return _admin(settings, args)
        return _serve(settings, args)
    except (KeyboardInterrupt, Terminated):
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="painar-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the gateway (the default)")
    serve.add_argument("--host", help="listen address (default: HOST)")
    serve.add_argument("--port", type=int, help="listen port (default: PORT)")
    serve.add_argument(
        "--no-migrate", action="store_true", help="do not apply pending migrations at start-up"
    )
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    commands.add_parser("schema", help="print the JSON Schema of every protocol frame")
    asyncapi = commands.add_parser("asyncapi", help="print the protocol as an AsyncAPI document")
    asyncapi.add_argument(
        "--host", default="localhost:8000", help="the server's host:port in the document"
    )
    token = commands.add_parser(
        "token",
        help="print a JWT signed with SECRET_KEY (under `just run`: `just token ...`)",
    )
    token.add_argument("--role", choices=["patient", "clinician", "admin"], required=True)
    token.add_argument("--sub", type=UUID, required=True, help="subject (UUID)")
    token.add_argument("--patient-id", type=UUID, help="patient (UUID; default: --sub)")
    token.add_argument("--device-id", help="device id (free string, at most 128 characters)")
    token.add_argument(
        "--ttl", type=int, default=3600, help="lifetime in seconds (default %(default)s)"
    )
    cli_admin.add_commands(commands)
    return parser


def _token(settings: Settings, args: argparse.Namespace) -> int:
    try:
        token = issue_token(
            settings.secret_key.get_secret_value(),
            role=args.role,
            sub=args.sub,
            patient_id=args.patient_id,
            device_id=args.device_id,
            ttl_s=args.ttl,
        )
    except ValueError as exc:
        print(f"painar-gateway token: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(token)
    return 0


@contextmanager
def _database(settings: Settings) -> Iterator[str]:
    """The DSN to use: DATABASE_URL, else an embedded server stopped on the way out."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.data_dir)
    try:
        yield embedded.start()
    finally:
        embedded.stop()


def _prepare(settings: Settings, dsn: str, *, apply: bool) -> None:
    applied = asyncio.run(prepare_schema(dsn, vector_dim=settings.vector_dim, apply=apply))
    log.info("schema ready (%d migration(s) applied)", len(applied))


def _admin(settings: Settings, args: argparse.Namespace) -> int:
    @contextmanager
    def migrated() -> Iterator[str]:
        with _database(settings) as dsn:
            _prepare(settings, dsn, apply=True)
            yield dsn

    return _exit_code(lambda: cli_admin.run(args, migrated, settings))


def _migrate(settings: Settings) -> int:
    def migrate() -> int:
        with _database(settings) as dsn:
            _prepare(settings, dsn, apply=True)
        return 0

    return _exit_code(migrate, unreachable="database unreachable or refused the migration")


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    # Uvicorn handles SIGTERM itself while serving and re-raises it afterwards; this
    # handler turns that into an exception, so the embedded database is stopped too.
    signal.signal(signal.SIGTERM, terminate)
    init_error_reports(
        settings.sentry_dsn,
        environment="development" if settings.debug else "production",
        release=_version(),
    )
    tracing.configure(_version())

    # Imported here: the model clients and the web stack take a second to import, which
    # the other commands (token, schema, care-team...) need not wait for.
    from gateway.app import create_app
    from gateway.server import GatewayServer, uvicorn_config

    def serve() -> int:
        with _database(settings) as dsn:
            _prepare(settings, dsn, apply=not args.no_migrate)
            app = create_app(settings, database_url=dsn)
            host = args.host or settings.host
            port = args.port if args.port is not None else settings.port
            server = GatewayServer(uvicorn_config(app, settings, host, port), app)
            server.run()
            return 0 if server.started else EXIT_STARTUP

    try:
        return _exit_code(serve)
    finally:
        tracing.shutdown()  # sends the spans still buffered


def _exit_code(work: Callable[[], int], unreachable: str = "database unreachable") -> int:
    """Run a command that needs the database; its failures as one line and an exit code."""
    try:
        return work()
    except SettingsError as exc:  # a setting that needs what is not installed
        print(f"painar-gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (MigrationError, EmbeddedPostgresUnavailable) as exc:
        log.error("%s", exc)
        return EXIT_STARTUP
    except (OSError, asyncpg.PostgresError) as exc:
        log.error("%s: %s", unreachable, type(exc).__name__)
        return EXIT_STARTUP


def _version() -> str:
    try:
        return version("painar-gateway")
    except PackageNotFoundError:
        return "unknown"
