"""A mixed day, and the soak (five minutes of it): slot reads, bookings, reschedules and cancellations together.

`prepare` seeds doctors in several time zones with weekly hours and two appointment types (one with buffers), and
books a tenth of their next two weeks, so there is something to move and cancel from the first second. `load` sends
operations in an open loop at a fixed rate (each one a new task, as independent clients do), 80 % slot reads, 12 %
bookings, 4 % reschedules, 4 % cancellations; a booking and a reschedule are followed to their decision. The
appointments the load may move or cancel are its own: each is taken out of the pool while an operation works on it.

Rescheduling (`POST /appointments/{id}/reschedule`, answered 202 like a booking) is measured when the service's
OpenAPI document has it; otherwise its share is left out and the report says so.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from service.core.settings import Settings
from tests.bench.cpu import rss_mib
from tests.bench.load import Client, iso, ms_percentiles, percentile, token_for
from tests.bench.seed import ZONES, Seeder

MIX = {"read": 80, "book": 12, "reschedule": 4, "cancel": 4}
MISSING = "not measured (endpoint missing)"


def prepare(settings: Settings, options: Any) -> dict[str, Any]:
    with Seeder(settings) as seeder:
        doctors = seeder.doctors(options.mixed_doctors, zones=ZONES[:5])
        patients = seeder.patients(options.mixed_patients)
        first = (datetime.now(UTC) + timedelta(days=1)).date()
        booked = seeder.book_fraction(doctors, patients, first, 14, 0.1)
    return {"doctors": [{"id": d.id, "types": list(d.types.values()), "slots": [iso(s) for s in d.slots]}
                        for d in doctors],
            "patients": patients,
            "appointments": [[a.id, a.patient_id, a.doctor_id] for a in booked],
            "first_day": iso(datetime.combine(first, datetime.min.time()))}


class Day(Client):
    def __init__(self, config: dict[str, Any], session: aiohttp.ClientSession) -> None:
        super().__init__(config, session)
        self.doctors = {d["id"]: d for d in config["doctors"]}
        self.tokens = {p: token_for(p, "Patient") for p in config["patients"]}
        self.pool: list[tuple[int, int, int]] = [tuple(a) for a in config["appointments"]]  # (id, patient, doctor)
        self.first_day = datetime.fromisoformat(config["first_day"])
        self.mix = dict(MIX)
        self.reschedule_path: str | None = None

    async def detect_reschedule(self) -> None:
        """The reschedule route, if the service's OpenAPI document has one."""
        status, document = await self.call("GET", "/schema/openapi.json")
        assert status == 200, status
        for path, operations in document["paths"].items():
            if path.startswith("/appointments/{") and path.endswith("}/reschedule") and "post" in operations:
                self.reschedule_path = path[:path.index("{")] + "{}" + "/reschedule"
                return
        self.mix["reschedule"] = 0

    def take(self) -> tuple[int, int, int] | None:
        if not self.pool:
            return None
        index = self.rng.randrange(len(self.pool))
        self.pool[index], self.pool[-1] = self.pool[-1], self.pool[index]
        return self.pool.pop()

    async def read(self) -> tuple[bool, str]:
        doctor = self.rng.choice(self.config["doctors"])
        start = self.first_day + timedelta(days=self.rng.randrange(7))
        path = (f"/doctors/{doctor['id']}/slots?appointment_type_id={self.rng.choice(doctor['types'])}"
                f"&from={iso(start)}&to={iso(start + timedelta(days=7))}")
        status, _, _ = await self.retrying("GET", path)
        return status == 200, f"http_{status}"

    async def book(self) -> tuple[bool, str, float | None]:
        patient = self.rng.choice(self.config["patients"])
        doctor = self.rng.choice(self.config["doctors"])
        body = {"doctor_id": doctor["id"], "start_time": self.rng.choice(doctor["slots"]),
                "appointment_type_id": doctor["types"][0 if self.rng.random() < 0.75 else 1]}
        outcome = await self.submit_and_follow(self.tokens[patient], "/appointments", body)
        if outcome["status"] == "confirmed":
            self.pool.append((outcome["appointment_id"], patient, doctor["id"]))
        return outcome["status"] in ("confirmed", "rejected"), outcome["status"], outcome.get("decision")

    async def reschedule(self) -> tuple[bool, str, float | None]:
        if (appointment := self.take()) is None:
            return True, "no_appointment", None
        appointment_id, patient, doctor_id = appointment
        body = {"start_time": self.rng.choice(self.doctors[doctor_id]["slots"])}
        outcome = await self.submit_and_follow(self.tokens[patient], self.reschedule_path.format(appointment_id),
                                               body)
        if outcome["status"] in ("confirmed", "rejected"):  # moved (perhaps to a new id), or left where it was
            moved = outcome["status"] == "confirmed" and outcome.get("appointment_id")
            self.pool.append((moved or appointment_id, patient, doctor_id))
        return outcome["status"] in ("confirmed", "rejected"), outcome["status"], outcome.get("decision")

    async def cancel(self) -> tuple[bool, str]:
        if (appointment := self.take()) is None:
            return True, "no_appointment"
        appointment_id, patient, _ = appointment
        status, _, _ = await self.retrying("DELETE", f"/appointments/{appointment_id}", self.tokens[patient])
        return status == 200, f"http_{status}"

    async def one(self, op: str, began: float) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            ok, outcome, *decision = await getattr(self, op)()
        except (aiohttp.ClientError, TimeoutError, AssertionError) as exc:
            ok, outcome, decision = False, f"error_{type(exc).__name__}", []
        took = decision[0] if decision and decision[0] is not None else time.perf_counter() - started
        return {"op": op, "t": started - began, "ms": took * 1000, "ok": ok, "outcome": outcome}

    async def run(self, rate: float, seconds: float) -> list[dict[str, Any]]:
        """Operations in an open loop at `rate` a second for `seconds`, chosen by the mix.

        Only the operations in flight are held as tasks, each one's record kept as it ends: a finished task kept to
        the end stays tracked by the garbage collector, and over a soak its full collections grew from 15 to 180 ms,
        stalling the loop that sends and times the operations (the service's latencies looked like they rose)."""
        ops, weights = zip(*((op, w) for op, w in self.mix.items() if w), strict=True)
        began, n = time.perf_counter(), 0
        records: list[dict[str, Any]] = []
        in_flight: set[asyncio.Task[dict[str, Any]]] = set()
        failed: list[BaseException] = []

        def ended(task: asyncio.Task[dict[str, Any]]) -> None:
            in_flight.discard(task)
            if task.cancelled():  # a bug in the load: the run fails
                failed.append(asyncio.CancelledError())
            elif (error := task.exception()) is not None:
                failed.append(error)
            else:
                records.append(task.result())

        try:
            while n / rate < seconds and not failed:
                if (delay := began + n / rate - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self.one(self.rng.choices(ops, weights)[0], began))
                in_flight.add(task)
                task.add_done_callback(ended)
                n += 1
            if in_flight:
                await asyncio.wait(in_flight)
        finally:
            for task in in_flight:  # only if the run itself was stopped
                task.cancel()
        if failed:
            raise failed[0]
        return sorted(records, key=lambda record: record["t"])  # in the order they were sent


