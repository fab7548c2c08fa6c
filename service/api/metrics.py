"""What this process counts for GET /metrics (controllers/metrics.py), with Litestar's Prometheus support.

- Requests by route and status (`http_*`, the series Litestar's PrometheusMiddleware makes, counted by
  CountRequests), labelled by the route's template (`/doctors/{doctor_id:int}`), never the raw path, so ids cannot
  multiply the series. A path that matches no route is not counted (it reaches no route's middleware).
- Bookings: counted by the process that stored them (notifications.py follows each stored request to its decision),
  so every API process counts its own and the sum over processes is the whole: stored, decided by outcome, and the
  time from stored to decided. A decision is missed only if its process restarted, or lost Redis, in between.
- Read when scraped, from the one place that knows (cheap, and each given up after SCRAPE_TIMEOUT: a gauge that
  could not be read is left out of the answer, which is never a 500): jobs in arq's queue, requests pending
  for longer than the sweep waits, and the notifications' backlog (outbox events not fanned out, deliveries due).

With METRICS_TOKEN set, a scrape must send `Authorization: Bearer <token>`; production serves /metrics only then.
Several uvicorn workers in one container share their counts through PROMETHEUS_MULTIPROC_DIR (`make run`, the
image), which prometheus-client reads when it is imported.
"""

from __future__ import annotations

import os
import time
from datetime import datetime

from litestar.config.app import AppConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.multiprocess import mark_process_dead

from service.api.problems import status_of
from service.core.queue import Decision

APP_NAME = "doctor-appointments"
HTTP_LABELS = ["method", "path", "status_code", "app_name"]
HTTP_REQUESTS = Counter("http_requests_total", "Total requests", HTTP_LABELS)
HTTP_SECONDS = Histogram("http_request_duration_seconds", "Request duration, in seconds", HTTP_LABELS)
HTTP_IN_PROGRESS = Gauge("http_requests_in_progress", "Total requests currently in progress", HTTP_LABELS,
                         multiprocess_mode="livesum")
HTTP_ERRORS = Counter("http_requests_error_total", "Total errors in requests", HTTP_LABELS)


class CountRequests:
    """Counts every request that reached a route: by method, route template and status, and its duration.

    The series are those of Litestar's PrometheusMiddleware (names, labels, the in-progress gauge labelled 200, an
    error series only once there is an error), at a third of its cost: it built a Request and its URL and looked
    each series up by its labels, five times a request, some 35 µs (a third of a cached slot read); here each
    route's series are looked up once. A request that a middleware inside refuses by raising (the bearer-token
    check's 401, the address limit's 429) is counted with the status Litestar answers it with, outside this
    middleware.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (method, route, status) → its request counter and duration histogram
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._in_progress: dict[tuple[str, str], Gauge] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, route = scope["method"], scope["path_template"]  # type: ignore[typeddict-item]
        status = 200

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if (in_progress := self._in_progress.get((method, route))) is None:
            in_progress = self._in_progress[method, route] = HTTP_IN_PROGRESS.labels(method, route, 200, APP_NAME)
        started = time.perf_counter()
        in_progress.inc()
        try:
            await self.app(scope, receive, noting_status)
        except Exception as exc:
            status = status_of(exc)
            raise
        finally:
            in_progress.dec()
            if (series := self._series.get((method, route, status))) is None:
                labels = (method, route, status, APP_NAME)
                series = self._series[method, route, status] = (HTTP_REQUESTS.labels(*labels),
                                                                 HTTP_SECONDS.labels(*labels))
            requests, seconds = series
            requests.inc()
            seconds.observe(time.perf_counter() - started)
            if status >= 500:
                HTTP_ERRORS.labels(method, route, status, APP_NAME).inc()


def count_http_requests(app_config: AppConfig) -> AppConfig:
    """An `on_app_init` hook: CountRequests outside every other middleware, the bearer-token authentication's
    included (its own hook puts it first), so that a 401 or a 429 is counted too."""
    app_config.middleware.insert(0, CountRequests)
    return app_config


BOOKINGS_STORED = Counter("booking_requests_stored", "Booking requests stored (POST /appointments) by this process")
KNOWN_TAKEN = Counter("booking_requests_known_taken", "Bookings of a time this process knew was taken: refused at once "
                      "(409 slot_taken, not stored), unless an Idempotency-Key replayed a stored request")
DECISIONS = Counter("booking_decisions", "Decisions of the booking requests this process stored, by outcome",
                    ["status", "reason"])
DECISION_SECONDS = Histogram(
    "booking_decision_seconds", "From a booking request stored to its decision (decided_at - created_at)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))


def count_stored() -> None:
    BOOKINGS_STORED.inc()


def count_decided(decision: Decision, created_at: datetime, decided_at: datetime) -> None:
    DECISIONS.labels(decision.status, decision.reason or "").inc()
    # Two processes' clocks: the API's stored it, a worker's decided it; a skew must not make time run backwards.
    DECISION_SECONDS.observe(max((decided_at - created_at).total_seconds(), 0.0))




def process_ending() -> None:
    """In multiprocess mode, this process's live gauges (requests in progress) go with it; its counts stay."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        mark_process_dead(os.getpid())
