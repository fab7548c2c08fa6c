"""Builds test data through the public API, the way a client would."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from service.core.accounts import Passwords, issue_access_token
from service.core.db import Database
from service.core.settings import Settings
from service.core.staff import create_staff

_counter = itertools.count(1)
PASSWORD = "correct horse battery"


def day(offset: int = 2) -> datetime:
    """Midnight UTC `offset` days from now: far enough ahead that every slot in it is in the future."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=offset)


def at(hour: float, offset: int = 2) -> datetime:
    return day(offset) + timedelta(hours=hour)


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class User(dict):
    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self['token']}"}


class Factory:
    def __init__(self, client: httpx.AsyncClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    async def user(self, role: str, *, login: bool = False, **fields: Any) -> User:
        number = next(_counter)
        body = {"email": f"{role.lower()}{number}@clinic.example", "name": f"{role} {number}", "role": role,
                "password": PASSWORD, **fields}
        response = await self.client.post("/auth/register", json=body)
        assert response.status_code == 201, response.text
        user = User(response.json())
        if login:
            token = await self.client.post("/auth/login", json={"email": body["email"], "password": PASSWORD})
            assert token.status_code == 200, token.text
            user["token"] = token.json()["access_token"]
        else:  # the same token /auth/login would give, without spending the login rate limit
            user["token"], _ = issue_access_token(user["id"], role, 0, self.settings)
        return user

    async def staff(self, **fields: Any) -> User:
        """A staff member, made the one way there is (the core function behind `python -m service create-staff`),
        who sets a password with the printed token and logs in, as a client would."""
        number = next(_counter)
        db = await Database.connect(self.settings)
        try:
            user, token = await create_staff(db, Passwords(self.settings.bcrypt_rounds),
                                             fields.get("email", f"staff{number}@clinic.example"),
                                             fields.get("name", f"Staff {number}"), 60)
        finally:
            await db.close()
        response = await self.client.post("/auth/reset-password", json={"token": token, "new_password": PASSWORD})
        assert response.status_code == 204, response.text
        login = await self.client.post("/auth/login", json={"email": user["email"], "password": PASSWORD})
        assert login.status_code == 200, login.text
        return User({key: user[key] for key in ("id", "email", "name", "role")}, token=login.json()["access_token"])

    async def doctor(self, **fields: Any) -> User:
        return await self.user("Doctor", **fields)

    async def patient(self, **fields: Any) -> User:
        return await self.user("Patient", **fields)

    async def window(
        self, doctor: User, start: datetime, end: datetime, *, client: httpx.AsyncClient | None = None
    ) -> dict[str, Any]:
        response = await (client or self.client).post("/doctors/availability", headers=doctor.headers,
                                                      json={"start_time": iso(start), "end_time": iso(end)})
        assert response.status_code == 201, response.text
        return response.json()

    async def book(
        self, patient: User, doctor_id: int, start: datetime, end: datetime, *, wait: int | None = None,
        client: httpx.AsyncClient | None = None, **headers: str,
    ) -> httpx.Response:
        all_headers = {**patient.headers, **headers}
        if wait is not None:
            all_headers["Prefer"] = f"wait={wait}"
        return await (client or self.client).post(
            "/appointments", headers=all_headers,
            json={"doctor_id": doctor_id, "start_time": iso(start), "end_time": iso(end)},
        )

    async def booked(
        self, patient: User, doctor_id: int, start: datetime, end: datetime, *, client: httpx.AsyncClient | None = None
    ) -> dict[str, Any]:
        """Book and wait for the decision; return the appointment (asserting it was confirmed)."""
        response = await self.book(patient, doctor_id, start, end, wait=10, client=client)
        assert response.status_code == 201, response.text
        return response.json()

    async def appointment_type(self, doctor: User, **fields: Any) -> dict[str, Any]:
        body = {"name": f"Visit {next(_counter)}", "duration_minutes": 30, **fields}
        response = await self.client.post("/doctors/me/appointment-types", headers=doctor.headers, json=body)
        assert response.status_code == 201, response.text
        return response.json()

    async def time_off(self, doctor: User, start: datetime, end: datetime, **fields: Any) -> dict[str, Any]:
        response = await self.client.post("/doctors/me/time-off", headers=doctor.headers,
                                          json={"start_time": iso(start), "end_time": iso(end), **fields})
        assert response.status_code == 201, response.text
        return response.json()

    async def weekly_hours(self, doctor: User, hours: list[tuple[int, str, str]]) -> dict[str, Any]:
        response = await self.client.put("/doctors/me/weekly-hours", headers=doctor.headers, json={
            "hours": [{"weekday": d, "start": s, "end": e} for d, s, e in hours]})
        assert response.status_code == 200, response.text
        return response.json()
