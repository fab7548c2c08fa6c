"""Operations: a request id that follows a booking from the API's log into the worker's (JSON lines), and /metrics
in Prometheus' format: requests by route, bookings stored and decided, the queue and what stays pending, guarded
by METRICS_TOKEN and off in production without one."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pymysql
import pytest
import redis
from litestar import get
from litestar.exceptions import NotAuthorizedException
from litestar.testing import create_test_client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.api.metrics import CountRequests
from service.core.db import QUERIES
from service.core.settings import Settings, SettingsError
from service.core.times import utcnow
from tests.factory import Factory, at
from tests.support import Processes, Rig, free_port, log_of, own_redis_db, scratch_database, until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a log, each a JSON object (a line that is not fails the test)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(entry, dict) for entry in parsed)
    return parsed


def samples(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    """The sample's value, 0 if it is not there (a counter not yet counted)."""
    return found.get((name, frozenset(labels.items())), 0.0)


@contextmanager
def api_process(processes: Processes, env: dict[str, str],
                workers: int = 1) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """An API process of this test's own, stopped when it ends (its database or Redis may not outlive the test)."""
    url = processes.start_api(env, workers=workers)
    proc = processes.running[-1]
    try:
        yield url, proc
    finally:
        processes.stop(proc)


def scrape(url: str, **headers: str) -> Samples:
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")  # the exposition format
    return samples(response.text)


# --- request ids and structured logs -----------------------------------------------------------------------------

async def test_a_bookings_request_id_follows_it_from_the_api_into_the_workers_json_lines(
    processes: Processes, settings: Settings, test_env: dict[str, str], mysql: pymysql.Connection,
) -> None:
    with own_redis_db(test_env["REDIS_URL"]) as redis_url:  # this test's worker alone decides what it queues
        env = {"LOG_FORMAT": "json", "REDIS_URL": redis_url}
        worker = processes.start_worker(env)
        with api_process(processes, env) as (api, api_proc):
            await in_json_lines_the_booking_is_followed(api, log_of(api_proc), log_of(worker), settings)
        processes.stop(worker)


async def in_json_lines_the_booking_is_followed(api: str, api_log: Path, worker_log: Path, settings: Settings) -> None:
    """Book through `api` with an X-Request-ID; find it on the API's line of the stored request and on the worker's
    line of its decision, and every line of both logs a JSON object."""
    trace = "booking-42/trace:A"
    async with httpx.AsyncClient(base_url=api, timeout=15) as http:
        factory = Factory(http, settings)
        doctor, patient = await factory.doctor(), await factory.patient()
        await factory.window(doctor, at(9), at(12))
        booked = await factory.book(patient, doctor["id"], at(10), at(10.5), wait=10, **{"X-Request-ID": trace})
    assert booked.status_code == 201, booked.text
    assert booked.headers["x-request-id"] == trace
    request_id = booked.json()["booking_request_id"]

    def tagged(path: Path) -> list[str]:
        return [entry["message"] for entry in json_lines(path) if entry.get("request_id") == trace]

    stored = await until(lambda: tagged(api_log), "the API's line of the booking")
    assert any(f"booking request {request_id} stored" in message for message in stored), stored
    decided = await until(lambda: tagged(worker_log), "the worker's lines of the booking")
    assert any(re.search(rf"\b{request_id} confirmed\b", message) for message in decided), decided
    for entry in json_lines(api_log) + json_lines(worker_log):
        assert {"time", "level", "logger", "message", "request_id"} <= set(entry), entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"]), entry


async def test_every_response_carries_a_request_id_its_own_or_a_sane_one_it_was_sent(
    client: httpx.AsyncClient,
) -> None:
    sent = "Abc-123_~!#$%&'*+.^`|:/=?@[]"
    assert (await client.get("/health", headers={"X-Request-ID": sent})).headers["x-request-id"] == sent
    assert (await client.get("/health", headers={"X-Request-ID": "x" * 64})).headers["x-request-id"] == "x" * 64
    generated = set()
    for insane in ("x" * 65, "two words", "caf\xe9", ""):
        headers = {"X-Request-ID": insane.encode("latin-1")} if insane else {}
        answer = (await client.get("/health", headers=headers)).headers["x-request-id"]
        assert GENERATED_ID.fullmatch(answer), answer
        generated.add(answer)
    assert len(generated) == 4
    for method, path in (("GET", "/no-such-route"), ("PUT", "/health"), ("GET", "/auth/me"),
                         ("GET", "/schema/openapi.json"), ("OPTIONS", "/appointments")):
        response = await client.request(method, path)
        assert GENERATED_ID.fullmatch(response.headers["x-request-id"]), (method, path, response.headers)


