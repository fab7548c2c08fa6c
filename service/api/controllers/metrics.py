"""GET /metrics: what this process counted (service/api/metrics.py), and gauges read when scraped."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

from litestar import Response, get
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.plugins.prometheus import PrometheusController
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.api.dependencies import DatabaseDep, RedisDep, SettingsDep
from service.core import outbox
from service.core.appointments import count_stale_pending
from service.core.errors import NotAuthenticated
from service.core.queue import queue_depth

log = logging.getLogger("service.metrics")
T = TypeVar("T")
SCRAPE_TIMEOUT = 1.0


async def _within_timeout(reading: Awaitable[T], what: str) -> T | None:
    try:
        return await asyncio.wait_for(reading, SCRAPE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure leaves the gauge out of this scrape
        log.warning("metrics: could not read %s: %r", what, exc)
        return None


class Scrape:
    """What one scrape answers: the process's (or, in multiprocess mode, every worker's) metrics, and the gauges
    read for it."""

    def __init__(self, counted: Collector, gauges: list[Metric]) -> None:
        self.counted = counted
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        yield from self.counted.collect()
        yield from self.gauges


def counted_metrics() -> Collector:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def metrics_token_guard(token: str) -> Any:
    """With a METRICS_TOKEN, a scrape must send it as a bearer token (compared in constant time)."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        scheme, _space, sent = connection.headers.get("authorization", "").partition(" ")
        if token and not (scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode())):
            raise NotAuthenticated("/metrics wants `Authorization: Bearer <METRICS_TOKEN>`")

    return guard


class MetricsController(PrometheusController):
    """Litestar's metrics endpoint, plus the gauges read when scraped; outside the OpenAPI document (it is for the
    operator's Prometheus, not the API's clients) and outside the bearer-token authentication of users."""

    path = "/metrics"

    @get("/", include_in_schema=False, opt={"exclude_from_auth": True})
    async def get(self, db: DatabaseDep, redis: RedisDep, settings: SettingsDep) -> Response[bytes]:  # type: ignore[override]
        depth, stale, notifications = await asyncio.gather(
            _within_timeout(queue_depth(redis), "the queue's depth"),
            _within_timeout(count_stale_pending(db, settings.sweep_after_seconds), "the stale pending requests"),
            _within_timeout(outbox.backlog(db), "the notifications' backlog"))
        gauges = []
        if notifications is not None:
            undispatched, due = notifications
            gauges.append(GaugeMetricFamily("notifications_outbox_undispatched",
                                            "Outbox events not yet fanned out into deliveries", value=undispatched))
            gauges.append(GaugeMetricFamily("notifications_deliveries_due",
                                            "Deliveries (email, webhook) whose attempt is due and not yet made",
                                            value=due))
        if depth is not None:
            gauges.append(GaugeMetricFamily("booking_queue_depth", "Jobs in arq's queue (waiting, deferred or running)",
                                            value=depth))
        if stale is not None:
            gauges.append(GaugeMetricFamily(
                "booking_requests_pending_stale",
                "Booking requests pending for longer than SWEEP_AFTER_SECONDS (the sweep queues them again)",
                value=stale))
        return Response(generate_latest(Scrape(counted_metrics(), gauges)),  # type: ignore[arg-type]
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
