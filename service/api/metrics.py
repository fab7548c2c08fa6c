"""What this process counts for GET /metrics (controllers/metrics.py), with Litestar's Prometheus support.

- Requests by route and status: Litestar's PrometheusMiddleware (`http_*`), labelled by the route's template
  (`/doctors/{doctor_id:int}`), never the raw path, so ids cannot multiply the series. A path that matches no route
  is not counted (it reaches no route's middleware).
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
from datetime import datetime

from litestar.config.app import AppConfig
from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import Counter, Histogram
from prometheus_client.multiprocess import mark_process_dead

from service.api.extensions import PrometheusMiddlewareSeeingErrors
from service.core.queue import Decision

HTTP_METRICS = PrometheusConfig(app_name="doctor-appointments", prefix="http", group_path=True,
                                middleware_class=PrometheusMiddlewareSeeingErrors)


def count_http_requests(app_config: AppConfig) -> AppConfig:
    """An `on_app_init` hook: Litestar's Prometheus middleware outside every other middleware, the bearer-token
    authentication's included (its own hook puts it first), so that a 401 or a 429 is counted too."""
    app_config.middleware.insert(0, HTTP_METRICS.middleware)
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