def test_log_format_is_text_in_development_and_json_in_production_unless_set() -> None:
    production = {"APP_ENV": "production", "JWT_SECRET": secrets.token_urlsafe(48), "SMTP_URL": "smtp://mail:25",
                  "DATABASE_URL": "mysql://app:pw@db:3306/app"}
    assert not Settings.from_env({}).json_logs
    assert Settings.from_env({"LOG_FORMAT": "json"}).json_logs
    assert Settings.from_env(production).json_logs
    assert not Settings.from_env({**production, "LOG_FORMAT": "text"}).json_logs
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": "yaml"})


# --- /metrics ------------------------------------------------------------------------------------------------------

async def test_metrics_count_requests_by_route_and_bookings_stored_and_decided(
    api_url: str, client: httpx.AsyncClient, factory: Factory
) -> None:
    doctor, patient = await factory.doctor(), await factory.patient()
    await factory.window(doctor, at(9), at(12))
    before = scrape(api_url)
    assert (await client.get("/doctors/987654321")).status_code == 404
    assert (await client.get(f"/doctors/{doctor['id']}")).status_code == 200
    assert (await client.get("/auth/me")).status_code == 401  # refused by the token check, before the handler
    await factory.booked(patient, doctor["id"], at(10), at(10.5))
    rejected = await factory.book(patient, doctor["id"], at(13), at(13.5), wait=10)  # outside the window
    assert rejected.status_code == 409 and rejected.json()["request_id"]
    refused = await factory.book(patient, doctor["id"], at(10), at(10.5), wait=10)  # known taken: not stored
    assert refused.status_code == 409 and "request_id" not in refused.json()

    def decided() -> Samples | None:
        found = scrape(api_url)
        return found if value(found, "booking_decision_seconds_count") - value(
            before, "booking_decision_seconds_count") == 2 else None

    after = await until(decided, "both decisions to be counted")

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"method": "GET", "path": "/doctors/{doctor_id}", "app_name": "doctor-appointments"}
    assert grew("http_requests_total", **route, status_code="404") == 1
    assert grew("http_requests_total", **route, status_code="200") == 1
    assert grew("http_request_duration_seconds_count", **route, status_code="200") == 1
    assert 0 < grew("http_request_duration_seconds_sum", **route, status_code="200") < 10
    assert value(after, "http_requests_in_progress", **route, status_code="200") == 0  # ended: its gauge back down
    assert not [key for key in after if dict(key[1]).get("path", "").startswith("/doctors/9")]
    assert grew("http_requests_total", **{**route, "path": "/auth/me"}, status_code="401") == 1
    assert grew("booking_requests_stored_total") == 2
    assert grew("booking_decisions_total", status="confirmed", reason="") == 1
    assert grew("booking_decisions_total", status="rejected", reason="outside_availability") == 1
    assert grew("booking_requests_known_taken_total") == 1
    assert 0 < grew("booking_decision_seconds_sum") < 20
    assert grew("booking_decision_seconds_bucket", le="+Inf") == 2
    assert value(after, "booking_queue_depth") >= 0
    assert value(after, "booking_requests_pending_stale") >= 0