def summary(day: Day, records: list[dict[str, Any]], rate: float, seconds: float) -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for op in MIX:
        mine = [r for r in records if r["op"] == op]
        if op == "reschedule" and day.reschedule_path is None:
            operations[op] = MISSING
            continue
        timed = [r["ms"] / 1000 for r in mine if r["outcome"] != "no_appointment"]
        operations[op] = {"count": len(mine), "errors": sum(not r["ok"] for r in mine),
                          "outcomes": dict(Counter(r["outcome"] for r in mine)),
                          "p50_ms": ms_percentiles(timed)["50"], "p99_ms": ms_percentiles(timed)["99"]}
    return {
        "offered_rate": rate, "seconds": seconds, "operations_total": len(records),
        "mix": day.mix, "reschedule": "measured" if day.reschedule_path else MISSING,
        "errors": sum(not r["ok"] for r in records), "connection_retries": day.connection_retries,
        "error_examples": [r for r in records if not r["ok"]][:5],
        "operations": operations,
        # (seconds into the phase, submit→decision ms) of each booking and reschedule decided, for the plot
        "timeline": [(round(r["t"], 3), round(r["ms"], 2)) for r in records
                     if r["op"] in ("book", "reschedule") and r["outcome"] in ("confirmed", "rejected")],
    }


async def load(config: dict[str, Any], session: aiohttp.ClientSession) -> dict[str, Any]:
    day = Day(config, session)
    await day.detect_reschedule()
    records = await day.run(config["rate"], config["seconds"])
    return summary(day, records, config["rate"], config["seconds"])


async def soak(config: dict[str, Any], session: aiohttp.ClientSession) -> dict[str, Any]:
    """The mixed day for longer: memory after a warm-up and at the end, and each minute's p99."""
    day = Day(config, session)
    await day.detect_reschedule()
    groups = {name: pids for name, pids in config["cpu_groups"].items() if name in ("API", "worker")}
    await day.run(config["rate"], config["warmup_seconds"])
    rss_start = rss_mib(groups)
    records = await day.run(config["rate"], config["seconds"])
    rss_end = rss_mib(groups)
    minutes = int((config["seconds"] + 59) // 60)
    per_minute = [[r for r in records if m * 60 <= r["t"] < (m + 1) * 60] for m in range(minutes)]
    result = summary(day, records, config["rate"], config["seconds"])
    return result | {
        "rss_start_mib": rss_start, "rss_end_mib": rss_end,
        "rss_growth_pct": {name: (rss_end[name] - rss_start[name]) * 100 / max(rss_start[name], 1e-9)
                           for name in groups},
        "p99_ms_per_minute": [percentile([r["ms"] for r in minute], 99) for minute in per_minute],
        "booking_p99_ms_per_minute": [percentile([r["ms"] for r in minute if r["op"] == "book"], 99)
                                      for minute in per_minute],
    }
