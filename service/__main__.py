"""`python -m service migrate` creates the database if needed and applies the migrations; `demo` fills a development
database with a small clinic to try; `create-staff` makes a front-desk account (the only way to make one)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from service.core.settings import Settings, SettingsError

STAFF_TOKEN_HOURS = 72  # the operator hands the token over by hand: longer than a reset email's


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="create the database if missing and apply every migration")
    commands.add_parser("rollback", help="roll back every migration (drops the tables)")
    commands.add_parser("demo", help="migrate, then fill the database with a small clinic to try (never production)")
    staff = commands.add_parser("create-staff", help="make a staff (front desk) account; prints a one-time token "
                                                     "that sets its password")
    staff.add_argument("email")
    staff.add_argument("--name", help="the name shown for the account (default: the email's part before the @)")
    staff.add_argument("--valid-hours", type=int, choices=range(1, 169), default=STAFF_TOKEN_HOURS,
                       metavar="1-168", help=f"how long the token works (default: {STAFF_TOKEN_HOURS})")
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
        if args.command == "create-staff":
            return asyncio.run(create_staff(settings, args.email, args.name, args.valid_hours))
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


async def create_staff(settings: Settings, email: str, name: str | None, valid_hours: int) -> int:
    """The staff account made, and the token that sets its password printed (only the token's hash is kept)."""
    from service.core.accounts import Passwords, reset_token_text
    from service.core.db import Database
    from service.core.errors import AppError
    from service.core.staff import create_staff

    db = await Database.connect(settings)
    try:
        user, token = await create_staff(db, Passwords(settings.bcrypt_rounds), email, name, valid_hours * 60)
    except AppError as refused:
        fields = "".join(f"{error['field']} " for error in refused.extra.get("errors", ()))
        print(f"create-staff: {fields}{refused.detail}", file=sys.stderr)
        return 1
    finally:
        await db.close()
    print(f"Staff account {user['id']} made: {user['email']} ({user['name']}). It has no password yet.\n"
          f"Give this to them, and to no one else. {reset_token_text(token, valid_hours * 60)}"
          "Then they log in with POST /auth/login. A lost token: make a new one with POST /auth/forgot-password.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