def test_request_metrics_count_errors_and_requests_a_middleware_refused() -> None:
    """CountRequests on a bare app: a handler's crash is a 500 in the error series too, and a request a middleware
    inside refused by raising is counted with the status it is answered (401), not the 200 nothing sent."""
    def refuse(app: Any) -> Any:
        async def middleware(scope: Any, receive: Any, send: Any) -> None:
            if scope["path"] == "/guarded":
                raise NotAuthorizedException()
            await app(scope, receive, send)
        return middleware

    @get("/boom", sync_to_thread=False)
    def boom() -> str:
        raise RuntimeError("a bug")

    @get("/guarded", sync_to_thread=False)
    def guarded() -> str:
        return "in"

    def sample(name: str, path: str, status: str) -> float:
        labels = {"method": "GET", "path": path, "status_code": status, "app_name": "doctor-appointments"}
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {key: sample(*key) for key in [("http_requests_total", "/boom", "500"),
                                             ("http_requests_error_total", "/boom", "500"),
                                             ("http_requests_total", "/guarded", "401"),
                                             ("http_requests_total", "/guarded", "200")]}
    with create_test_client([boom, guarded], middleware=[CountRequests, refuse]) as http:
        assert http.get("/boom").status_code == 500
        assert http.get("/guarded").status_code == 401
    assert {key: sample(*key) - count for key, count in before.items()} == {
        ("http_requests_total", "/boom", "500"): 1, ("http_requests_error_total", "/boom", "500"): 1,
        ("http_requests_total", "/guarded", "401"): 1, ("http_requests_total", "/guarded", "200"): 0}
    assert REGISTRY.get_sample_value("http_requests_error_total", {  # no error series without an error
        "method": "GET", "path": "/guarded", "status_code": "401", "app_name": "doctor-appointments"}) is None

