"""`python -m service demo`: a small clinic in a development database, whose printed logins work."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections import Counter
from typing import Any

import httpx
import pymysql
import pymysql.cursors

from service.core.settings import Settings
from tests.support import ROOT, Processes, scratch_database

LOGIN = re.compile(r"^\s+(Doctor|Patient)\s+(\S+@\S+)\s+(\S+)\s", re.MULTILINE)


def run_demo(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", "demo"], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, check=False)


def tables(database_url: str) -> dict[str, list[dict[str, Any]]]:
    address = Settings.from_env({"APP_ENV": "test", "DATABASE_URL": database_url}).mysql
    conn = pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password,
                           database=address.database, cursorclass=pymysql.cursors.DictCursor)
    with conn.cursor() as cursor:
        found = {}
        for table in ("users", "weekly_hours", "appointment_types", "booking_requests", "appointments"):
            cursor.execute(f"SELECT * FROM {table} ORDER BY id")  # fixed names
            found[table] = list(cursor.fetchall())
    conn.close()
    return found


def test_the_demo_fills_a_database_once_and_its_logins_work(
    processes: Processes, settings: Settings, test_env: dict[str, str]
) -> None:
    with scratch_database(settings, "test_demo") as database_url:
        env = {**test_env, "DATABASE_URL": database_url}
        first = run_demo(env)
        assert first.returncode == 0, first.stderr
        logins = LOGIN.findall(first.stdout)
        assert Counter(role for role, _, _ in logins) == {"Doctor": 3, "Patient": 3}, first.stdout
        made = tables(database_url)
        doctors = [user for user in made["users"] if user["role"] == "Doctor"]
        assert len({doctor["timezone"] for doctor in doctors}) == 3  # three time zones
        for doctor in doctors:
            assert [h for h in made["weekly_hours"] if h["doctor_id"] == doctor["id"]]
            assert [t for t in made["appointment_types"] if t["doctor_id"] == doctor["id"]]
        # Through the booking path: every request decided, one lost the race for a slot, the rest confirmed.
        statuses = Counter((r["status"], r["reason"]) for r in made["booking_requests"])
        assert statuses[("rejected", "slot_taken")] == 1 and statuses[("confirmed", None)] >= 4, statuses
        assert len(made["appointments"]) == statuses[("confirmed", None)]
        assert all(a["appointment_type_id"] is not None for a in made["appointments"])

        again = run_demo(env)
        assert again.returncode == 0, again.stderr
        assert "already" in again.stdout and LOGIN.findall(again.stdout) == logins
        assert tables(database_url) == made

        api = processes.start_api({"DATABASE_URL": database_url})
        try:
            logins_work(api, logins)
        finally:
            processes.stop(processes.running[-1])


def logins_work(api: str, logins: list[tuple[str, str, str]]) -> None:
    with httpx.Client(base_url=api, timeout=15) as http:
        for role, email, password in logins:
            login = http.post("/auth/login", json={"email": email, "password": password})
            assert login.status_code == 200, (email, login.text)
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            me = http.get("/auth/me", headers=headers).json()
            assert (me["role"], me["email"]) == (role, email)
            mine = http.get("/appointments/my-appointments", headers=headers).json()
            assert mine["total"] >= 1, (email, mine)  # every one of them has something to look at
            if role == "Doctor":
                slots = http.get(f"/doctors/{me['id']}/slots", params={"duration": 30}).json()
                assert slots["slots"], email


def test_the_demo_refuses_to_run_in_production(settings: Settings) -> None:
    database = f"test_demo_production_{os.getpid()}"
    refused = run_demo({"APP_ENV": "production", "JWT_SECRET": secrets.token_urlsafe(48), "SMTP_URL": "smtp://mail:25",
                        "DATABASE_URL": f"mysql://root:unused@127.0.0.1:3306/{database}"})
    assert refused.returncode != 0
    assert "production" in refused.stderr and refused.stdout == ""
    address = settings.mysql
    conn = pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password)
    with conn.cursor() as cursor:
        assert cursor.execute("SHOW DATABASES LIKE %s", (database,)) == 0
    conn.close()
