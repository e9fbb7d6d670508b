"""The ``sip-hub`` command line: serve, migrate, client create/list/disable/enable, deadlines."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .settings import Settings

if TYPE_CHECKING:
    from pydantic import ValidationError


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from . import demo, logs, serving
    from .app import ConfigurationError, check_settings
    from .auth import load_keys
    from .service import FhirService
    from .store import Store
    from .store.engine import make_engine
    from .store.migrate import require_current, upgrade

    # The worker processes read their settings from the environment: where the command line
    # says the hub listens is where the URLs it emits name (without SIP_HUB_BASE_URL).
    if args.host:
        os.environ["SIP_HUB_HOST"] = args.host
    if args.port:
        os.environ["SIP_HUB_PORT"] = str(args.port)
    check_settings(settings)
    load_keys(settings)  # (each worker reads them: one they cannot use is refused here first)
    engine = make_engine(settings.database_url)
    if settings.auto_migrate:
        # Migrate once here, not in every worker process.
        upgrade(engine)
        os.environ["SIP_HUB_AUTO_MIGRATE"] = "false"
    else:  # refused in one line (exit 2), as the other commands do, not a traceback
        require_current(engine)
    # Publish the conformance resources (and in dev the demo configuration) once, before the
    # workers race to do it; a demo Bundle the hub refuses is named here, in one line, not in
    # a traceback from a worker's start-up.
    store = Store(engine)
    FhirService(store).seed_definitions()
    try:
        demo.load(store, settings)
    except ValueError as exc:
        raise ConfigurationError(f"Refusing to start: {exc}") from None
    os.environ[demo.PRELOADED] = "1"
    engine.dispose()
    return serving.run(args.workers or settings.workers, app="sip_hub.app:create_app",
                       factory=True, host=args.host or settings.host,
                       port=args.port or settings.port, log_level=settings.log_level,
                       log_config=logs.config(settings.log_level, settings.log_format),
                       access_log=settings.access_log, proxy_headers=True,
                       server_header=False, http=serving.HttpProtocol)


def _migrate(_args: argparse.Namespace, settings: Settings) -> int:
    from .app import ConfigurationError
    from .store.engine import make_engine, shown_database_url
    from .store.migrate import upgrade

    # In production, the database the API would refuse (a demo password, SQLite) is refused
    # here too; the rest of the API's checks (keys, broker) are not this command's concern.
    problems = settings.production_database_problems() if settings.env == "production" else []
    if problems:
        raise ConfigurationError("Refusing to migrate in production: " + "; ".join(problems))
    engine = make_engine(settings.database_url)
    upgrade(engine)
    print(f"database at head: {shown_database_url(engine.url)}")
    return 0


def _client_create(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from . import clients
    from .app import build_store

    store = build_store(settings)
    created = clients.create_client(store, org=args.org, scope=args.scope, name=args.name,
                                    role=args.role, personal_data=args.personal_data)
    sys.stdout.write(orjson.dumps(created).decode() + "\n")
    return 0


def _client_state(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from . import clients
    from .app import build_store

    store = build_store(settings)
    disabled = args.client_command == "disable"
    clients.set_disabled(store, args.client_id, disabled)
    sys.stdout.write(orjson.dumps({"client_id": args.client_id,
                                   "disabled": disabled}).decode() + "\n")
    return 0


def _client_list(_args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from . import clients
    from .app import build_store

    for client in clients.listing(build_store(settings)):
        sys.stdout.write(orjson.dumps(client).decode() + "\n")
    return 0


def _deadlines(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from . import deadlines
    from .app import build_store
    from .audit import AuditLog
    from .fhir import sip
    from .fhir.dates import from_us

    store = build_store(settings)
    try:
        # (a date is a Swedish day, as every date of the SIP: from Swedish midnight, not UTC's)
        at = from_us(sip.swedish_range(args.at)[0]) if args.at is not None else None
    except ValueError:
        sys.stderr.write(f"sip-hub: --at '{args.at}' is not a FHIR dateTime or date\n")
        return 2
    report = deadlines.Scheduler(store, settings, AuditLog(store)).run_once(at)
    if report.skipped:
        sys.stderr.write("sip-hub: another process is scanning the deadlines; try again\n")
        return 1
    sys.stdout.write(orjson.dumps(report.as_json()).decode() + "\n")
    return 0


def _worker(_args: argparse.Namespace, settings: Settings) -> int:
    from .app import check_settings
    from .messaging.worker import run_worker

    # As `serve` does: a worker started on settings the hub refuses (an endpoints file it
    # cannot read, production without its keys) failed later, or ran unchecked.
    check_settings(settings)
    run_worker(settings)
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from .messaging.worker import replay

    done = replay(settings, None if args.all else args.ids)
    sys.stdout.write(orjson.dumps({"replayed": done}).decode() + "\n")
    if args.ids and not done:
        # As the HTTP replay's 404: a mistyped id is not a replay that went well.
        sys.stderr.write("sip-hub: no dead delivery with id or MessageHeader.id "
                         f"{', '.join(args.ids)}\n")
        return 1
    return 0


def _number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` (to ``high``); else a usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{value} is out of range ({low} to {high if high is not None else 'any'})")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sip-hub", description="sip_hub: SIP integration hub")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the HTTP API")
    s.add_argument("--host")
    s.add_argument("--port", type=_number(1, 65535))
    s.add_argument("--workers", type=_number(1))
    s.set_defaults(func=_serve)
    w = sub.add_parser("worker", help="run the messaging relay and deliveries")
    w.set_defaults(func=_worker)
    msgs = sub.add_parser("messages", help="operate on messages")
    msub = msgs.add_subparsers(dest="messages_command", required=True)
    rp = msub.add_parser("replay", help="send dead-lettered deliveries again")
    rp.add_argument("ids", nargs="*", help="delivery ids (see the console: /admin/messages)")
    rp.add_argument("--all", action="store_true", help="every dead-lettered delivery")
    rp.set_defaults(func=_replay, check=lambda args: _replay_usage(rp, args))
    m = sub.add_parser("migrate", help="bring the database schema to the newest version")
    m.set_defaults(func=_migrate)
    c = sub.add_parser("client", help="manage API clients")
    csub = c.add_subparsers(dest="client_command", required=True)
    cc = csub.add_parser("create", help="register a new API client of an organisation")
    cc.add_argument("--org", required=True, help="the organisation's HSA-id")
    cc.add_argument("--scope", required=True, help='SMART v2 scopes, e.g. "system/CarePlan.rs"')
    cc.add_argument("--name", default=None)
    cc.add_argument("--role", default="organization", choices=["organization", "portal", "admin"],
                    help="organisation system (default), the national portal, or admin")
    cc.add_argument("--personal-data", action="store_true",
                    help="admin only: allow access to personal data (audited)")
    cc.set_defaults(func=_client_create)
    for verb, what in (("disable", "refuse the client's secret and, within seconds, the tokens "
                                   "it holds"),
                       ("enable", "let a disabled client in again")):
        cs = csub.add_parser(verb, help=what)
        cs.add_argument("client_id")
        cs.set_defaults(func=_client_state)
    cl = csub.add_parser("list", help="every client, a JSON object a line")
    cl.set_defaults(func=_client_list)
    d = sub.add_parser("deadlines", help="open and close the SIP deadline Tasks now "
                                         "(the API process also does this every few minutes)")
    d.add_argument("--at", help="scan every open SIP as of this dateTime, or the start of this "
                                "date in Sweden (without it: the SIPs changed since the last "
                                "scan or with a deadline come)")
    d.set_defaults(func=_deadlines)
    return p


def _replay_usage(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.all == bool(args.ids):
        p.error("name delivery ids or give --all, not both")


def _invalid(prefix: str, exc: "ValidationError") -> str:
    return "; ".join(
        (f"{prefix}{'_'.join(map(str, e['loc'])).upper()}: " if e["loc"] else "") + e["msg"]
        for e in exc.errors())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if hasattr(args, "check"):
        args.check(args)
    from pydantic import ValidationError
    from sqlalchemy.exc import OperationalError

    from . import logs
    from .app import ConfigurationError
    from .errors import SipHubError
    from .messaging.config import MessagingSettings
    from .store.migrate import MigrationError

    try:
        settings = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"sip-hub: invalid settings: {_invalid('SIP_HUB_', exc)}\n")
        return 2
    try:
        # Read by the worker, the API and replay only when they get to messaging (the worker
        # at its first message): a bad value must stop every command here, named.
        MessagingSettings.for_hub(settings)
    except ValidationError as exc:
        sys.stderr.write(f"sip-hub: invalid settings: {_invalid('SIP_HUB_MESSAGE_', exc)}\n")
        return 2
    logs.configure(settings.log_level, settings.log_format)
    try:
        return int(args.func(args, settings))
    except SipHubError as exc:
        sys.stderr.write(f"sip-hub: {exc.diagnostics}\n")
        # A service that is down is a failure (try again later), not a usage error.
        return 1 if exc.retryable else 2
    except ConfigurationError as exc:
        sys.stderr.write(f"sip-hub: {exc}\n")
        return 2
    except MigrationError as exc:  # a database of a newer release
        sys.stderr.write(f"sip-hub: {exc}\n")
        return 2
    except OperationalError as exc:  # the database cannot be reached (migrate, clients)
        reason = str(exc.orig or exc).strip().splitlines()[0]
        sys.stderr.write(f"sip-hub: database unavailable: {reason}\n")
        return 1
    except OSError as exc:  # an SQLite file whose directory cannot be made
        sys.stderr.write(f"sip-hub: {exc}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