async def test_queue_depth_and_stale_pending_requests_are_read_when_scraped(
    processes: Processes, settings: Settings, test_env: dict[str, str]
) -> None:
    with (scratch_database(settings, "test_metrics") as database_url, own_redis_db(test_env["REDIS_URL"]) as redis_url,
          api_process(processes, {"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                                  "SWEEP_AFTER_SECONDS": "600"}) as (api, _)):  # and no worker
        plan = gauges_follow_the_queue_and_the_table(api, redis_url, database_url, test_env)
    # One range of the (status, created_at) index, however many requests there are.
    assert [step[5] for step in plan] == ["idx_booking_requests_status_created"], plan  # key
    assert plan[0][3] == "range", plan  # type


def gauges_follow_the_queue_and_the_table(api: str, redis_url: str, database_url: str,
                                          test_env: dict[str, str]) -> tuple[Any, ...]:
    """Two jobs queued and two requests pending too long: the next scrape says so. Returns EXPLAIN's plan of the
    query the scrape runs."""
    first = scrape(api)
    assert value(first, "booking_queue_depth") == 0
    assert value(first, "booking_requests_pending_stale") == 0
    redis.Redis.from_url(redis_url).zadd("arq:queue", {"booking:1": 1, "booking:2": 2})
    address = Settings.from_env({**test_env, "DATABASE_URL": database_url}).mysql
    conn = pymysql.connect(host=address.host, port=address.port, user=address.user, password=address.password,
                           database=address.database, autocommit=True)
    now = utcnow()
    old = now - timedelta(seconds=600 + 60)  # pending longer than the API's SWEEP_AFTER_SECONDS; `now` is not
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO booking_requests (patient_id, doctor_id, start_time, end_time, status, created_at)"
            " VALUES (1, 2, %s, %s, %s, %s)",
            [(at(9), at(10), "pending", old), (at(10), at(11), "pending", old), (at(11), at(12), "pending", now)]
            # The decided history the count must not walk (with a handful of rows, any plan would do).
            + [(at(12), at(13), "rejected" if k % 2 else "confirmed", old) for k in range(2000)])
        cursor.execute("ANALYZE TABLE booking_requests")
        cursor.fetchall()
        cursor.execute("EXPLAIN " + QUERIES["count_stale_pending_requests"], {"before": now})
        plan = cursor.fetchall()
    conn.close()
    second = scrape(api)
    assert value(second, "booking_queue_depth") == 2
    assert value(second, "booking_requests_pending_stale") == 2
    return plan


def test_a_scrape_answers_without_the_gauges_mysql_and_redis_could_not_give(processes: Processes) -> None:
    nowhere = free_port()
    with api_process(processes, {"DATABASE_URL": f"mysql://root@127.0.0.1:{nowhere}/gone",
                                 "REDIS_URL": f"redis://127.0.0.1:{nowhere}/0"}) as (api, _):
        started = time.monotonic()
        found = scrape(api)
        assert time.monotonic() - started < 5
    names = {name for name, _ in found}
    assert "booking_queue_depth" not in names and "booking_requests_pending_stale" not in names
    assert "notifications_outbox_undispatched" not in names and "notifications_deliveries_due" not in names
    assert "http_requests_total" in names  # the scrape itself, or the /health calls before it


def test_several_uvicorn_workers_answer_a_scrape_with_their_counts_together(
    processes: Processes, tmp_path: Path
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (make run and the image set it for API_WORKERS > 1), whichever worker answers
    a scrape counts every worker's requests; a worker that stops takes its live gauges with it."""
    with api_process(processes, {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}, workers=2) as (api, _):
        health = {"method": "GET", "path": "/health", "status_code": "200", "app_name": "doctor-appointments"}
        before = value(scrape(api), "http_requests_total", **health)
        with httpx.Client(base_url=api) as http:  # new connections, spread over both workers
            for _ in range(20):
                assert http.get("/health", headers={"Connection": "close"}).status_code == 200
        assert {value(scrape(api), "http_requests_total", **health) for _ in range(10)} == {before + 20}
        assert len(list(tmp_path.glob("counter_*.db"))) == 2  # both workers counted
    assert list(tmp_path.glob("gauge_livesum_*.db")) == []


def test_metrics_token_guards_metrics(processes: Processes) -> None:
    token = secrets.token_urlsafe(32)
    with api_process(processes, {"METRICS_TOKEN": token}) as (api, _):
        metrics_answer_the_token_alone(api, token)


def metrics_answer_the_token_alone(api: str, token: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token},
                    {"Authorization": f"Basic {token}"}):
        refused = httpx.get(f"{api}/metrics", headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "booking" not in refused.text
    assert "booking_requests_stored_total" in {name for name, _ in scrape(api, Authorization=f"Bearer {token}")}


async def test_in_production_metrics_are_off_unless_a_token_is_set(settings: Settings) -> None:
    production = msgspec.structs.replace(settings, app_env="production")
    for token, status in (("", 404), (secrets.token_urlsafe(32), 401)):
        app = create_app(msgspec.structs.replace(production, metrics_token=token))
        assert "/metrics" not in app.openapi_schema.paths  # not part of the API clients use
        # In this process, without the lifespan: neither answer reads MySQL or Redis.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
            assert (await http.get("/metrics")).status_code == status


def test_production_refuses_a_guessable_metrics_token() -> None:
    production = {"APP_ENV": "production", "JWT_SECRET": secrets.token_urlsafe(48), "SMTP_URL": "smtp://mail:25",
                  "DATABASE_URL": "mysql://app:pw@db:3306/app"}
    for guessable in ("metrics", "change-me-" * 4, "a" * 40):
        with pytest.raises(SettingsError, match="METRICS_TOKEN"):
            Settings.from_env({**production, "METRICS_TOKEN": guessable})
    assert Settings.from_env({**production, "METRICS_TOKEN": secrets.token_urlsafe(32)}).metrics_enabled
    assert not Settings.from_env(production).metrics_enabled
    assert Settings.from_env({}).metrics_enabled


async def test_a_burst_of_bookings_shares_a_few_redis_connections(rig: Rig) -> None:
    """40 bookings at once through an API allowed 3 Redis connections: every one is stored and queued, over at most
    3 connections in all (its pub/sub listener's and the address rate limit's among them). An unbounded pool opened
    one per booking in flight, and the rate limit's middleware had a copy of the client with a pool of its own."""
    api = rig.api(REDIS_POOL_SIZE="3")
    async with rig.client(api) as (http, factory):
        doctors = [await factory.doctor() for _ in range(40)]  # a doctor each: no booking folds into another's job
        patients = [await factory.patient() for _ in range(40)]
        for doctor in doctors:
            await factory.window(doctor, at(9), at(10))
        answers = await asyncio.gather(*(factory.book(patient, doctor["id"], at(9), at(9.5))
                                         for patient, doctor in zip(patients, doctors, strict=True)))
        assert [answer.status_code for answer in answers] == [202] * 40, [a.text for a in answers]
    with redis.Redis.from_url(rig.env["REDIS_URL"]) as server:  # a Redis of this test's own: the rest are the API's
        assert server.zcard("arq:queue") == 40
        apis = [c for c in server.client_list() if c["id"] != str(server.client_id())]
        assert 1 <= len(apis) <= 3, [(c["cmd"], c["age"], c.get("name")) for c in apis]
