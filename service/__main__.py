"""`python -m service migrate` creates the database if needed and applies the migrations; `demo` fills a development
database with a small clinic to try."""

from __future__ import annotations

import argparse
import asyncio
import sys

from service.core.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="create the database if missing and apply every migration")
    commands.add_parser("rollback", help="roll back every migration (drops the tables)")
    commands.add_parser("demo", help="migrate, then fill the database with a small clinic to try (never production)")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "demo" and settings.app_env == "production":
        print("refusing to run the demo with APP_ENV=production: it makes doctors, patients and bookings that are not "
              "real, with a password it prints for anyone", file=sys.stderr)
        return 2

    from service.core.db import migrate

    address = settings.mysql
    try:
        done = migrate(settings, rollback_all=args.command == "rollback")
        if args.command == "demo":
            from service.demo import DemoIncomplete, fill

            try:
                print(asyncio.run(fill(settings)))
            except DemoIncomplete as incomplete:
                print(f"demo: {incomplete}", file=sys.stderr)
                return 1
            return 0
    except Exception as exc:  # noqa: BLE001 - say plainly what to start
        if "Can't connect" in str(exc) or "Connection refused" in str(exc) or "2003" in str(exc):
            print(f"cannot reach MySQL at {address.host}:{address.port}: {exc}\n"
                  "Start it (e.g. `docker compose up -d mysql`, or your local MariaDB/MySQL) "
                  "or point DATABASE_URL at a running server.", file=sys.stderr)
            return 1
        raise
    verb = "rolled back" if args.command == "rollback" else "applied"
    print(f"{address.database}: {verb} {len(done)} migration(s){': ' + ', '.join(done) if done else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
