"""Check that MySQL and Redis answer before anything needs them, and say what to start if not."""

from __future__ import annotations

import socket
import sys
from urllib.parse import urlsplit

from service.core.settings import Settings, SettingsError

HINTS = {
    "MySQL": "start MariaDB/MySQL (e.g. `start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd`, "
             "or `docker compose up -d mysql` with the DATABASE_URL the README's Docker section gives)",
    "Redis": "start Redis (e.g. `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no`, "
             "or `docker compose up -d redis` with the REDIS_URL the README's Docker section gives)",
}


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    redis = urlsplit(settings.redis_url)
    targets = {
        "MySQL": (settings.mysql.host, settings.mysql.port),
        "Redis": (redis.hostname or "127.0.0.1", redis.port or 6379),
    }
    missing = [name for name, (host, port) in targets.items() if not answers(host, port)]
    for name in missing:
        host, port = targets[name]
        print(f"{name} does not answer at {host}:{port}: {HINTS[name]}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
