"""The load generator, in its own process: `python -m tests.bench.load <config.json>` prints JSON results.

It behaves like real clients: books (POST, then long polls the status URL until decided), reads slots, searches
the directory. The config's `scenario` names what it runs: the steady booking here (which registers its doctors
and patients through the API), the others in their own modules (tests/bench/rush.py, directory.py, mixed.py),
whose clinics were seeded in MySQL beforehand and whose users' tokens are minted here.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import import_module
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from service.core.accounts import issue_access_token
from service.core.settings import Settings
from tests.bench.cpu import snapshot, spent

CONNECTION_TRIES = 3
settings_from_env = cache(lambda: Settings.from_env(os.environ))

PASSWORD = "bench-password-1"
STEADY_TYPE = {"name": "Consultation", "duration_minutes": 25, "buffer_after_minutes": 5, "min_notice_minutes": 60}


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def iso(value: datetime) -> str:
    return value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def token_for(user_id: int, role: str) -> str:
    """The token /auth/login would give a seeded user (the loader runs with the service's JWT_SECRET)."""
    return issue_access_token(user_id, role, 0, settings_from_env())[0]


class Client:
    """HTTP as a client does it, timed: one request, or a booking followed to its decision."""

    def __init__(self, config: dict[str, Any], session: aiohttp.ClientSession) -> None:
        self.config = config
        self.http = session
        self.api = config["api_url"]
        self.rng = random.Random(config.get("seed", 7))
        self.connection_retries = 0
        # The steady booking sends none, as it always has: a key costs the API a lookup before its insert.
        self.idempotency_keys = config.get("idempotency_keys", True)

    async def request(self, method: str, path: str, token: str | None = None, json: Any = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any, str | None]:
        """Status, decoded body and Location; msgspec for the JSON both ways, so the load generator leaves more
        CPU to the service."""
        headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
        data = None
        if json is not None:
            headers["Content-Type"] = "application/json"
            data = msgspec.json.encode(json)
        async with self.http.request(method, self.api + path, headers=headers, data=data) as response:
            raw = await response.read()
            body = msgspec.json.decode(raw) if raw and response.content_type.endswith("json") else None
            return response.status, body, response.headers.get("Location")

    async def call(self, method: str, path: str, token: str | None = None, json: Any = None) -> tuple[int, Any]:
        status, body, _ = await self.request(method, path, token, json)
        return status, body

    async def retrying(self, method: str, path: str, token: str | None = None, json: Any = None,
                       headers: dict[str, str] | None = None) -> tuple[int, Any, str | None]:
        """A request sent again when the connection failed (refused in a crowd, or a kept-alive one closed by the
        server as it was reused), as a careful client does: reads and cancellations (a second DELETE answers the
        cancelled appointment again), writes with an Idempotency-Key; a write without one only when it never
        reached the server (the connection could not be made)."""
        safe = method in ("GET", "DELETE") or "Idempotency-Key" in (headers or {})
        for attempt in range(CONNECTION_TRIES):
            try:
                return await self.request(method, path, token, json, headers)
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                if attempt == CONNECTION_TRIES - 1 or not (safe or isinstance(exc, aiohttp.ClientConnectorError)):
                    raise
                self.connection_retries += 1
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    async def submit_and_follow(self, token: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a booking (or a reschedule), then long-poll its status URL until it is decided: the outcome and
        its times (`submit`: until the 202, `decision`: until the decision, in seconds)."""
        submitted = time.perf_counter()
        key = {"Idempotency-Key": uuid.uuid4().hex} if self.idempotency_keys else None
        status, accepted, location = await self.retrying("POST", path, token, body, key)
        accepted_at = time.perf_counter()
        if status == 409 and (accepted or {}).get("reason") and "request_id" not in accepted:
            # Refused at once (a time the API knew was taken): decided, and nothing stored.
            return {"status": "rejected", "reason": accepted["reason"], "submit": accepted_at - submitted,
                    "decision": accepted_at - submitted, "accepted_at": accepted_at, "decided_at": accepted_at,
                    "started": submitted, "polls": 0, "appointment_id": None, "refused_at_once": True}
        if status != 202:
            return {"status": f"http_{status}", "submit": accepted_at - submitted, "started": submitted,
                    "body": accepted}
        url = (accepted or {}).get("status_url") or location
        state, polls = accepted or {"status": "pending"}, 0
        while state["status"] == "pending":
            polls += 1
            code, state, _ = await self.retrying("GET", f"{url}?wait=30", token)
            if code != 200:
                return {"status": f"http_{code}", "submit": accepted_at - submitted, "started": submitted}
        decided_at = time.perf_counter()
        return {"status": state["status"], "reason": state.get("reason"), "submit": accepted_at - submitted,
                "decision": decided_at - submitted, "accepted_at": accepted_at, "decided_at": decided_at,
                "started": submitted, "polls": polls, "appointment_id": state.get("appointment_id")}

    async def timed_get(self, base: str, path: str) -> tuple[int, float]:
        began = time.perf_counter()
        async with self.http.get(base + path) as response:
            await response.read()
            return response.status, time.perf_counter() - began

    async def read_rate(self, base: str, path: Callable[[], str], concurrency: int,
                        seconds: float) -> tuple[float, list[float]]:
        """Requests per second of `concurrency` clients each GETting `path()` (asked anew each time) for `seconds`,
        and each request's latency."""
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                status, took = await self.timed_get(base, path())
                assert status == 200, status
                latencies.append(took)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return len(latencies) / (time.perf_counter() - began), latencies


def ms_percentiles(seconds: list[float], pcts: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    return {str(p): percentile(seconds, p) * 1000 for p in pcts}


class Load(Client):
    """The steady booking: doctors and patients registered through the API, bookings at fixed concurrency."""

    def __init__(self, config: dict[str, Any], session: aiohttp.ClientSession) -> None:
        super().__init__(config, session)
        self.first_day = (datetime.now(UTC) + timedelta(days=2)).replace(hour=0, minute=0, second=0,
                                                                           microsecond=0)

    async def user(self, role: str, number: int) -> dict[str, Any]:
        email = f"{role.lower()}{number}@bench.example"
        status, user = await self.call("POST", "/auth/register", json={
            "email": email, "name": f"{role} {number}", "role": role, "password": PASSWORD})
        assert status == 201, (status, user)
        status, token = await self.call("POST", "/auth/login", json={"email": email, "password": PASSWORD})
        assert status == 200, (status, token)
        return {"id": user["id"], "token": token["access_token"]}

    async def gather_limited(self, coros: list, limit: int) -> list:
        semaphore = asyncio.Semaphore(limit)

        async def run(coro):  # noqa: ANN001, ANN202
            async with semaphore:
                return await coro

        return await asyncio.gather(*(run(c) for c in coros))

    async def setup(self) -> None:
        c = self.config
        self.doctors = await self.gather_limited([self.user("Doctor", i) for i in range(c["doctors"])], 32)
        self.patients = await self.gather_limited([self.user("Patient", i) for i in range(c["patients"])], 32)
        windows = [{"start_time": (self.first_day + timedelta(days=d, hours=8)).isoformat(),
                    "end_time": (self.first_day + timedelta(days=d, hours=16)).isoformat()}
                   for d in range(c["days"])]
        for doctor in self.doctors:
            status, body = await self.call("POST", "/doctors/availability", doctor["token"], json=windows)
            assert status == 201, (status, body)
            # Every booking is of a type with a buffer (25 minutes and 5 after: a 30-minute grid), and a notice.
            status, body = await self.call("POST", "/doctors/me/appointment-types", doctor["token"], json=STEADY_TYPE)
            assert status == 201, (status, body)
            doctor["type_id"] = body["id"]

    def booking(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """A random patient asking for a random slot of the doctor's type (30 minutes with its buffer); a quarter are
        shifted 15 minutes, so equal and partially overlapping requests meet."""
        doctor = self.rng.choice(self.doctors)
        patient = self.rng.choice(self.patients)
        start = self.first_day + timedelta(days=self.rng.randrange(self.config["days"]), hours=8,
                                           minutes=30 * self.rng.randrange(15))
        if self.rng.random() < 0.25:
            start += timedelta(minutes=15)
        body = {"doctor_id": doctor["id"], "start_time": start.isoformat(), "appointment_type_id": doctor["type_id"]}
        return patient, body

    async def book_and_follow(self, patient: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        return await self.submit_and_follow(patient["token"], "/appointments", body)

    async def closed_loop(self, total: int, concurrency: int) -> dict[str, Any]:
        todo = [self.booking() for _ in range(total)]
        results: list[dict[str, Any]] = []

        async def client() -> None:
            while todo:
                results.append(await self.book_and_follow(*todo.pop()))

        groups = {**self.config["cpu_groups"], "load generator": [os.getpid()]}
        cpu_before = snapshot(groups)
        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        summary = summarize(results, began)
        used = spent(cpu_before, snapshot(groups))
        decided = sum(1 for r in results if "decision" in r)
        per_booking = {name: used[name] * 1000 / max(decided, 1) for name in groups}
        return summary | {"cpu_ms_per_booking": per_booking | {"total": sum(per_booking.values())}}

    async def open_loop(self, total: int, rate: float) -> dict[str, Any]:
        began = time.perf_counter()
        tasks = []
        for i in range(total):
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.book_and_follow(*self.booking())))
        return summarize(await asyncio.gather(*tasks), began) | {"offered_rate": rate}

    def slots_path(self, shift_seconds: int = 0) -> str:
        """A week of a random doctor's slots of its type; `shift_seconds` moves the range's start."""
        start = self.first_day + timedelta(seconds=shift_seconds)
        end = start + timedelta(days=7)
        doctor = self.rng.choice(self.doctors)
        return (f"/doctors/{doctor['id']}/slots?appointment_type_id={doctor['type_id']}"
                f"&from={start.isoformat().replace('+00:00', 'Z')}&to={end.isoformat().replace('+00:00', 'Z')}")


def summarize(results: list[dict[str, Any]], began: float) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    decided = [r for r in results if "decision" in r]
    last_accepted = max((r["accepted_at"] for r in decided), default=began)
    last_decided = max((r["decided_at"] for r in decided), default=began)
    ms = 1000
    return {
        "requests": len(results),
        "counts": counts,
        "accepted_per_s": len(decided) / max(last_accepted - began, 1e-9),
        "decided_per_s": len(decided) / max(last_decided - began, 1e-9),
        "submit_ms": {p: percentile([r["submit"] for r in results], p) * ms for p in (50, 95, 99)},
        "decision_ms": {p: percentile([r["decision"] for r in decided], p) * ms for p in (50, 95, 99)},
        "polls_per_request": sum(r["polls"] for r in decided) / max(len(decided), 1),
        "refused_at_once": sum(1 for r in results if r.get("refused_at_once")),
    }


async def steady(config: dict[str, Any], session: aiohttp.ClientSession) -> dict[str, Any]:
    load = Load(config, session)
    await load.setup()
    c = config
    warmup = await load.closed_loop(min(200, c["requests"]), c["concurrency"])
    saturated = await load.closed_loop(c["requests"], c["concurrency"])
    paced_rate = max(saturated["decided_per_s"] / 2, 1.0)
    paced = await load.open_loop(max(int(paced_rate * c["paced_seconds"]), 10), paced_rate)
    slots_rps, _ = await load.read_rate(load.api, load.slots_path, c["concurrency"], c["read_seconds"])
    # The same reads, each for a range never asked before: what a read costs when the cache cannot answer.
    uncached_rps, _ = await load.read_rate(load.api, lambda: load.slots_path(load.rng.randrange(1, 86_400)),
                                           c["concurrency"], c["read_seconds"])
    trivial_rps, _ = await load.read_rate(c["trivial_url"], lambda: "/ping", c["concurrency"],
                                          c["read_seconds"])
    return {"warmup": warmup, "saturated": saturated, "paced": paced, "slots_per_s": slots_rps,
            "slots_uncached_per_s": uncached_rps, "trivial_per_s": trivial_rps,
            "connection_retries": load.connection_retries}


async def main(config: dict[str, Any]) -> dict[str, Any]:
    scenarios = {"steady": lambda: steady, "rush": lambda: import_module("tests.bench.rush").load,
                 "directory": lambda: import_module("tests.bench.directory").load,
                 "mixed": lambda: import_module("tests.bench.mixed").load,
                 "soak": lambda: import_module("tests.bench.mixed").soak}
    # One connection a concurrent client at most (the rush's patients are thousands of browsers).
    # Idle connections are dropped before uvicorn's keep-alive timeout (5 s) closes them: reusing one the server is
    # closing at that instant fails the request.
    connector = aiohttp.TCPConnector(limit=config.get("connections", 0), force_close=False, keepalive_timeout=4)
    timeout = aiohttp.ClientTimeout(total=180)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await scenarios[config.get("scenario", "steady")]()(config, session)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    argument = sys.argv[1]
    config = json.loads(argument if argument.startswith("{") else Path(argument).read_text())
    print(json.dumps(asyncio.run(main(config))))
