"""Random secrets for docker compose: JWT_SECRET, MYSQL_PASSWORD and REDIS_PASSWORD, written into .env.

Compose reads .env for the ${...} in docker-compose.yml and refuses to start while any of these is unset. A value
already in .env is kept; an empty one (as copied from .env.example) is filled; a missing one is added.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

NAMES = ("JWT_SECRET", "MYSQL_PASSWORD", "REDIS_PASSWORD")


def with_secrets(lines: list[str]) -> tuple[list[str], list[str]]:
    """The lines of a .env with each of NAMES set, and the names given a value (URL-safe: the passwords go into
    DATABASE_URL and REDIS_URL)."""
    given = {name.strip() for name, _, value in (line.partition("=") for line in lines) if value.strip()}
    fresh = {name: secrets.token_urlsafe(48) for name in NAMES if name not in given}
    made = list(fresh)
    filled = [f"{name}={fresh.pop(name)}" if (name := line.partition("=")[0].strip()) in fresh else line
              for line in lines]
    return filled + [f"{name}={value}" for name, value in fresh.items()], made


def main(path: Path = Path(".env")) -> int:
    lines, made = with_secrets(path.read_text().splitlines() if path.exists() else [])
    if not made:
        print(f"{path}: {', '.join(NAMES)} already set; nothing changed")
        return 0
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    print(f"{path}: set {', '.join(made)} to random values; docker compose reads them from there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
